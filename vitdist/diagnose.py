"""`vitdist diagnose RUN_DIR`: a run's verdict, the numbers behind it, and the flags to try next.

The verdicts and the order of the advice are the checklist's ("Tuning flow" step 2, "Quick diagnosis",
"Monitoring"). `diagnose()` is a pure function of the logged rows, so it is tested on synthetic curves for every
verdict and on a recorded run; `main()` reads the run folder, prints, and draws diagnose.png next to the metrics.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import tyro

from .config import DATASET_CLASSES, GRAD_NORM_RANGE, TrainConfig, to_dict
from .runs import Run, read_run

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

# --- the steps the advice moves along (the checklist's own values)
LR_LADDER = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2)  # step 1's sweep; oscillating: one down; stalled: one up (1e-3 -> 5e-3)
LR_DIVERGED_FACTOR = 10  # "loss becomes NaN: lower the rate (1e-3 -> 1e-4)"
DROPOUT_UP = (0.1, 0.2, 0.3)  # overfitting: "dropout 0.1 -> 0.2 or 0.3"
WEIGHT_DECAY_UP = (1e-4, 1e-3)  # overfitting: "weight decay 1e-4 -> 1e-3"
DROPOUT_DOWN = (0.0, 0.1)  # underfitting: "dropout 0.3 -> 0.1" (then off: the large-data row allows 0.0)
WEIGHT_DECAY_DOWN = (1e-4,)  # underfitting: "weight decay 1e-3 -> 1e-4", the template's light decay
MODEL_WIDTHS = (128, 256, 512)  # the model table's embed dims: tiny, small, base
MODEL_DEPTHS = (4, 6)  # and its layer counts
MIXING_FLAGS = "--data.mixup-alpha 0.8 --data.cutmix-alpha 1.0"  # the common alphas (config.py's help)
CLIP_NORM = 1.0  # step 3: gradient clipping max_norm 1.0
WARMUP_EPOCHS = 5.0  # the template's warmup
LABEL_SMOOTHING = 0.1  # step 3
DROP_PATH_RATE = 0.1  # stochastic depth: the Lessons' optional trick
EARLY_STOP_PATIENCE = 15  # step 3

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


class Advice(NamedTuple):
    why: str
    flags: str  # the override flags for the next `vitdist train`


@dataclass
class Diagnosis:
    verdict: str
    meaning: str
    evidence: dict  # the numbers, by name (JSON-ready)
    lines: list[str]  # the same numbers as sentences
    advice: list[Advice]  # one change each, in the order to try them
    findings: list[str]  # every verdict whose test held, by priority (the first is `verdict`)
    notes: list[str] = field(default_factory=list)  # checklist steps skipped because the run already has them

    def to_dict(self) -> dict:
        out = asdict(self)
        out["advice"] = [a._asdict() for a in self.advice]
        return out


# --- the diagnosis

def _num(x) -> float | None:
    """A logged number (NaN and inf kept), or None when missing."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _finite(x) -> bool:
    return _num(x) is not None and math.isfinite(x)


def fmt(x: float) -> str:
    """Numbers as flags and people write them: 0.2, 1e-3, 5e-4, 200."""
    if x == 0:
        return "0"
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    if abs(x) <= 0.01:
        mantissa, exponent = f"{x:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"


