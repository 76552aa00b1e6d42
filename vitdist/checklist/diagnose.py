"""`vitdist diagnose RUN_DIR`: a run's verdict, the numbers behind it, and the flags to try next.

The verdicts and their thresholds are the checklist's (verdicts.py), and so is the advice (advice.py).
`diagnose()` is a pure function of the logged rows, so it is tested on synthetic curves for every verdict and on a
recorded run; `main()` reads the run folder, prints, and draws diagnose.png next to the metrics.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tyro

from ..config import DATASET_CLASSES, GRAD_NORM_RANGE, TrainConfig, to_dict
from ..train.record import Run, read_run
from .advice import Advice, advice, fmt
from .verdicts import (DIVERGED, DIVERGED_LOSS_RATIO, DIVERGED_PEAK_RATIO, HEALTHY, MILD, MILD_GAP,
                       MIN_STEPS_PER_WINDOW, MIN_TREND_POINTS, OSCILLATING, OSCILLATION_MIN_RISE,
                       OSCILLATION_RISE_SHARE, SEVERE, SEVERE_GAP, STALL_MAX_DROP, STALLED, STEP_WINDOWS,
                       STILL_FALLING, UNDERFIT_TRAIN_ACC, UNDERFITTING, VAL_RISE, VAL_RISE_MIN_EPOCHS, VAL_RISING,
                       VERDICTS, _finite, _num)

__all__ = ["Advice", "Diagnosis", "diagnose", "fmt", "main", "DIVERGED", "OSCILLATING", "STALLED", "SEVERE",
           "VAL_RISING", "UNDERFITTING", "MILD", "HEALTHY", "VERDICTS"]


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
        tries, notes = advice(DIVERGED, c, ev)
        return Diagnosis(DIVERGED, VERDICTS[DIVERGED], ev, [f"it diverged in its first epoch: {bad}"], tries,
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
    train_losses, curve, curve_name = _loss(rows, steps, c, config, ev, lines, found)
    _oscillation(train_losses, curve, curve_name, ev, lines, found)
    _val_loss(rows, ev, lines, found)
    _fit(rows, ev, lines, found)
    findings = [v for v in VERDICTS if v in found] or [HEALTHY]
    verdict = findings[0]
    tries, notes = advice(verdict, c, ev)
    return Diagnosis(verdict, VERDICTS[verdict], ev, lines, tries, findings, notes)


# Each judge below reads its numbers into `ev` (evidence), says them in `lines`, and adds what held to `found`.

def _loss(rows: list[dict], steps: list[dict], c: dict, config: dict | None, ev: dict, lines: list[str],
          found: set[str]) -> tuple[list[float], list[float] | None, str]:
    """Divergence (NaN/inf anywhere, the loss ending above its start or blowing up) and a stalled loss. Returns the
    finite per-epoch training losses and the trend curve with its name."""
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
    return train_losses, curve, curve_name


def _oscillation(train_losses: list[float], curve: list[float] | None, curve_name: str, ev: dict,
                 lines: list[str], found: set[str]) -> None:
    """An oscillating loss, on the trend curve; and whether it is still falling."""
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


def _val_loss(rows: list[dict], ev: dict, lines: list[str], found: set[str]) -> None:
    """Validation loss rising while the training loss falls."""
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


def _fit(rows: list[dict], ev: dict, lines: list[str], found: set[str]) -> None:
    """Over- or underfitting, from the accuracies at the last epoch that has them; the best epoch; the gradient
    norm against the checklist's range."""
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
    from ..console import exit_on_user_error

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
