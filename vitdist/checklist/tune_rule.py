"""The tune's decision rule: the noise band of a difference of two validation accuracies (`noise`), a change
kept only when it beats the best so far by more than it (`keep_or_revert`), and how large a gain the validation
split can resolve, said before anything is compared (`say_resolution`), as a schedule that spends a trial
warming up is fixed first (`fix_schedule`)."""

from __future__ import annotations

import math
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


def say_resolution(t, ref) -> None:
    """Before anything is compared: how large a gain the validation split can resolve, at the template's
    accuracy; where that is coarse, what would make it finer."""
    if ref.best_val_acc is None or not ref.num_val:
        return
    band = noise(ref.best_val_acc, ref.best_val_acc, ref.num_val)
    why = (f"a change is kept when it gains more than {band:.3f} ({NOISE_Z:g} binomial standard errors of the "
           f"difference at the template's {ref.best_val_acc:.3f}, on {ref.num_val} validation images)")
    coarse = band > RESOLUTION_WARN
    if coarse:
        why += ("; that hides most single changes: a larger hold-out resolves finer (4x the images halves it: "
                "--data.val-fraction, or more data with --data.train-subset)")
    t.decide("resolution", f"{ref.num_val} validation images", {"noise": band}, "too coarse" if coarse else "noted",
             why)


def keep_or_revert(t, step: str, trial, best, cfg: TrainConfig, best_cfg: TrainConfig):
    """(best trial, best config) after one trial (a tune.Trial, judged against the best so far on the tune.Tuner
    t, which records the decision): kept only when it beats the best by more than the noise."""
    if trial.best_val_acc is None:
        t.decide(step, trial.what, {"trial": trial.name, "error": trial.error}, "reverted",
                 f"the run diverged ({trial.error})")
        return best, best_cfg
    margin = noise(trial.best_val_acc, best.best_val_acc, min(trial.num_val, best.num_val))
    gain = trial.best_val_acc - best.best_val_acc
    numbers = {"trial": trial.name, "val_acc": trial.best_val_acc, "best_val_acc": best.best_val_acc,
               "gain": gain, "noise": margin}
    if gain > margin:
        t.decide(step, trial.what, numbers, "kept",
                 f"val {trial.best_val_acc:.4f} vs {best.best_val_acc:.4f}: +{gain:.4f} > noise {margin:.4f}")
        return trial, cfg
    t.decide(step, trial.what, numbers, "reverted",
             f"val {trial.best_val_acc:.4f} vs {best.best_val_acc:.4f}: {gain:+.4f} is within noise {margin:.4f}"
             if gain > 0 else f"val {trial.best_val_acc:.4f} vs {best.best_val_acc:.4f}: {gain:+.4f}, no better")
    return best, best_cfg
