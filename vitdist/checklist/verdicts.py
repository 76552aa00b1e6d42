"""The verdicts of `vitdist diagnose` and the thresholds behind them: the checklist's "Tuning flow" step 2,
"Quick diagnosis" and "Monitoring", in the order of their priority. diagnose.py applies them; advice.py says what
to try for each."""

from __future__ import annotations

import math

# --- thresholds. Accuracies are fractions; "gap" is train accuracy minus validation accuracy at the last epoch.

# The checklist's step-2 table: 0.95/0.70 (gap 0.25) severe, 0.85/0.75 (gap 0.10) mild and normal,
# 0.60/0.58 (gap 0.02) underfitting.
SEVERE_GAP = 0.15  # above the mild row's 0.10 with room for epoch-to-epoch noise, well below the severe row's 0.25
MILD_GAP = 0.05  # below it the gap is noise (the underfitting row has 0.02); from it to SEVERE_GAP: mild, normal
UNDERFIT_TRAIN_ACC = 0.85  # the mild row's train accuracy: below it, with no gap, the model has not fit its data

# Divergence: NaN or inf anywhere in the losses, or the training loss ending this many times above its start
# (worse than the untrained model: the sweep calls this "loss above its start"), or blowing up to
# DIVERGED_PEAK_RATIO times it in some epoch even if it came back. The start is the first step's loss (taken
# before any update), else ln(classes): what an untrained model's near-uniform prediction scores, with or
# without label smoothing and mixing.
DIVERGED_LOSS_RATIO = 1.1
DIVERGED_PEAK_RATIO = 2.0
# Trends are read from the per-epoch training loss; with fewer epochs than MIN_TREND_POINTS, from steps.jsonl
# averaged in STEP_WINDOWS windows (each at least MIN_STEPS_PER_WINDOW steps); with neither, not at all.
MIN_TREND_POINTS = 4
STEP_WINDOWS = 10
MIN_STEPS_PER_WINDOW = 4
# Oscillating ("rate too large"): the loss rose between at least this share of successive points...
OSCILLATION_RISE_SHARE = 0.3
# ...by at least this fraction of its level on average. Noise on a plateau rises as often, but by ~1%.
OSCILLATION_MIN_RISE = 0.05
# Stalled ("flat loss: rate too small, or a bug"): over the whole run the loss fell by less than this fraction.
STALL_MAX_DROP = 0.10
# Validation loss rising: its mean over the last (up to 3) epochs is this far above its minimum ("rising
# sharply"; a little rise is normal, says Monitoring), the minimum lies VAL_RISE_MIN_EPOCHS or more before the
# end (sustained, not one noisy epoch), and the training loss is lower now than at that minimum.
VAL_RISE = 0.15
VAL_RISE_MIN_EPOCHS = 3
# "Still learning": the training loss fell by more than this fraction over the last 3 epochs.
STILL_FALLING = 0.02

# --- the verdicts
DIVERGED = "diverged"
OSCILLATING = "oscillating loss"
STALLED = "stalled loss"
SEVERE = "severe overfitting"
VAL_RISING = "validation loss rising"
UNDERFITTING = "underfitting"
MILD = "mild overfitting"
HEALTHY = "healthy"
# verdict -> what it means; the order is the priority when several hold (the first is the verdict).
VERDICTS = {
    DIVERGED: "the loss became NaN/inf or ended above its start: the learning rate is too large, or gradients "
              "explode",
    OSCILLATING: "the training loss keeps going up and down: the learning rate is too large",
    STALLED: "the loss hardly fell: the learning rate is too small, or there is a bug",
    SEVERE: "validation accuracy far below training: the model memorises its training set",
    VAL_RISING: "validation loss rising while training loss falls: overfitting has set in",
    UNDERFITTING: "low training accuracy and validation level with it: the model has not fit its data",
    MILD: "a moderate train-validation gap: normal",
    HEALTHY: "loss falling, training data fit, small gap",
}


def _num(x) -> float | None:
    """A logged number (NaN and inf kept), or None when missing."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _finite(x) -> bool:
    return _num(x) is not None and math.isfinite(x)
