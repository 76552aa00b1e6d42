"""`vitdist sweep`: step 1 of tuning (the learning rate), and a grid for the other hyperparameters.

    vitdist sweep lr    [--preset NAME] [--lrs 1e-2 5e-3 ...] [train overrides ...]
    vitdist sweep range [--preset NAME] [--start-lr 1e-6 --end-lr 1 --num-steps 300] [train overrides ...]
    vitdist sweep grid  [--preset NAME] --set optim.weight_decay=1e-4,1e-3 [--set ...] [--random N] [...]

`lr` trains one short run per rate (same seed, same data order) through vitdist.train.train, reads each run's
steps.jsonl and gives every loss curve a verdict with its numbers (lr_curve_verdict, below); it recommends the
healthy rate with the lowest final validation loss. `range` is the one-run alternative: the rate grows
exponentially each step until the loss blows up, and the suggestion is read off the smoothed curve. `grid` runs
one trial per combination (or N random draws) of config values and ranks them by best validation accuracy.

Under `accelerate launch` every process runs the same trials; only rank 0 writes files and prints.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import sys
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import tyro

from .config import TrainConfig, UserError

# --- verdict thresholds for one loss curve (per optimizer step), all relative to the curve's start
EMA_BETA = 0.9
"""Smoothing of the per-step loss: s_t = beta * s_(t-1) + (1 - beta) * loss_t, started at the curve's start (the
first step's loss, taken before any update)."""
RISE_TOLERANCE = 0.05
"""A step counts as a rise when the smoothed loss stands more than this fraction above its lowest value so far
(or more than RISE_NOISE_SIGMAS x the smoothed curve's own noise, if that is larger: batch noise is no rise)."""
RISE_NOISE_SIGMAS = 6.0
"""Batch noise, measured on the curve itself, that still does not count as a rise (in std of the smoothed loss)."""
OSCILLATING_SHARE = 0.2
"""Oscillating: more than this share of the steps are rises. (A healthy curve, plateau included, stays near its
running minimum; one that swings or collapses back up spends many steps above it.)"""
SLOW_DROP = 0.1
"""Too slow: the smoothed loss fell by less than this fraction of its start over the whole run..."""
SLOW_RELATIVE_DROP = 0.5
"""...or (within a sweep) by less than this share of the largest drop any rate of the sweep achieved."""
TOO_LARGE_MARGIN = 0.05
"""Within a sweep, a curve that fell too little is 'too large' rather than 'too slow' when a smaller rate fell
further by more than this fraction of the start: the rate stalls high (on CIFAR-10, tiny ViT, constant lr 1e-2
and 5e-3 spike, then level off well above 1e-3's curve), and a larger one would not help."""
# A diverged curve has a non-finite loss, or ends (smoothed) above its start by more than the rise tolerance.

DEFAULT_LRS = (1e-2, 5e-3, 1e-3, 5e-4, 1e-4)  # the checklist's step 1

# --- range test
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


# ============================================================================ verdicts

def smooth(values: list[float], beta: float = EMA_BETA, start: float | None = None) -> list[float]:
    """EMA of values. Started at `start` when given (no bias), else bias-corrected (Adam's correction)."""
    out, s = [], (start if start is not None else 0.0)
    for i, v in enumerate(values):
        s = beta * s + (1 - beta) * v
        out.append(s if start is not None else s / (1 - beta ** (i + 1)))
    return out


