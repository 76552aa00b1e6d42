"""`vitdist eval RUN`: a saved model scored on a split of its data, with what a single number hides.

    vitdist eval runs/latest                     # the run's test split (its validation split if it has none)
    vitdist eval runs/latest --split val --weights last
    accelerate launch --num_processes 2 -m vitdist.evaluate runs/latest

Writes RUN/eval-<split>.json (loss, accuracy, top-5 accuracy, per-class accuracy, the confusion matrix, and which
checkpoint was scored) and RUN/confusion-<split>.png, or where --out says (a run folder you cannot write in).
`vitdist train` writes the same two files for the test split of its best epoch.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
import tyro

from .config import DataConfig, UserError
from .files import require_writable
from .runs import load_run, run_config

TOP_K = 5  # top-5 accuracy, reported from 10 classes up (below that it is near 1 by construction)


def score_split(model, loader, normalize, accelerator, num_classes: int) -> dict:
    """Loss (plain cross-entropy), accuracy, top-5 accuracy, per-class accuracy and the confusion matrix
    (rows: true class, columns: predicted) over a whole split, every sample counted once across all ranks."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    k = min(TOP_K, num_classes)
    sums = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # loss, top-1 hits, top-k hits
    confusion = torch.zeros(num_classes * num_classes, device=accelerator.device, dtype=torch.int64)
    with torch.no_grad():
        for x, y in loader:
            logits = model(normalize(x).to(dtype)).float()
            loss = F.cross_entropy(logits, y, reduction="none")
            top = logits.topk(k, dim=-1).indices  # (B, k), best first
            # gather_for_metrics drops the samples accelerate repeated to even out the ranks' shards.
            loss, top, y = accelerator.gather_for_metrics((loss, top, y))
            sums[0] += loss.double().sum()
            sums[1] += (top[:, 0] == y).sum()
            sums[2] += (top == y[:, None]).any(-1).sum()
            confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes * num_classes)
    model.train(was_training)
    matrix = confusion.view(num_classes, num_classes).tolist()
    per_class = [sum(row) for row in matrix]
    count = sum(per_class)
    loss_sum, hits, top_hits = sums.tolist()
    return {"num_samples": count, "loss": loss_sum / count, "accuracy": hits / count,
            "top5_accuracy": top_hits / count if num_classes >= 10 else None,
            "per_class_accuracy": [matrix[c][c] / n if n else None for c, n in enumerate(per_class)],
            "per_class_count": per_class, "confusion": matrix}


def eval_names(split: str, weights: str) -> tuple[str, str]:
    """The file names of a split's scores and confusion picture; the best weights' go without a suffix."""
    suffix = "" if weights == "best" else f"-{weights}"
    return f"eval-{split}{suffix}.json", f"confusion-{split}{suffix}.png"


def eval_paths(out: Optional[str], run_dir: Path, split: str, weights: str) -> tuple[Path, Path]:
    """(scores, picture): in the run folder; --out FILE.json and FILE.png beside it; --out FOLDER/ with the
    run folder's names."""
    json_name, png_name = eval_names(split, weights)
    if out is None:
        return run_dir / json_name, run_dir / png_name
    path = Path(out)
    return (path, path.with_suffix(".png")) if path.suffix == ".json" else (path / json_name, path / png_name)


def write_eval(run_dir: Path, split: str, weights: str, scores: dict, classes: list[str], about: dict,
               plot: bool = True, out: Optional[str] = None) -> tuple[Path, Optional[Path]]:
    """RUN/eval-<split>.json and, with `plot`, RUN/confusion-<split>.png (or where `out` says: eval_paths)."""
    from .plots import plot_confusion

    json_path, png_path = eval_paths(out, run_dir, split, weights)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    record = {"split": split, "weights": weights, **about, "classes": classes, **scores}
    # One key a line, and the matrix one row a line: readable at 100 classes, where indent=2 gives 10,000 lines.
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items() if k != "confusion"]
    lines.append('  "confusion": [\n' + ",\n".join(f"    {json.dumps(row)}" for row in scores["confusion"]) + "\n  ]")
    json_path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    png = None
    if plot:
        png = plot_confusion(scores["confusion"], classes, png_path,
                             f"{run_dir.resolve().name}: {split}, {weights} weights, accuracy "
                             f"{scores['accuracy']:.4f} ({scores['num_samples']:,} images)")
    return json_path, png


def log_to_wandb(run, split: str, scores: dict, classes: list[str], weights: Path, about: dict, step: int) -> None:
    """A split's confusion matrix and per-class accuracy in wandb's own types, and the weights as a model
    artifact (offline, both wait in the run folder for `wandb sync`)."""
    import wandb

    matrix = scores["confusion"]
    y_true = [i for i, row in enumerate(matrix) for j, n in enumerate(row) for _ in range(n)]
    preds = [j for row in matrix for j, n in enumerate(row) for _ in range(n)]
    table = wandb.Table(columns=["class", "accuracy", "images"],
                        data=[[c, a, n] for c, a, n in zip(classes, scores["per_class_accuracy"],
                                                           scores["per_class_count"])])
    run.log({f"{split}/confusion_matrix": wandb.plot.confusion_matrix(y_true=y_true, preds=preds,
                                                                     class_names=classes),
             f"{split}/per_class_accuracy": table}, step=step)
    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={**about, "classes": classes,
                                                                         f"{split}_accuracy": scores["accuracy"]})
    artifact.add_file(str(weights))
    run.log_artifact(artifact, aliases=["best"])


def summary(split: str, scores: dict, classes: list[str], scored: str = "") -> str:
    """Two lines: the split's numbers (and `scored`: which weights), then its weakest and strongest classes."""
    top5 = f", top-5 {scores['top5_accuracy']:.4f}" if scores["top5_accuracy"] is not None else ""
    ranked = sorted((a, c) for a, c in zip(scores["per_class_accuracy"], classes) if a is not None)
    shown = min(3, len(ranked) // 2) or 1
    worst = ", ".join(f"{c} {a:.3f}" for a, c in ranked[:shown])
    best = ", ".join(f"{c} {a:.3f}" for a, c in reversed(ranked[-shown:]))
    return (f"{split}: {scores['num_samples']:,} images, loss {scores['loss']:.4f}, accuracy "
            f"{scores['accuracy']:.4f}{top5}{'; ' + scored if scored else ''}\n  weakest classes: {worst}; "
            f"strongest: {best}")


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
    from .data import eval_loader, load_data, loader_workers
    from .precision import resolve_precision
    from .processes import make_accelerator, process_device

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
    from .cli import exit_on_user_error

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
