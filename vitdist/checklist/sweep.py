"""`vitdist sweep`: step 1 of tuning (the learning rate), and a grid for the other hyperparameters.

    vitdist sweep lr    [--preset NAME] [--lrs 1e-2 5e-3 ...] [train overrides ...]
    vitdist sweep range [--preset NAME] [--start-lr 1e-6 --end-lr 1 --num-steps 300] [train overrides ...]
    vitdist sweep grid  [--preset NAME] --set optim.weight_decay=1e-4,1e-3 [--set ...] [--random N] [...]

`lr` trains one short run per rate (same seed, same data order) through vitdist.train.train, reads each run's
steps.jsonl and gives every loss curve a verdict with its numbers (lr_curve_verdict, below); it recommends the
healthy rate with the lowest final validation loss. `range` is the one-run alternative: the rate grows
exponentially each step until the loss blows up, and the suggestion is read off the smoothed curve. `grid` runs
one trial per combination (or N random draws) of config values and ranks them by best validation accuracy.
This module holds `lr`, the curve verdicts and the command; lr_range.py holds `range`, grid.py `grid`.

Under `accelerate launch` every process runs the same trials; only rank 0 writes files and prints.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ..config import TrainConfig, UserError
from .trials import finite, is_main, read_trial_log, say, smooth, sweep_folder, train_trial

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
MIN_JUDGE_STEPS = 50
"""Fewer steps than this, and a curve gets no verdict but "too short" (a non-finite loss is still "diverged"):
the smoothing alone remembers ~10 steps, and the rise share and drop of a 7-40 step curve read every rate as too
slow or too large (issue 19). The sweep's suggestion then follows the lowest measured validation loss."""

DEFAULT_LRS = (1e-2, 5e-3, 1e-3, 5e-4, 1e-4)  # the checklist's step 1
SWEEP_EPOCHS = 5  # `sweep lr` and `sweep grid` without --epochs: enough steps to read each curve, rank each trial

# ============================================================================ verdicts


def lr_curve_verdict(losses: list[float], best_drop: float | None = None,
                     smaller_rate_drop: float | None = None) -> tuple[str, dict]:
    """('diverged' | 'oscillating' | 'too large' | 'too slow' | 'healthy' | 'too short', the numbers behind it) for
    one per-step loss curve (too short: under MIN_JUDGE_STEPS steps, and no non-finite loss).

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
        return "too short", {**numbers, "note": f"too short to judge: {n} step{'s' * (n != 1)}"}
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
    if n < MIN_JUDGE_STEPS:
        return "too short", {**numbers, "note": f"too short to judge: {n} steps (a verdict needs {MIN_JUDGE_STEPS})"}
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
    if "note" in numbers:  # too short: the numbers are shown, not judged
        text = f"{numbers['note']}; {text}"
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


def sweep_lr(cfg: TrainConfig, lrs: list[float], sweep_dir: str | Path, schedule: str = "constant") -> dict:
    """One run per rate; verdicts, recommendation, sweep.json and sweep.png in sweep_dir. With cfg.resume, each
    rate's run continues where it stopped (a finished one reads its results back)."""
    lrs = _check_lrs(lrs)
    sweep_dir = Path(sweep_dir)
    with sweep_folder(sweep_dir, "--sweep-dir", ["lr_*", "sweep.json", "sweep.png"], cfg):
        return _sweep_lr(cfg, lrs, sweep_dir, schedule)