def lr_curve_verdict(losses: list[float], best_drop: float | None = None,
                     smaller_rate_drop: float | None = None) -> tuple[str, dict]:
    """('diverged' | 'oscillating' | 'too large' | 'too slow' | 'healthy', the numbers behind it) for one
    per-step loss curve.

    best_drop: the largest relative drop of any curve in the same sweep; when given, a curve that fell by less
    than SLOW_RELATIVE_DROP of it is too slow as well. smaller_rate_drop: the largest drop of the sweep's smaller
    rates; a curve that fell too little while one of them fell TOO_LARGE_MARGIN further is 'too large'. Alone
    (both None) a curve is judged on its own numbers and is never 'too large'.
    """
    n = len(losses)
    numbers: dict = {"steps": n}
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is not None:
        return "diverged", {**numbers, "non_finite_at_step": bad + 1}
    if n < 2:
        return "too slow", {**numbers, "note": "fewer than 2 steps: nothing to judge"}
    start = losses[0]  # the initial weights' loss: every later step has been moved by the rate under test
    smoothed = smooth(losses, EMA_BETA, start=start)
    final, lowest = smoothed[-1], min(smoothed)
    diffs = sorted(abs(b - a) for a, b in zip(losses, losses[1:]))
    level = sorted(losses)[n // 2]
    # Batch-to-batch noise: median |difference| of consecutive losses / 0.954 is the noise's std for Gaussian
    # noise, and a slow trend barely moves it; the EMA divides it by sqrt((1 + beta) / (1 - beta)).
    noise = diffs[len(diffs) // 2] / 0.954 / max(level, 1e-12)
    tolerance = max(RISE_TOLERANCE, RISE_NOISE_SIGMAS * noise * math.sqrt((1 - EMA_BETA) / (1 + EMA_BETA)))
    running, rises = math.inf, 0
    for s in smoothed:
        running = min(running, s)
        rises += s > running * (1 + tolerance)
    drop = (start - final) / start if start > 0 else 0.0
    numbers.update(start_loss=start, final_loss=final, min_loss=lowest, drop=drop, rise_share=rises / n,
                   rise_tolerance=tolerance, noise=noise)
    if final > start * (1 + tolerance):
        return "diverged", numbers
    if rises / n > OSCILLATING_SHARE:
        return "oscillating", numbers
    if drop < SLOW_DROP or (best_drop is not None and best_drop > 0 and drop < SLOW_RELATIVE_DROP * best_drop):
        if smaller_rate_drop is not None and smaller_rate_drop - drop > TOO_LARGE_MARGIN:
            return "too large", {**numbers, "smaller_rate_drop": smaller_rate_drop}
        return "too slow", numbers
    return "healthy", numbers


def describe(numbers: dict) -> str:
    """The numbers behind a verdict, on one line."""
    if "non_finite_at_step" in numbers:
        return f"non-finite loss at step {numbers['non_finite_at_step']}"
    if "error" in numbers:
        return numbers["error"]
    if "drop" not in numbers:
        return numbers.get("note", "")
    change = (f"x{1 - numbers['drop']:.3g}" if numbers["drop"] < -9 else f"{-numbers['drop']:+.0%}")
    text = (f"loss {numbers['start_loss']:.4g} -> {numbers['final_loss']:.4g} (smoothed; {change}), "
            f"min {numbers['min_loss']:.4g}; {numbers['rise_share']:.0%} of {numbers['steps']} steps rise more than "
            f"{numbers['rise_tolerance']:.0%} above the running min")
    if "smaller_rate_drop" in numbers:
        text += f"; a smaller rate fell {numbers['smaller_rate_drop']:.0%}"
    return text


# ============================================================================ lr sweep

@dataclass(frozen=True)
class LrSweepArgs:
    train: Annotated[TrainConfig, tyro.conf.arg(name="")]  # train's own flags, without a prefix
    lrs: tuple[float, ...] = DEFAULT_LRS
    """Learning rates to try, one short run each (same seed and data order)."""
    sweep_dir: str = "runs/sweep-lr"
    """Folder for sweep.json, sweep.png and one run folder per rate (lr_<value>/); --run-dir is not used."""
    schedule: Literal["constant", "config"] = "constant"
    """constant: each rate held for the whole run, as the checklist compares them (warmup and cosine come once
    the rate is chosen); config: the config's own warmup + cosine."""


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(*args, **kwargs) -> None:
    if _is_main():
        print(*args, **kwargs, flush=True)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _read_jsonl(path: Path) -> list[dict]:
    """A trial's log; a run that died before writing one has none."""
    from .diagnose import read_jsonl

    return read_jsonl(path) if path.exists() else []


def _train_one(cfg: TrainConfig) -> tuple[dict | None, str | None]:
    """train(cfg) -> (results, None), or (None, why) when the loss went non-finite."""
    from .train import Diverged, train

    try:  # a trial's folder from an earlier sweep starts afresh; tuning never looks at the test split
        return train(replace(cfg, overwrite=True, test_at_end=False)), None
    except Diverged as e:
        return None, str(e)


def sweep_lr(cfg: TrainConfig, lrs: list[float], sweep_dir: str | Path, schedule: str = "constant") -> dict:
    """One run per rate; verdicts, recommendation, sweep.json and sweep.png in sweep_dir."""
    lrs = _check_lrs(lrs)
    sweep_dir = Path(sweep_dir)
    runs = []
    for i, lr in enumerate(lrs):
        optim = replace(cfg.optim, lr=lr, min_lr=min(cfg.optim.min_lr, lr))
        if schedule == "constant":
            optim = replace(optim, warmup_epochs=0.0, min_lr=lr)  # cosine from lr to lr: flat
        run_cfg = replace(cfg, optim=optim, run_dir=str(sweep_dir / f"lr_{lr:g}"), resume=None)
        _say(f"\n=== sweep lr {i + 1}/{len(lrs)}: lr {lr:g} -> {run_cfg.run_dir}")
        results, error = _train_one(run_cfg)
        steps = _read_jsonl(Path(run_cfg.run_dir) / "steps.jsonl")
        metrics = _read_jsonl(Path(run_cfg.run_dir) / "metrics.jsonl")
        runs.append({"lr": lr, "run_dir": run_cfg.run_dir, "error": error,
                     # strict JSON: a non-finite loss (the step that diverged) is stored as null
                     "curve": [(row["step"], row["loss"] if _finite(row["loss"]) else None) for row in steps],
                     "final_val_loss": metrics[-1]["val_loss"] if metrics and not error else None,
                     "final_val_acc": metrics[-1]["val_acc"] if metrics and not error else None,
                     "best_val_acc": results["best_val_acc"] if results else None})
    judge_runs(runs)
    recommended, advice = recommend_lr(runs)
    report = {"kind": "lr", "lrs": lrs, "schedule": schedule, "epochs": cfg.epochs, "sweep_dir": str(sweep_dir),
              "thresholds": thresholds(), "runs": runs, "recommended_lr": recommended, "advice": advice}
    if _is_main():
        _print_lr_table(runs, recommended, advice)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
        from .plots import plot_sweep

        # A diverged run ends on a non-finite point (null), which plot_sweep marks with an x.
        curves = {f"lr {r['lr']:g}": r["curve"] + ([(len(r["curve"]) + 1, None)]
                                                   if r["error"] and (not r["curve"] or r["curve"][-1][1] is not None)
                                                   else []) for r in runs}
        verdicts = {f"lr {r['lr']:g}": r["verdict"] + (" (recommended)" if r["lr"] == recommended else "")
                    for r in runs}
        png = plot_sweep(curves, verdicts, sweep_dir / "sweep.png")
        print(f"wrote {sweep_dir / 'sweep.json'} and {png}")
    return report


def judge_runs(runs: list[dict]) -> None:
    """Set each run's verdict and numbers; 'too slow' and 'too large' are also judged against the other rates."""
    def losses(r):
        return [math.nan if loss is None else loss for _, loss in r["curve"]]

    first = {id(r): lr_curve_verdict(losses(r)) for r in runs if not r["error"]}
    drops = [numbers["drop"] for _, numbers in first.values() if "drop" in numbers]
    best = max(drops) if drops else None
    for r in runs:
        if r["error"]:
            r["verdict"], r["numbers"] = "diverged", {"error": r["error"]}
        else:
            below = [first[id(o)][1].get("drop") for o in runs if o["lr"] < r["lr"] and id(o) in first]
            below = [d for d in below if d is not None]
            r["verdict"], r["numbers"] = lr_curve_verdict(losses(r), best_drop=best,
                                                          smaller_rate_drop=max(below) if below else None)


def recommend_lr(runs: list[dict]) -> tuple[float | None, str]:
    """The healthy rate with the lowest final validation loss, or None and what to try instead."""
    healthy = [r for r in runs if r["verdict"] == "healthy" and r["final_val_loss"] is not None]
    if healthy:
        best = min(healthy, key=lambda r: r["final_val_loss"])
        return best["lr"], (f"lr {best['lr']:g}: healthy with the lowest final validation loss "
                            f"({best['final_val_loss']:.4f}); train with --optim.lr {best['lr']:g} (warmup + cosine "
                            f"are on by default)")
    unstable = sorted(r["lr"] for r in runs if r["verdict"] in ("diverged", "oscillating", "too large"))
    slow = sorted(r["lr"] for r in runs if r["verdict"] == "too slow")
    if not slow:
        low = unstable[0]
        return None, (f"no healthy rate: every rate was too large; try smaller ones: --lrs {low / 3:.2g} "
                      f"{low / 10:.2g} {low / 30:.2g}, and clip gradients (--optim.max-grad-norm 1.0)")
    if not unstable:
        high = slow[-1]
        return None, (f"no healthy rate: every rate was too slow for this budget; try larger ones (--lrs "
                      f"{high * 3:.2g} {high * 10:.2g}) or a longer run (more --epochs)")
    lo, hi = slow[-1], unstable[0]
    if hi < lo:  # a too-slow rate above an unstable one: the curves are too short or too noisy to tell
        return None, (f"no healthy rate, and no clear order ({hi:g} unstable, {lo:g} too slow): run longer "
                      f"(more --epochs or --data.train-subset) and sweep again")
    between = [lo * (hi / lo) ** (k / 4) for k in (1, 2, 3)]  # log-spaced, strictly between
    return None, (f"no healthy rate: {lo:g} and below were too slow, {hi:g} and above unstable; try rates between "
                  f"them (--lrs {' '.join(f'{x:.2g}' for x in between)}) or a longer run (more --epochs)")


def thresholds() -> dict:
    return {"ema_beta": EMA_BETA, "rise_tolerance": RISE_TOLERANCE, "rise_noise_sigmas": RISE_NOISE_SIGMAS,
            "oscillating_share": OSCILLATING_SHARE, "slow_drop": SLOW_DROP, "slow_relative_drop": SLOW_RELATIVE_DROP}


def _print_lr_table(runs: list[dict], recommended: float | None, advice: str) -> None:
    print("\nlr sweep (per-step training loss; verdict thresholds in vitdist/sweep.py):")
    for r in runs:
        val = f"val loss {r['final_val_loss']:.4f}, acc {r['final_val_acc']:.4f}" if r["final_val_loss"] is not None \
            else "no validation"
        mark = "  <- recommended" if r["lr"] == recommended else ""
        print(f"  lr {r['lr']:<8g} {r['verdict']:<12} {describe(r['numbers'])}; {val}{mark}")
    print(advice)


def _check_lrs(lrs) -> list[float]:
    if not lrs:
        raise UserError("--lrs is empty: give one or more learning rates, e.g. --lrs 1e-2 1e-3 1e-4")
    bad = [lr for lr in lrs if not (math.isfinite(lr) and lr > 0)]
    if bad:
        raise UserError(f"--lrs: every learning rate must be a positive number, got {bad[0]:g}")
    return list(dict.fromkeys(lrs))  # each rate once, in the given order


# ============================================================================ range test

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
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from .data import BatchAugment, load_data, train_loader
    from .model import VisionTransformer
    from .optim import build_optimizer
    from .train import batch_plan, make_accelerator, optimizer_step

    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise UserError(f"--start-lr and --end-lr must satisfy 0 < start < end, got {start_lr:g} and {end_lr:g}")
    if num_steps < 10:
        raise UserError(f"--num-steps must be >= 10 (a few hundred is usual), got {num_steps}")
    # The trainer's own set-up and optimizer step (vitdist.train.optimizer_step), with a rate of our own.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    micro, accum = batch_plan(cfg.batch.global_batch_size, cfg.batch.micro_batch_size, world_size)
    accelerator = make_accelerator(cfg.precision, accum, world_size)
    set_seed(cfg.seed)
    data = load_data(cfg.data, cfg.model.img_size, cfg.seed)
    model = VisionTransformer.from_config(cfg.model, data.num_classes)
    optimizer = build_optimizer(model, cfg.optim)
    loader = train_loader(data.train, cfg.batch.global_batch_size // world_size, cfg.batch.global_batch_size,
                          cfg.seed, cfg.data.num_workers, accelerator.device.type == "cuda")
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    augment = BatchAugment(cfg.data, data.num_classes).to(accelerator.device)
    input_dtype = next(model.parameters()).dtype
    set_seed(cfg.seed, device_specific=True)

    factor = (end_lr / start_lr) ** (1 / (num_steps - 1))
    beta = 1 - 2 / (_range_span(num_steps) + 1)
    lrs, losses, stopped = [], [], None
    bar = tqdm(total=num_steps, desc="range test", leave=False,
               disable=not (_is_main() and cfg.log.progress and sys.stderr.isatty()))
    model.train()
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        for x, y in loader:  # this rank's share of one optimizer step
            lr = start_lr * factor ** len(losses)
            for group in optimizer.param_groups:
                group["lr"] = lr
            _, value, _ = optimizer_step(accelerator, model, optimizer, augment, x, y, micro, cfg, input_dtype)
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
            if stopped:
                break
        if stopped:
            break
    bar.close()
    report = {"kind": "range", "start_lr": start_lr, "end_lr": end_lr, "num_steps": num_steps,
              "steps_run": len(losses), "stopped": stopped, "stop_ema_beta": beta,
              "stop_factor": RANGE_STOP_FACTOR, **range_suggestion(lrs, losses, _range_span(num_steps)),
              "lrs": lrs, "losses": [v if _finite(v) else None for v in losses]}
    if _is_main():
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "range.json").write_text(json.dumps(report, indent=2) + "\n")
        _plot_range(report, out_dir / "range.png")
        print(f"range test: {len(losses)} steps, lr {start_lr:g} -> {lrs[-1]:.3g}; stopped: {stopped}")
        print(report["advice"])
        print(f"wrote {out_dir / 'range.json'} and {out_dir / 'range.png'}")
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


def _plot_range(report: dict, path: Path) -> Path:
    """Loss against lr (log x), raw and smoothed, with the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lrs = report["lrs"][:len(report.get("smoothed") or [])] or report["lrs"]
    ax.plot(report["lrs"], report["losses"], color="0.75", lw=1, label="loss per step")
    if report.get("smoothed"):
        ax.plot(lrs, report["smoothed"], color="C0", lw=2, label="smoothed (centred mean)")
        top = min(max(report["smoothed"]), RANGE_STOP_FACTOR * min(report["smoothed"])) * 1.1
        ax.set_ylim(min(report["smoothed"]) * 0.9, top)
    for key, color, name in (("suggested_lr", "C2", "suggested"), ("min_loss_lr", "C3", "min loss")):
        if report.get(key):
            ax.axvline(report[key], color=color, ls="--", label=f"{name} {report[key]:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {report['steps_run']} steps; {report['stopped']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ============================================================================ grid

@dataclass(frozen=True)
class GridArgs:
    train: Annotated[TrainConfig, tyro.conf.arg(name="")]
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """FIELD=V1,V2,...: values to try for one config field (e.g. optim.weight_decay=1e-4,1e-3 or
    model.dropout=0.1,0.2); repeat for more fields."""
    random: int = 0
    """Run only this many random draws from the grid (seeded by --seed); 0 runs the full grid."""
    sweep_dir: str = "runs/sweep-grid"
    """Folder for results.json and one run folder per trial (trial_NNN/); --run-dir is not used."""


def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def resolve_field(key: str) -> tuple[str | None, str, object]:
    """'optim.weight_decay' (or 'optim.weight-decay', '--optim.weight-decay') -> ('optim', 'weight_decay', type)."""
    key = key.strip().lstrip("-").replace("-", "_")
    top = _field_types(TrainConfig)
    head, _, name = key.rpartition(".")
    if not head:
        if name in top and not dataclasses.is_dataclass(top[name]):
            return None, name, top[name]
    elif head in top and dataclasses.is_dataclass(top[head]):
        sub = _field_types(top[head])
        if name in sub:
            return head, name, sub[name]
        raise UserError(f"--set {key}: {head} has no field {name!r}; its fields: {', '.join(sub)}")
    subs = [k for k, t in top.items() if dataclasses.is_dataclass(t)]
    raise UserError(f"--set {key}: unknown config field; use SECTION.FIELD with SECTION one of {', '.join(subs)} "
                    f"(e.g. optim.weight_decay), or a top-level field such as epochs or label_smoothing")


def parse_value(text: str, tp, key: str):
    """One grid value, parsed as the field's type."""
    text = text.strip()
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        if text.lower() in ("none", "null"):
            return None
        tp = next(a for a in args if a is not type(None))
        args, origin = typing.get_args(tp), typing.get_origin(tp)
    if origin is Literal:
        if text in args:
            return text
        raise UserError(f"--set {key}={text}: not one of {', '.join(map(str, args))}")
    try:
        if tp is bool:
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
        if tp is int:
            return int(text)
        if tp is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        if tp is str:
            return text
    except ValueError:
        raise UserError(f"--set {key}={text}: not a valid {tp.__name__}") from None
    raise UserError(f"--set {key}: a field of type {tp} cannot be swept; sweep numbers, flags, names or choices")


def parse_grid(specs: list[str]) -> dict[str, list]:
    """['optim.weight_decay=1e-4,1e-3', ...] -> {'optim.weight_decay': [1e-4, 1e-3], ...} (values typed)."""
    if not specs:
        raise UserError("--set is missing: give at least one FIELD=V1,V2 (e.g. --set optim.weight_decay=1e-4,1e-3)")
    grid: dict[str, list] = {}
    for spec in specs:
        key, eq, values = spec.partition("=")
        if not eq or not values.strip():
            raise UserError(f"--set {spec!r}: expected FIELD=V1,V2,... (e.g. model.dropout=0.1,0.2)")
        section, name, tp = resolve_field(key)
        full = f"{section}.{name}" if section else name
        if full in grid:
            raise UserError(f"--set {full} is given twice: list all its values in one --set")
        grid[full] = list(dict.fromkeys(parse_value(v, tp, full) for v in values.split(",")))
    return grid


def apply_overrides(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """dataclasses.replace on the nested sub-configs; their __post_init__ rejects bad values (ConfigError)."""
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section:
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
        else:
            cfg = replace(cfg, **{name: value})
    return cfg


def grid_trials(grid: dict[str, list], random_draws: int, seed: int) -> list[dict]:
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if random_draws < 0:
        raise UserError(f"--random must be >= 0 (0 runs the full grid), got {random_draws}")
    if 0 < random_draws < len(combos):
        picked = sorted(random.Random(seed).sample(range(len(combos)), random_draws))
        combos = [combos[i] for i in picked]
    return combos


def sweep_grid(cfg: TrainConfig, specs: list[str], random_draws: int, sweep_dir: str | Path) -> dict:
    grid = parse_grid(specs)
    trials = grid_trials(grid, random_draws, cfg.seed)
    sweep_dir = Path(sweep_dir)
    # Every trial's config is built (and validated) before the first one trains.
    configs = [replace(apply_overrides(cfg, t), run_dir=str(sweep_dir / f"trial_{i:03d}"), resume=None)
               for i, t in enumerate(trials)]
    rows = []
    for i, (overrides, run_cfg) in enumerate(zip(trials, configs)):
        _say(f"\n=== sweep grid trial {i + 1}/{len(trials)}: "
             f"{' '.join(f'{k}={v}' for k, v in overrides.items())} -> {run_cfg.run_dir}")
        results, error = _train_one(run_cfg)
        metrics = _read_jsonl(Path(run_cfg.run_dir) / "metrics.jsonl")
        rows.append({"trial": i, "run_dir": run_cfg.run_dir, "overrides": overrides, "error": error,
                     "best_val_acc": results["best_val_acc"] if results else None,
                     "best_epoch": results["best_epoch"] if results else None,
                     "final_val_loss": metrics[-1]["val_loss"] if metrics and results else None,
                     "final_train_acc": metrics[-1]["train_acc"] if metrics and results else None})
    ranked = sorted(rows, key=lambda r: -r["best_val_acc"] if r["best_val_acc"] is not None else math.inf)
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    report = {"kind": "grid", "grid": grid, "random": random_draws, "sweep_dir": str(sweep_dir),
              "trials": ranked}
    if _is_main():
        _print_grid_table(grid, ranked)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {sweep_dir / 'results.json'}")
    return report


def _print_grid_table(grid: dict, ranked: list[dict]) -> None:
    keys = list(grid)
    widths = [max(len(k), 8) for k in keys]
    print("\ngrid results, ranked by best validation accuracy:")
    print("rank trial " + " ".join(f"{k:>{w}}" for k, w in zip(keys, widths))
          + " best_val_acc best_epoch final_val_loss")
    for r in ranked:
        cells = " ".join(f"{str(r['overrides'][k]):>{w}}" for k, w in zip(keys, widths))
        if r["error"]:
            tail = f"diverged: {r['error']}"
        else:
            tail = f"{r['best_val_acc']:>12.4f} {r['best_epoch']:>10} {r['final_val_loss']:>14.4f}"
        print(f"{r['rank']:>4} {r['trial']:>5} {cells} {tail}")
    best = ranked[0]
    if best["best_val_acc"] is not None:
        from .presets import as_flag

        flags = " ".join(as_flag(k, v) for k, v in best["overrides"].items())
        print(f"best: trial {best['trial']} ({best['best_val_acc']:.4f}); its flags: {flags}")


# ============================================================================ the command

COMMANDS = {"lr": "one short run per learning rate, a verdict per loss curve, the recommended rate",
            "range": "one run with the rate ramped exponentially; a suggestion from the smoothed loss",
            "grid": "a grid (or random draws) over config fields; trials ranked by best validation accuracy"}


def usage() -> str:
    return "\n".join(["usage: vitdist sweep {lr,range,grid} [--preset NAME] [ARGS] [train overrides]", ""]
                     + [f"  {name:<6} {text}" for name, text in COMMANDS.items()])


def main(argv: list[str] | None = None) -> int:
    from .cli import exit_on_user_error
    from .presets import parse_with_preset

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    with exit_on_user_error():
        mode, rest = argv[0], argv[1:]
        if mode not in COMMANDS:
            raise UserError(f"sweep mode {mode!r} is unknown: choose one of {', '.join(COMMANDS)}")
        cls = {"lr": LrSweepArgs, "range": RangeArgs, "grid": GridArgs}[mode]
        args = parse_with_preset(cls, rest, f"vitdist sweep {mode}", f"{COMMANDS[mode]}.")
        if mode == "lr":
            sweep_lr(args.train, list(args.lrs), args.sweep_dir, args.schedule)
        elif mode == "range":
            range_test(args.train, args.start_lr, args.end_lr, args.num_steps, args.sweep_dir)
        else:
            sweep_grid(args.train, list(args.set), args.random, args.sweep_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