def _settings(config: dict | None) -> dict:
    """The run's config, with the template's defaults for anything it does not say."""
    merged = to_dict(TrainConfig())
    for key, value in (config or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def _first_nonfinite(rows: list[dict], steps: list[dict], fp16: bool = False) -> str | None:
    """The first NaN or inf logged. Under fp16 an infinite gradient norm is the loss scaler's overflow, a step it
    skipped (routine while the scale settles), not a divergence: only the losses count there."""
    for s in steps:
        for key in ("loss",) if fp16 else ("loss", "grad_norm"):
            if _num(s.get(key)) is not None and not _finite(s[key]):
                return f"steps.jsonl step {s.get('step')}: {key} {s[key]}"
    for r in rows:
        for key in ("train_loss", "train_clean_loss", "val_loss") + (() if fp16 else ("grad_norm_mean",
                                                                                       "grad_norm_max")):
            if _num(r.get(key)) is not None and not _finite(r[key]):
                return f"metrics.jsonl epoch {r.get('epoch')}: {key} {r[key]}"
    return None


def _trend_curve(rows: list[dict], steps: list[dict]) -> tuple[list[float] | None, str]:
    """The training-loss curve trends are read from, and what it is."""
    per_epoch = [r["train_loss"] for r in rows if _finite(r.get("train_loss"))]
    if len(per_epoch) >= MIN_TREND_POINTS:
        return per_epoch, "per-epoch train_loss"
    losses = [s["loss"] for s in steps if _finite(s.get("loss"))]
    windows = min(STEP_WINDOWS, len(losses) // MIN_STEPS_PER_WINDOW)
    if windows >= MIN_TREND_POINTS:
        size = len(losses) / windows
        curve = [sum(chunk) / len(chunk) for chunk in
                 (losses[round(i * size):round((i + 1) * size)] for i in range(windows))]
        return curve, f"steps.jsonl loss in {windows} windows of ~{size:.0f} steps"
    return None, f"too few epochs ({len(per_epoch)}) and steps ({len(losses)}) to read trends"


def diagnose(rows: list[dict], config: dict | None = None, steps: list[dict] | None = None,
             results: dict | None = None) -> Diagnosis:
    """The verdict on one run from its metrics rows (and config, steps, results when there are any). Without a
    row, only a non-finite step can be judged: the run diverged in its first epoch."""
    steps = steps or []
    c = _settings(config)
    if not rows:
        bad = _first_nonfinite([], steps)
        if bad is None:
            raise ValueError("diagnose needs at least one metrics row, or a non-finite step")
        ev = {"epochs": 0, "steps": len(steps), "nonfinite": bad}
        advice, notes = _advice(DIVERGED, c, ev)
        return Diagnosis(DIVERGED, VERDICTS[DIVERGED], ev, [f"it diverged in its first epoch: {bad}"], advice,
                         [DIVERGED], notes)
    ev: dict = {"epochs": len(rows), "steps": rows[-1].get("step")}
    lines: list[str] = []
    found: set[str] = set()
    if config is None:
        lines.append("no config.json: advice assumes the template's values (dropout 0.1, lr 1e-3, ...)")
    if config is not None and len(rows) < c["epochs"] and not (results or {}).get("stopped_early"):
        lines.append(f"ran {len(rows)} of {c['epochs']} epochs" + (
            "; no results.json: still running, interrupted, or diverged (the trainer stops at the first NaN "
            "before logging that epoch)" if results is None else ""))

    # Divergence: NaN/inf anywhere, or the loss ending above its start.
    fp16 = c["precision"] == "fp16"
    ev["nonfinite"] = _first_nonfinite(rows, steps, fp16)
    overflows = sum(r.get("skipped_steps") or 0 for r in rows) if any("skipped_steps" in r for r in rows) else \
        sum(1 for s in steps if _num(s.get("grad_norm")) is not None and not _finite(s["grad_norm"]))
    if fp16 and overflows:
        ev["fp16_skipped_steps"] = overflows
        lines.append(f"{overflows} fp16 overflow steps skipped by the loss scaler (routine while its scale "
                     f"settles; not a divergence)")
    if ev["nonfinite"]:
        found.add(DIVERGED)
        lines.append(f"non-finite value: {ev['nonfinite']}")
    train_losses = [r["train_loss"] for r in rows if _finite(r.get("train_loss"))]
    classes = c["model"]["num_classes"] or (DATASET_CLASSES.get(c["data"]["name"]) if config else None)
    if steps and _finite(steps[0].get("loss")):
        start, what = steps[0]["loss"], "first step"
    elif classes:
        start, what = math.log(classes), f"ln {classes} classes, untrained"
    elif len(train_losses) >= MIN_TREND_POINTS:
        start, what = train_losses[0], "first epoch"
    else:
        start, what = None, None
    curve, curve_name = _trend_curve(rows, steps)
    end = train_losses[-1] if train_losses else (curve[-1] if curve else None)
    ev.update(loss_start=start, loss_end=end, loss_curve=curve_name)
    if start is not None and end is not None and start > 0:
        ev["loss_drop"] = (start - end) / start
        lines.append(f"training loss {start:.4f} ({what}) -> {end:.4f} (last epoch): "
                     f"{'fell' if end <= start else 'ROSE'} {abs(ev['loss_drop']):.1%}")
        peak = max(train_losses, default=end)
        if end > start * DIVERGED_LOSS_RATIO:
            found.add(DIVERGED)
            lines.append(f"the loss ended {end / start:.2f}x its start (> {DIVERGED_LOSS_RATIO}, "
                         f"DIVERGED_LOSS_RATIO)")
        elif peak > start * DIVERGED_PEAK_RATIO:
            found.add(DIVERGED)
            epoch = next(r["epoch"] for r in rows if r.get("train_loss") == peak)
            lines.append(f"the loss blew up to {peak:.4g} at epoch {epoch}, {peak / start:.1f}x its start "
                         f"(> {DIVERGED_PEAK_RATIO}, DIVERGED_PEAK_RATIO)")
        elif curve is not None and ev["loss_drop"] < STALL_MAX_DROP:
            found.add(STALLED)
            lines.append(f"it fell less than {STALL_MAX_DROP:.0%} (STALL_MAX_DROP) over the whole run")

    # Oscillation, on the trend curve.
    if curve is None:
        lines.append(curve_name)
    else:
        diffs = [(b - a) / a for a, b in zip(curve, curve[1:]) if a > 0]
        rises = [d for d in diffs if d > 0]
        ev["rise_share"] = len(rises) / len(diffs) if diffs else 0.0
        ev["mean_rise"] = sum(rises) / len(rises) if rises else 0.0
        lines.append(f"{curve_name}: rose at {len(rises)} of {len(diffs)} points ({ev['rise_share']:.0%}), "
                     f"by {ev['mean_rise']:.1%} of its level on average (oscillating from "
                     f"{OSCILLATION_RISE_SHARE:.0%} of points and {OSCILLATION_MIN_RISE:.0%})")
        if ev["rise_share"] >= OSCILLATION_RISE_SHARE and ev["mean_rise"] >= OSCILLATION_MIN_RISE:
            found.add(OSCILLATING)
        if len(train_losses) >= MIN_TREND_POINTS:
            ev["recent_drop"] = (train_losses[-3] - train_losses[-1]) / train_losses[-3]
            if ev["recent_drop"] > STILL_FALLING:
                lines.append(f"still learning: the training loss fell {ev['recent_drop']:.1%} over the last 3 "
                             f"epochs")

    # Validation loss rising while the training loss falls.
    val = [(i, r["val_loss"]) for i, r in enumerate(rows) if _finite(r.get("val_loss"))]
    if len(val) >= MIN_TREND_POINTS:
        i_min, v_min = min(val, key=lambda p: p[1])
        after = [v for i, v in val if i > i_min]
        ev.update(val_loss_min=v_min, val_loss_min_epoch=rows[i_min]["epoch"], val_loss_end=val[-1][1])
        if after and v_min > 0:
            ev["val_loss_rise"] = sum(after[-3:]) / len(after[-3:]) / v_min - 1
            t_then, t_now = rows[i_min].get("train_loss"), rows[-1].get("train_loss")
            train_fell = _finite(t_then) and _finite(t_now) and t_now < t_then
            lines.append(f"validation loss: lowest {v_min:.4f} at epoch {ev['val_loss_min_epoch']}, "
                         f"{len(after)} epochs before the end; the last {len(after[-3:])} average "
                         f"{ev['val_loss_rise']:+.1%} from it (rising from {VAL_RISE:.0%}, VAL_RISE)"
                         + (f"; training loss {t_then:.4f} -> {t_now:.4f} meanwhile" if train_fell else ""))
            if ev["val_loss_rise"] >= VAL_RISE and len(after) >= VAL_RISE_MIN_EPOCHS and train_fell:
                found.add(VAL_RISING)

    # Over- or underfitting, from the accuracies at the last epoch that has them.
    key = next((k for k in ("train_clean_acc", "train_acc") if any(_finite(r.get(k)) for r in rows)), None)
    ev["train_acc_key"] = key
    last = next((r for r in reversed(rows) if _finite(r.get(key)) and _finite(r.get("val_acc"))), None) if key else None
    if last is None:
        lines.append("no training and validation accuracy in the same epoch: over/underfitting not judged")
    else:
        train_acc, val_acc = last[key], last["val_acc"]
        gap = train_acc - val_acc
        ev.update(train_acc=train_acc, val_acc=val_acc, gap=gap, acc_epoch=last["epoch"])
        source = ("train_clean_acc: a fixed clean training subset evaluated like validation" if key == "train_clean_acc"
                  else "train_acc: running accuracy on augmented batches, with dropout on")
        lines.append(f"accuracy at epoch {last['epoch']}: train {train_acc:.4f} ({source}) vs val {val_acc:.4f}: "
                     f"gap {gap:+.4f} (severe from {SEVERE_GAP}, mild from {MILD_GAP}; underfit below train "
                     f"{UNDERFIT_TRAIN_ACC} without a gap)")
        if gap >= SEVERE_GAP:
            found.add(SEVERE)
        elif gap >= MILD_GAP:
            found.add(MILD)
        elif train_acc < UNDERFIT_TRAIN_ACC:
            found.add(UNDERFITTING)
    best = max((r for r in rows if _finite(r.get("val_acc"))), key=lambda r: r["val_acc"], default=None)
    if best is not None:
        ev.update(best_val_acc=best["val_acc"], best_epoch=best["epoch"])
        lines.append(f"best validation accuracy {best['val_acc']:.4f} at epoch {best['epoch']} of {len(rows)}")
    norm = rows[-1].get("grad_norm_mean")
    if _finite(norm) and not GRAD_NORM_RANGE[0] <= norm <= GRAD_NORM_RANGE[1]:
        lines.append(f"gradient norm {norm:.3g} at the last epoch lies outside the checklist's "
                     f"{GRAD_NORM_RANGE[0]}-{GRAD_NORM_RANGE[1]}")

    findings = [v for v in VERDICTS if v in found] or [HEALTHY]
    verdict = findings[0]
    advice, notes = _advice(verdict, c, ev)
    return Diagnosis(verdict, VERDICTS[verdict], ev, lines, advice, findings, notes)


# --- advice, one change per item, computed from the run's own config

def _up(value: float, ladder: tuple) -> float | None:
    return next((v for v in ladder if v > value * (1 + 1e-9)), None)


def _down(value: float, ladder: tuple) -> float | None:
    return next((v for v in reversed(ladder) if v < value * (1 - 1e-9)), None)


def _resize(m: dict, embed: int | None = None, layers: int | None = None) -> str:
    """Flags for a model of another width (MLP ratio kept, heads kept when they divide) or depth."""
    flags = []
    if embed is not None:
        ffn = round(embed * m["dim_feedforward"] / m["embed_dim"])
        flags += [f"--model.embed-dim {embed}", f"--model.dim-feedforward {ffn}"]
        if embed % m["num_heads"]:
            flags.append(f"--model.num-heads {next(h for h in (8, 4, 2, 1) if embed % h == 0)}")
    if layers is not None:
        flags.append(f"--model.num-layers {layers}")
    return " ".join(flags)


def _advice(verdict: str, c: dict, ev: dict) -> tuple[list[Advice], list[str]]:
    m, d, o = c["model"], c["data"], c["optim"]
    out: list[Advice] = []
    notes: list[str] = []

    def lr_down(new: float, why: str):
        out.append(Advice(f"{why}: lr {fmt(o['lr'])} -> {fmt(new)}", f"--optim.lr {fmt(new)}"))

    def stabilise():
        if o["max_grad_norm"] == 0 or o["max_grad_norm"] > CLIP_NORM:
            out.append(Advice(f"clip gradients at {CLIP_NORM}", f"--optim.max-grad-norm {CLIP_NORM}"))
        else:
            notes.append(f"gradients are already clipped at {fmt(o['max_grad_norm'])}")
        if o["warmup_epochs"] < WARMUP_EPOCHS:
            out.append(Advice(f"a longer warmup: {fmt(o['warmup_epochs'])} -> {fmt(WARMUP_EPOCHS)} epochs",
                              f"--optim.warmup-epochs {fmt(WARMUP_EPOCHS)}"))
        if c["precision"] == "fp16":
            out.append(Advice("bf16 instead of fp16 (fp16 overflows more easily)", "--precision bf16"))

    def less_regularization():
        if (new := _down(m["dropout"], DROPOUT_DOWN)) is not None:
            out.append(Advice(f"less dropout: {fmt(m['dropout'])} -> {fmt(new)}", f"--model.dropout {fmt(new)}"))
        if (new := _down(o["weight_decay"], WEIGHT_DECAY_DOWN)) is not None:
            out.append(Advice(f"less weight decay: {fmt(o['weight_decay'])} -> {fmt(new)}",
                              f"--optim.weight-decay {fmt(new)}"))
        if d["mixup_alpha"] > 0 or d["cutmix_alpha"] > 0:
            out.append(Advice("no Mixup/CutMix", "--data.mixup-alpha 0 --data.cutmix-alpha 0"))
        if m["drop_path_rate"] > 0:
            out.append(Advice(f"no stochastic depth ({fmt(m['drop_path_rate'])} -> 0)", "--model.drop-path-rate 0"))

    def against_overfitting():
        if (new := _up(m["dropout"], DROPOUT_UP)) is not None:
            out.append(Advice(f"more dropout: {fmt(m['dropout'])} -> {fmt(new)}", f"--model.dropout {fmt(new)}"))
        else:
            notes.append(f"dropout is already {fmt(m['dropout'])} (the checklist goes to {DROPOUT_UP[-1]})")
        if (new := _up(o["weight_decay"], WEIGHT_DECAY_UP)) is not None:
            out.append(Advice(f"more weight decay: {fmt(o['weight_decay'])} -> {fmt(new)}",
                              f"--optim.weight-decay {fmt(new)}"))
        else:
            notes.append(f"weight decay is already {fmt(o['weight_decay'])} (the checklist goes to "
                         f"{fmt(WEIGHT_DECAY_UP[-1])})")
        if not d["augment"]:
            out.append(Advice("augmentation on (RandomCrop + flip): a ViT needs it", "--data.augment"))
        if not d["color_jitter"]:
            out.append(Advice("stronger augmentation: ColorJitter(0.2, 0.2, 0.2, 0.1)", "--data.color-jitter"))
        else:
            notes.append("ColorJitter is already on")
        if d["mixup_alpha"] == 0 and d["cutmix_alpha"] == 0:
            out.append(Advice("stronger still: Mixup/CutMix (diagnose then reads the clean train accuracy)",
                              MIXING_FLAGS))
        else:
            notes.append("Mixup/CutMix is already on")
        if (new := _down(m["embed_dim"], MODEL_WIDTHS)) is not None:
            out.append(Advice(f"a narrower model: embed_dim {m['embed_dim']} -> {new}", _resize(m, embed=new)))
        if (new := _down(m["num_layers"], MODEL_DEPTHS)) is not None:
            out.append(Advice(f"a shallower model: num_layers {m['num_layers']} -> {new}", _resize(m, layers=new)))
        if m["embed_dim"] <= MODEL_WIDTHS[0] and m["num_layers"] <= MODEL_DEPTHS[0]:
            notes.append(f"the model ({m['embed_dim']} wide, {m['num_layers']} layers) is already the checklist's "
                         f"smallest")
        if c["label_smoothing"] == 0:
            out.append(Advice(f"label smoothing {LABEL_SMOOTHING}", f"--label-smoothing {LABEL_SMOOTHING}"))
        if m["drop_path_rate"] == 0:
            out.append(Advice(f"stochastic depth {DROP_PATH_RATE} (optional)",
                              f"--model.drop-path-rate {DROP_PATH_RATE}"))

    def tricks():
        if c["label_smoothing"] == 0:
            out.append(Advice(f"label smoothing {LABEL_SMOOTHING} (step 3)", f"--label-smoothing {LABEL_SMOOTHING}"))
        if o["max_grad_norm"] == 0:
            out.append(Advice(f"gradient clipping at {CLIP_NORM} (step 3)", f"--optim.max-grad-norm {CLIP_NORM}"))
        if c["early_stop_patience"] == 0:
            out.append(Advice(f"early stopping, patience {EARLY_STOP_PATIENCE} (step 3)",
                              f"--early-stop-patience {EARLY_STOP_PATIENCE}"))

    still_learning = ev.get("recent_drop", 0) > STILL_FALLING
    longer = Advice(f"train longer: {c['epochs']} -> {2 * c['epochs']} epochs"
                    + (" (the loss was still falling)" if still_learning else ""), f"--epochs {2 * c['epochs']}")

    if verdict == DIVERGED:
        lr_down(o["lr"] / LR_DIVERGED_FACTOR, "a 10x lower learning rate")
        stabilise()
        notes.append("also check the inputs are normalized (--data.mean / --data.std)")
    elif verdict == OSCILLATING:
        lr_down(_down(o["lr"], LR_LADDER) or o["lr"] / 2, "a lower learning rate (one step of the sweep)")
        stabilise()
    elif verdict == STALLED:
        out.append(Advice("first, the overfit test (or `vitdist check`): a model that cannot memorise 32 samples "
                          "has a bug", "--preset overfit"))
        if (new := _up(o["lr"], LR_LADDER)) is not None:
            out.append(Advice(f"a larger learning rate: {fmt(o['lr'])} -> {fmt(new)}", f"--optim.lr {fmt(new)}"))
        else:
            notes.append(f"the learning rate {fmt(o['lr'])} is already at the sweep's top")
        if o["warmup_epochs"] >= ev["epochs"] / 2:
            new = max(1.0, ev["epochs"] / 10)
            out.append(Advice(f"a shorter warmup: {fmt(o['warmup_epochs'])} of {ev['epochs']} epochs never "
                              f"reached full rate for long", f"--optim.warmup-epochs {fmt(new)}"))
        less_regularization()
    elif verdict in (SEVERE, VAL_RISING):
        against_overfitting()
        if c["early_stop_patience"] == 0:
            out.append(Advice(f"early stopping (patience {EARLY_STOP_PATIENCE}): keeps the best epoch",
                              f"--early-stop-patience {EARLY_STOP_PATIENCE}"))
    elif verdict == UNDERFITTING:
        if (new := _up(m["embed_dim"], MODEL_WIDTHS)) is not None:
            out.append(Advice(f"a wider model: embed_dim {m['embed_dim']} -> {new}", _resize(m, embed=new)))
        if (new := _up(m["num_layers"], MODEL_DEPTHS)) is not None:
            out.append(Advice(f"a deeper model: num_layers {m['num_layers']} -> {new}", _resize(m, layers=new)))
        less_regularization()
        out.append(longer)
    elif verdict == MILD:
        against_overfitting()
        if out:
            out[:] = [Advice(f"optional, for a smaller gap: {out[0].why}", out[0].flags)]
        notes.clear()
        tricks()
    else:  # healthy
        if ev.get("best_epoch") == ev["epochs"] and still_learning:
            out.append(longer)
        tricks()
    return out, notes


# --- the command

@dataclass
class DiagnoseArgs:
    run_dir: tyro.conf.Positional[str]
    """A run folder written by `vitdist train` (it holds metrics.jsonl)."""
    json: bool = False
    """Print the diagnosis as one JSON object instead of text."""
    plot: bool = True
    """Write RUN_DIR/diagnose.png: the run's curves, titled with the verdict."""


def report(run: Run, d: Diagnosis, png: Path | None) -> str:
    out = [f"run: {run.dir} ({len(run.rows)} epochs)", f"verdict: {d.verdict}: {d.meaning}", "evidence:"]
    out += [f"  - {line}" for line in d.lines]
    if len(d.findings) > 1:
        out.append(f"also seen: {', '.join(d.findings[1:])}")
    if d.advice:
        out.append("try next, one change at a time, in this order:")
        for i, a in enumerate(d.advice, 1):
            out += [f"  {i}. {a.why}", f"       {a.flags}"]
    else:
        out.append("nothing to change.")
    if d.notes:
        out.append("notes: " + "; ".join(d.notes))
    if png is not None:
        out.append(f"plot: {png}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from .cli import exit_on_user_error

    with exit_on_user_error():
        args = tyro.cli(DiagnoseArgs, args=argv, prog="vitdist diagnose",
                        description="Read a run's metrics.jsonl: a verdict (over/underfitting, divergence, ...), "
                                    "the numbers behind it, and the override flags to try next.")
        run = read_run(args.run_dir)
        d = diagnose(run.rows, run.config, run.steps, run.results)
        png = None
        if args.plot and run.rows:  # no epoch, no curve
            from .plots import plot_runs

            try:
                png = plot_runs([run], run.dir / "diagnose.png", title=f"{run.name}: {d.verdict}")
            except OSError as e:
                print(f"vitdist: could not write diagnose.png: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"run_dir": str(run.dir), **d.to_dict(), "plot": str(png) if png else None}, indent=2))
        else:
            print(report(run, d, png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