def _sweep_lr(cfg: TrainConfig, lrs: list[float], sweep_dir: Path, schedule: str) -> dict:
    runs = []
    for i, lr in enumerate(lrs):
        optim = replace(cfg.optim, lr=lr, min_lr=min(cfg.optim.min_lr, lr))
        if schedule == "constant":
            optim = replace(optim, warmup_epochs=0.0, min_lr=lr)  # cosine from lr to lr: flat
        run_cfg = replace(cfg, optim=optim, run_dir=str(sweep_dir / f"lr_{lr:g}"), resume=None)
        say(f"\n=== sweep lr {i + 1}/{len(lrs)}: lr {lr:g} -> {run_cfg.run_dir}")
        results, error = train_trial(run_cfg, resume=cfg.resume is not None)
        steps = read_trial_log(Path(run_cfg.run_dir) / "steps.jsonl")
        metrics = read_trial_log(Path(run_cfg.run_dir) / "metrics.jsonl")
        runs.append({"lr": lr, "run_dir": run_cfg.run_dir, "error": error,
                     # strict JSON: a non-finite loss (the step that diverged) is stored as null
                     "curve": [(row["step"], row["loss"] if finite(row["loss"]) else None) for row in steps],
                     "final_val_loss": metrics[-1]["val_loss"] if metrics and not error else None,
                     "final_val_acc": metrics[-1]["val_acc"] if metrics and not error else None,
                     "best_val_acc": results["best_val_acc"] if results else None})
    judge_runs(runs)
    recommended, advice = recommend_lr(runs)
    report = {"kind": "lr", "lrs": lrs, "schedule": schedule, "epochs": cfg.epochs, "sweep_dir": str(sweep_dir),
              "thresholds": thresholds(), "runs": runs, "recommended_lr": recommended, "advice": advice}
    if is_main():
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
    short = [r for r in runs if r["verdict"] == "too short" and r["final_val_loss"] is not None]
    if short:  # no verdict to go by: the rate that measured best
        best = min(short, key=lambda r: r["final_val_loss"])
        return best["lr"], (f"lr {best['lr']:g}: the lowest final validation loss ({best['final_val_loss']:.4f}); "
                            f"the curves are too short to judge ({best['numbers'].get('steps')} steps, a verdict "
                            f"needs {MIN_JUDGE_STEPS}): train with --optim.lr {best['lr']:g}, or sweep longer "
                            f"(more --epochs or data) for verdicts")
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
            "oscillating_share": OSCILLATING_SHARE, "slow_drop": SLOW_DROP, "slow_relative_drop": SLOW_RELATIVE_DROP,
            "min_judge_steps": MIN_JUDGE_STEPS}


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


# ============================================================================ the command

COMMANDS = {"lr": "one short run per learning rate, a verdict per loss curve, the recommended rate",
            "range": "one run with the rate ramped exponentially; a suggestion from the smoothed loss",
            "grid": "a grid (or random draws) over config fields; trials ranked by best validation accuracy"}


def usage() -> str:
    return "\n".join(["usage: vitdist sweep {lr,range,grid} [--preset NAME] [ARGS] [train overrides]", ""]
                     + [f"  {name:<6} {text}" for name, text in COMMANDS.items()])


def main(argv: list[str] | None = None) -> int:
    from ..console import exit_on_user_error
    from .grid import GridArgs, sweep_grid
    from .lr_range import RangeArgs, range_test
    from ..presets import parse_with_preset
    from .trials import run_interruptible

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    with exit_on_user_error():
        mode, rest = argv[0], argv[1:]
        if mode not in COMMANDS:
            raise UserError(f"sweep mode {mode!r} is unknown: choose one of {', '.join(COMMANDS)}")
        cls = {"lr": LrSweepArgs, "range": RangeArgs, "grid": GridArgs}[mode]
        # A curve to read or trials to rank, not a model to keep: a few epochs a trial, not the preset's 100
        # (--help shows it as --epochs' default).
        short = {"epochs": SWEEP_EPOCHS} if mode in ("lr", "grid") else {}
        args = parse_with_preset(cls, rest, f"vitdist sweep {mode}", f"{COMMANDS[mode]}.", **short)
        if short and not any(a == "--epochs" or a.startswith("--epochs=") for a in rest):
            say(f"sweep {mode}: {SWEEP_EPOCHS} epochs a {'rate' if mode == 'lr' else 'trial'} (the default here; "
                f"--epochs N for more)")

        def work():
            if mode == "lr":
                sweep_lr(args.train, list(args.lrs), args.sweep_dir, args.schedule)
            elif mode == "range":
                return range_test(args.train, args.start_lr, args.end_lr, args.num_steps, args.sweep_dir).get(
                    "exit_code", 0)
            else:
                sweep_grid(args.train, list(args.set), args.random, args.sweep_dir)

        return run_interruptible(work, f"vitdist sweep {mode}", rest,
                                 "finishing this step, then writing the curve so far" if mode == "range" else None)


if __name__ == "__main__":
    sys.exit(main())
