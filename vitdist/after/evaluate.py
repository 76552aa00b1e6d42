"""`vitdist eval RUN`: a saved model scored on a split of its data, with what a single number hides.

    vitdist eval runs/latest                     # the run's test split (its validation split if it has none)
    vitdist eval runs/latest --split val --weights last
    accelerate launch --num_processes 2 -m vitdist.evaluate runs/latest

Writes RUN/eval-<split>.json (loss, accuracy, top-5 accuracy, per-class accuracy, the confusion matrix, and which
checkpoint was scored) and RUN/confusion-<split>.png, or where --out says (a run folder you cannot write in).
`vitdist train` writes the same two files for the test split of its best epoch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Optional

import tyro

from ..config import DataConfig, UserError
from ..files import require_writable
from ..train.record import run_config
from ..train.scores import eval_paths, score_split, summary, write_eval
from .load import load_run


@dataclass
class EvalArgs:
    run_dir: tyro.conf.Positional[str]
    """A run folder written by `vitdist train`."""
    split: Optional[Literal["test", "val", "train"]] = None
    """The split to score, as the run built it (the same seeded validation hold-out and subsets). Default: the
    test split where the run's data has one, else val."""
    weights: Literal["best", "last", "ema"] = "best"
    """best: the run's model.safetensors (its best epoch, raw or averaged as results.json says; while it runs, the
    best so far); last: its newest checkpoint's raw weights; ema: that checkpoint's moving average (--ema.decay)."""
    data: DataConfig = DataConfig()
    """The run's data settings; any --data.* flag overrides one (say, --data.root where the data moved)."""
    batch_size: int = 1024
    """Images per forward, per process."""
    precision: Optional[Literal["no", "bf16", "fp16", "tf32"]] = None
    """Default: the run's own precision where this device runs it, else fp32 (`no`)."""
    plot: bool = True
    """Write RUN/confusion-<split>.png."""
    out: Optional[str] = None
    """Where to write instead of the run folder (one you cannot write in, say): a .json file, with the confusion
    picture beside it (the same name, .png), or a folder for eval-<split>.json and confusion-<split>.png."""

    def __post_init__(self):
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")


def evaluate_run(args: EvalArgs) -> dict:
    from ..data.batches import eval_loader, loader_workers
    from ..data.sources import load_data
    from ..precision import resolve_precision
    from ..train.processes import make_accelerator, process_device

    run_dir = Path(args.run_dir)
    # Before any work: where the scores go must take them (the default split is known only with the data).
    for split in [args.split] if args.split else ["test", "val"]:
        for path in eval_paths(args.out, run_dir, split, args.weights)[:1 + args.plot]:
            require_writable(path, "pass --out PATH (a .json file or a folder) where you can write")
    model, info = load_run(run_dir, args.weights)
    device = process_device()
    precision = args.precision or info.config.precision
    if args.precision is None and precision in ("fp16", "tf32", "bf16") and device.type != "cuda":
        precision = "no"  # a GPU run scored on a CPU: fp32, what the CPU runs well
    precision = resolve_precision(precision, device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = make_accelerator(precision, 1, world_size)
    data = load_data(args.data, info.img_size, info.config.seed)
    if data.classes != info.classes:
        raise UserError(f"--data: its classes ({', '.join(data.classes[:5])}{' ...' * (len(data.classes) > 5)}) "
                        f"are not the run's ({', '.join(info.classes[:5])}{' ...' * (len(info.classes) > 5)}): "
                        f"point --data.root at the data the run was trained on")
    split = args.split or ("test" if data.test is not None else "val")
    ds = {"train": data.train, "val": data.val, "test": data.test}[split]
    if ds is None:
        raise UserError(f"--split test: the run's data ({data.source}) has no test split: use --split val")
    loader = accelerator.prepare(eval_loader(ds, args.batch_size, loader_workers(ds, args.data.num_workers),
                                             device.type == "cuda"))
    model.to(accelerator.device)  # not prepare(): scoring needs no gradient sync, and the weights have no grads
    with accelerator.autocast():  # the run's precision, as its own evaluation had it
        scores = score_split(model, loader, info.normalize, accelerator, len(info.classes))
    # Which checkpoint was scored, by name: "best" alone does not say it (a live run's best so far, its average).
    about = {"run_dir": str(run_dir), "weights_file": str(info.weights_file), "checkpoint": info.checkpoint,
             "epoch": info.epoch, "step": info.step, "data": data.source, "precision": precision}
    if accelerator.is_main_process:
        json_path, png = write_eval(run_dir, split, args.weights, scores, info.classes, about, args.plot, args.out)
        scored = (f"{args.weights} weights, {info.checkpoint or info.weights_file.name} (epoch {info.epoch}, step "
                  f"{info.step})")
        print(summary(split, scores, info.classes, scored))
        print(f"-> {json_path}" + (f", {png}" if png else ""))
    accelerator.wait_for_everyone()
    return scores


def main(argv: list[str] | None = None) -> int:
    from ..console import exit_on_user_error
    from ..train.processes import end_process_group

    argv = sys.argv[1:] if argv is None else argv
    description = ("Score a run's saved model on a split of its data: loss, accuracy, top-5, per-class accuracy "
                   "and the confusion matrix, into RUN/eval-<split>.json and RUN/confusion-<split>.png (or --out).")
    with exit_on_user_error():
        args = tyro.cli(EvalArgs, args=argv, prog="vitdist eval", description=description)
        # Again, on the run's own data settings: the flags given override those, not the defaults.
        saved = run_config(args.run_dir)
        args = tyro.cli(EvalArgs, args=argv, prog="vitdist eval", description=description,
                        default=replace(EvalArgs(run_dir=args.run_dir), data=saved.data))
        evaluate_run(args)
    end_process_group()  # in order, every rank together (accelerate launch -m vitdist.evaluate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
