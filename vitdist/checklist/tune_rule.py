"""The tune's decision rule: the noise band of a difference of two validation accuracies (`noise`), a change
kept only when it beats the best so far by more than it (`keep_or_revert`; with several seeds, by the mean of the
paired differences, against the larger of their own spread and the binomial band), and how large a gain the validation
split can resolve, said before anything is compared (`say_resolution`), as a schedule that spends a trial
warming up is fixed first (`fix_schedule`). At the end, the winner and the template on fresh seeds: the headline
(`confirm`)."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

from ..config import TrainConfig

NOISE_Z = 2.0  # a kept change beats the best by more than this many standard errors of the difference
RESOLUTION_WARN = 0.05  # a noise band wider than this (5 points) hides most single changes: said before comparing


def noise(acc_a: float, acc_b: float, n: int) -> float:
    """NOISE_Z standard errors of the difference of two accuracies measured on n validation images (binomial,
    as if independent: conservative for two models on the same images; it leaves out seed-to-seed variance)."""
    if n <= 0:
        return math.inf
    return NOISE_Z * math.sqrt((acc_a * (1 - acc_a) + acc_b * (1 - acc_b)) / n)


def fix_schedule(t, template: TrainConfig) -> TrainConfig:
    """A warmup longer than half the trial is fixed before anything is compared: every trial would spend most of
    its epochs warming up, and no change could show what it does."""
    if template.optim.warmup_epochs <= template.epochs / 2:
        return template
    warmup = max(template.epochs / 10, 0.1)
    t.decide("schedule", f"warmup {template.optim.warmup_epochs:g} -> {warmup:g} epochs (a tenth of the run)", {},
             "fixed", f"a {template.optim.warmup_epochs:g}-epoch warmup spends most of a {template.epochs}-epoch trial "
                      f"warming up: fixed before anything is compared")
    return replace(template, optim=replace(template.optim, warmup_epochs=warmup))


def paired_z(seeds: int) -> float:
    """NOISE_Z for a spread estimated from `seeds` paired differences: Student's t at the confidence NOISE_Z gives a
    normal (about 4.5 for 3 seeds: two degrees of freedom say little about a spread)."""
    from scipy import stats

    return float(stats.t.ppf(stats.norm.cdf(NOISE_Z), seeds - 1))


def say_resolution(t, ref) -> None:
    """Before anything is compared: how large a gain the validation split can resolve at the template's accuracy
    (over the tune's seeds), how much the template itself moved between seeds, and where that is coarse, what would
    make it finer."""
    if ref.best_val_acc is None or not ref.num_val:
        return
    seeds = len(ref.accs) or 1
    band = noise(ref.best_val_acc, ref.best_val_acc, ref.num_val) / math.sqrt(seeds)
    numbers = {"noise": band}
    why = (f"a change is kept when it gains more than {band:.3f} ({NOISE_Z:g} binomial standard errors of the "
           f"difference at the template's {ref.best_val_acc:.3f}, on {ref.num_val} validation images"
           + (f", averaged over {seeds} seeds)" if seeds > 1 else ")"))
    if seeds > 1:
        spread = statistics.stdev(ref.accs)
        numbers["template_seed_std"] = spread
        why += (f" and more than its paired differences' own spread; the template's accuracy moved {spread:.3f} "
                f"(standard deviation) between seeds")
    coarse = band > RESOLUTION_WARN
    if coarse:
        why += ("; that hides most single changes: a larger hold-out resolves finer (4x the images halves it: "
                "--data.val-fraction, or more data with --data.train-subset), and so do more --seeds")
    t.decide("resolution", f"{ref.num_val} validation images" + (f", {seeds} seeds" if seeds > 1 else ""), numbers,
             "too coarse" if coarse else "noted", why)


def keep_or_revert(t, step: str, trial, best, cfg: TrainConfig, best_cfg: TrainConfig):
    """(best trial, best config) after one trial (a tune.Trial, judged against the best so far on the tune.Tuner
    t, which records the decision): kept only when it beats the best by more than the noise."""
    if trial.best_val_acc is None:
        t.decide(step, trial.what, {"trial": trial.name, "error": trial.error}, "reverted",
                 f"the run diverged ({trial.error})")
        return best, best_cfg
    n = min(trial.num_val, best.num_val)
    seeds = len(trial.accs)
    numbers = {"trial": trial.name, "best_trial": best.name, "val_acc": trial.best_val_acc,
               "best_val_acc": best.best_val_acc}
    if seeds > 1 and len(best.accs) == seeds:  # paired seed by seed: the same seeds, the same hold-outs
        diffs = [a - b for a, b in zip(trial.accs, best.accs)]
        gain = sum(diffs) / seeds
        spread = statistics.stdev(diffs)
        measured = paired_z(seeds) * spread / math.sqrt(seeds)  # the paired differences' own noise
        binomial = noise(trial.best_val_acc, best.best_val_acc, n) / math.sqrt(seeds)
        margin = max(measured, binomial)
        numbers.update(val_accs=trial.accs, best_val_accs=best.accs, diffs=diffs, measured_noise=measured,
                       binomial_noise=binomial)
        over = f" over {seeds} seeds"
    else:
        margin = noise(trial.best_val_acc, best.best_val_acc, n)
        gain = trial.best_val_acc - best.best_val_acc
        over = ""
    numbers.update(gain=gain, noise=margin)
    if gain > margin:
        t.decide(step, trial.what, numbers, "kept",
                 f"val {trial.best_val_acc:.4f} vs {best.best_val_acc:.4f}{over}: +{gain:.4f} > noise {margin:.4f}")
        return trial, cfg
    t.decide(step, trial.what, numbers, "reverted",
             f"val {trial.best_val_acc:.4f} vs {best.best_val_acc:.4f}{over}: {gain:+.4f} is within noise {margin:.4f}"
             if gain > 0 else f"val {trial.best_val_acc:.4f} vs {best.best_val_acc:.4f}{over}: {gain:+.4f}, no better")
    return best, best_cfg


def confirm(t, template: TrainConfig, best_cfg: TrainConfig, best_name: str) -> dict | None:
    """The headline: the template as the user gave it (not with the tune's schedule fix, which is one of the tune's
    own changes and is measured with the rest) and the winner, each trained on --confirm-seeds fresh seeds, never
    used during the tune (each redrawing the hold-out), as mean and standard deviation. Runs on the tune.Tuner t;
    None if skipped."""
    k = t.args.confirm_seeds
    if k <= 0:
        return None
    fresh = [template.seed + t.args.seeds + i for i in range(k)]  # the tune trained on seed .. seed + seeds - 1
    out: dict = {"seeds": fresh}
    arms = {"template": (template, "the template as given")}
    if best_cfg != template:
        arms["best"] = (best_cfg, f"the winner ({best_name})")
    from .tune_record import Arm

    trials = t.run_many([Arm(f"confirm_{role}", f"{what} on {k} fresh seeds", "", cfg, seeds=fresh, kind="confirm")
                         for role, (cfg, what) in arms.items()])  # side by side, for the workers
    for role, trial in zip(arms, trials):
        if trial.best_val_acc is None:
            out[role] = {"accs": trial.accs, "error": trial.error}
            continue
        std = statistics.stdev(trial.accs) if k > 1 else 0.0
        out[role] = {"accs": trial.accs, "mean": trial.best_val_acc, "std": std}
    out.setdefault("best", out["template"])  # nothing was kept: the winner is the template
    a, b = out["template"].get("mean"), out["best"].get("mean")
    out["gain"] = b - a if a is not None and b is not None else None
    t.decide("confirm", f"{k} fresh seeds ({', '.join(map(str, fresh))})", {"confirmed": out},
             "done" if out["gain"] is not None else "failed",
             f"tuned {b:.4f} +- {out['best']['std']:.4f} against the template as given, {a:.4f} +- "
             f"{out['template']['std']:.4f}: {out['gain']:+.4f}" if out["gain"] is not None else
             "a confirmation run diverged: no headline")
    return out
