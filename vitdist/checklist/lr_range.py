"""`vitdist sweep range`: the learning-rate range test, one run with the rate ramped exponentially each step
until the loss blows up; the suggestion is read off the smoothed curve (range_suggestion).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import tyro

from ..config import TrainConfig, UserError
from .plots import plot_range
from ..stopping import STOP
from .trials import finite, is_main, smooth, sweep_folder

RANGE_SMOOTH_SPAN = 0.05
"""The range test smooths its loss over a window of this share of --num-steps (at least 3 steps), so the window
spans the same stretch of log(lr) whatever the step count: a causal EMA of that span (beta = 1 - 2 / (span + 1))
for the stop rule, a centred moving average (no lag) for the suggestion and the plot."""
RANGE_STOP_FACTOR = 4.0
"""The range test stops once the smoothed loss exceeds this multiple of its minimum (or is not finite)."""
RANGE_MIN_DROP = 0.03
"""The range test's smoothed loss must dip at least this fraction below its start for a suggestion: a ViT's loss
falls only a little before the rate gets too large (on CIFAR-10, tiny: 2.30 -> 2.11), but a 3% dip is no noise."""
RANGE_SKIP = 0.05
"""The steepest descent is looked for after the first 5% of the steps (there the rate is far too small to move
the loss, and a dip is batch noise)."""


@dataclass(frozen=True)
class RangeArgs:
    train: Annotated[TrainConfig, tyro.conf.arg(name="")]
    start_lr: float = 1e-6
    """Learning rate of the first step."""
    end_lr: float = 1.0
    """Learning rate of the last step (it grows by the same factor every step)."""
    num_steps: int = 300
    """Optimizer steps of the ramp (the test stops earlier once the loss blows up)."""
    sweep_dir: str = "runs/sweep-range"
    """Folder for range.json and range.png."""


def range_test(cfg: TrainConfig, start_lr: float, end_lr: float, num_steps: int, out_dir: str | Path) -> dict:
    """One run with lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1)); stops when the smoothed loss
    exceeds RANGE_STOP_FACTOR x its minimum or is not finite. A check-sized loop, not a training run: no
    checkpoints, no validation. Writes range.json and range.png in out_dir."""
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise UserError(f"--start-lr and --end-lr must satisfy 0 < start < end, got {start_lr:g} and {end_lr:g}")
    if num_steps < 10:
        raise UserError(f"--num-steps must be >= 10 (a few hundred is usual), got {num_steps}")
    with sweep_folder(Path(out_dir), "--sweep-dir", ["range.json", "range.png"], cfg, what="range test"):
        return _range_test(cfg, start_lr, end_lr, num_steps, Path(out_dir))


def _range_test(cfg: TrainConfig, start_lr: float, end_lr: float, num_steps: int, out_dir: Path) -> dict:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from ..data.augment import BatchAugment
    from ..data.batches import loader_workers, train_loader
    from ..data.sources import load_data
    from ..model import VisionTransformer
    from ..optim import build_optimizer
    from ..precision import resolve_precision
    from ..train.processes import make_accelerator, process_device
    from ..train.run import batch_plan
    from ..train.step import optimizer_step

    # The trainer's own set-up and optimizer step (vitdist.train.optimizer_step), with a rate of our own.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    micro, accum = batch_plan(cfg.batch.global_batch_size, cfg.batch.micro_batch_size, world_size)
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, process_device()))
    accelerator = make_accelerator(cfg.precision, accum, world_size)
    set_seed(cfg.seed)
    data = load_data(cfg.data, cfg.model.img_size, cfg.seed)
    model = VisionTransformer.from_config(cfg.model, data.num_classes)
    optimizer = build_optimizer(model, cfg.optim)
    loader = train_loader(data.train, cfg.batch.global_batch_size // world_size, cfg.batch.global_batch_size,
                          cfg.seed, loader_workers(data.train, cfg.data.num_workers), accelerator.device.type == "cuda")
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    augment = BatchAugment(cfg.data, data.num_classes).to(accelerator.device)
    input_dtype = next(model.parameters()).dtype
    set_seed(cfg.seed, device_specific=True)

    factor = (end_lr / start_lr) ** (1 / (num_steps - 1))
    beta = 1 - 2 / (_range_span(num_steps) + 1)
    lrs, losses, stopped, interrupted = [], [], None, None
    bar = tqdm(total=num_steps, desc="range test", leave=False,
               disable=not (is_main() and cfg.log.progress and sys.stderr.isatty()))
    model.train()
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        for x, y in loader:  # this rank's share of one optimizer step
            lr = start_lr * factor ** len(losses)
            for group in optimizer.param_groups:
                group["lr"] = lr
            _, stats = optimizer_step(accelerator, model, optimizer, augment, x, y, micro, cfg, input_dtype,
                                      STOP.requested)
            value, _, asked = stats.tolist()  # the stopping rule needs every step's loss: one read a step, by design
            lrs.append(lr)
            losses.append(value)  # the mean over ranks: every rank takes the same decision below
            bar.update(1)
            smoothed = smooth(losses, beta)
            if not math.isfinite(value):
                stopped = f"loss not finite at lr {lr:.3g}"
            elif len(losses) >= 5 and smoothed[-1] > RANGE_STOP_FACTOR * min(smoothed):
                stopped = f"smoothed loss above {RANGE_STOP_FACTOR:g}x its minimum at lr {lr:.3g}"
            elif len(losses) >= num_steps:
                stopped = f"reached --num-steps {num_steps}"
            elif asked > 0 or (world_size == 1 and STOP.requested):  # a signal here, or one another rank saw:
                # one process stops at the step it is in; several at the step whose all-reduce carried the flag
                interrupted = STOP.signum or signal.SIGTERM
                stopped = f"{signal.Signals(interrupted).name} after {len(losses)} of {num_steps} steps"
            if stopped:
                break
        if stopped:
            break
    bar.close()
    report = {"kind": "range", "start_lr": start_lr, "end_lr": end_lr, "num_steps": num_steps,
              "steps_run": len(losses), "stopped": stopped, "stop_ema_beta": beta,
              "stop_factor": RANGE_STOP_FACTOR, **range_suggestion(lrs, losses, _range_span(num_steps)),
              "lrs": lrs, "losses": [v if finite(v) else None for v in losses]}
    if is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "range.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_range(report, out_dir / "range.png", RANGE_STOP_FACTOR)
        print(f"range test: {len(losses)} steps, lr {start_lr:g} -> {lrs[-1]:.3g}; stopped: {stopped}")
        print(report["advice"])
        print(f"wrote {out_dir / 'range.json'} and {out_dir / 'range.png'}")
        if interrupted:
            print(f"vitdist: stopped on {stopped}: the curve so far is in {out_dir / 'range.json'} and range.png. A "
                  f"range test is one short run with no checkpoint: run the command again to test the whole range",
                  file=sys.stderr)
    if interrupted:
        report["exit_code"] = 128 + interrupted
    return report


def _range_span(num_steps: int) -> int:
    return max(3, round(RANGE_SMOOTH_SPAN * num_steps))


def centred_mean(values: list[float], span: int) -> list[float]:
    """Moving average over `span` values centred on each one (shorter at the ends): smooths without lag."""
    h = span // 2
    return [sum(values[max(0, i - h):i + h + 1]) / len(values[max(0, i - h):i + h + 1]) for i in range(len(values))]


def range_suggestion(lrs: list[float], losses: list[float], span: int = 3) -> dict:
    """Read the range test's curve, smoothed by a centred moving average of `span` steps.

    suggested_lr is the rate where the smoothed loss falls fastest per unit of log(lr) (the steepest descent),
    searched between RANGE_SKIP of the steps and the minimum of the smoothed loss. min_loss_lr / 10 is the other
    common reading (the minimum itself is already too hot); it is the suggestion when no descent is found.
    """
    finite = [(lr, v) for lr, v in zip(lrs, losses) if math.isfinite(v)]
    if len(finite) < 5:
        return {"suggested_lr": None, "steepest_lr": None, "min_loss_lr": None,
                "advice": "no suggestion: the loss was not finite from the first steps; lower --start-lr, and run "
                          "`vitdist check`"}
    lr_ok, loss_ok = zip(*finite)
    smoothed = centred_mean(list(loss_ok), span)
    i_min = min(range(len(smoothed)), key=smoothed.__getitem__)
    min_lr = lr_ok[i_min]
    lo = max(1, int(RANGE_SKIP * len(smoothed)))
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (math.log(lr_ok[i + 1]) - math.log(lr_ok[i - 1]))
              for i in range(lo, i_min)]  # central differences against log(lr)
    steep = None
    if slopes and min(slopes) < 0:
        steep = lr_ok[lo + min(range(len(slopes)), key=slopes.__getitem__)]
    fell = smoothed[i_min] < smoothed[0] * (1 - RANGE_MIN_DROP)
    suggested = steep if steep is not None else min_lr / 10
    if not fell:
        advice = (f"the smoothed loss never fell by {RANGE_MIN_DROP:.0%} (best {smoothed[i_min]:.3f} from "
                  f"{smoothed[0]:.3f}): raise --end-lr or --num-steps, or run `vitdist check` first")
    else:
        advice = (f"suggested lr {suggested:.2g} (steepest descent of the smoothed loss"
                  f"{'' if steep is not None else ' not found: min-loss lr / 10'}); min-loss lr {min_lr:.2g}, "
                  f"/10 = {min_lr / 10:.2g}. Confirm with `vitdist sweep lr --lrs {suggested:.2g} "
                  f"{suggested / 3:.2g} {suggested * 3:.2g}`")
    return {"suggested_lr": suggested if fell else None, "steepest_lr": steep, "min_loss_lr": min_lr,
            "min_loss_lr_div10": min_lr / 10, "smoothed": smoothed, "advice": advice}
