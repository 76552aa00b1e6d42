"""matplotlib figures of runs and sweeps, drawn off-screen (Agg) so they work on servers.

    vitdist plot RUN_DIR [RUN_DIR ...] [--out PATH]

`plot_runs` draws one or more runs' curves per epoch in a 2x2 PNG (`diagnose` titles it with its verdict);
`plot_sweep` overlays a sweep's loss curves with each one's verdict in the legend (`vitdist sweep` calls it).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib
import tyro
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..config import GRAD_NORM_RANGE, UserError
from ..train.record import Run, read_run
from ..train.scores import DPI


matplotlib.use("Agg")  # before pyplot is ever imported: no display needed, and none is opened
COLORS = [f"C{i}" for i in range(10)]  # matplotlib's tab10 cycle: one color per run
STYLES = {"train": "-", "train clean": ":", "val": "--"}  # one line style per split, the same on every panel
LOG_SCALE_RATIO = 10.0  # a panel turns log-scale when its largest value is this many times its smallest


def _column(rows: list[dict], key: str) -> list[float]:
    """One metric per epoch; missing (e.g. train_acc under Mixup) and non-finite values become gaps (NaN)."""
    out = []
    for r in rows:
        v = r.get(key)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        out.append(float(v) if ok else math.nan)
    return out


def _maybe_log(ax, values: list[float], plain_ticks: bool = True) -> None:
    positive = [v for v in values if v > 0]  # NaN compares False: dropped
    if positive and max(positive) / min(positive) > LOG_SCALE_RATIO:
        ax.set_yscale("log")
        if plain_ticks:  # 0.5, 2, 6 rather than 5x10^-1, 2x10^0, 6x10^0
            short = max(positive) / min(positive) < 2 * LOG_SCALE_RATIO  # few decades: label every minor tick
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(
                lambda v, _: f"{v:g}" if short or round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))


def _run_labels(runs: list[Run]) -> list[str]:
    """Folder names; parent/name where two runs share a name."""
    names = [r.name for r in runs]
    return [f"{r.dir.resolve().parent.name}/{n}" if names.count(n) > 1 else n for r, n in zip(runs, names)]


def _style_legend(ax, entries, extra=()) -> None:
    """A legend of line styles (what each split is), in gray: the colors belong to the runs."""
    ax.legend(handles=[Line2D([], [], color="0.3", linestyle=style, label=name) for name, style in entries]
              + list(extra), loc="best", fontsize=8)


def plot_runs(runs: list[Run], out: str | Path, title: str | None = None) -> Path:
    """Loss, accuracy, learning rate and gradient norm per epoch of each run, overlaid, in one 2x2 PNG."""
    if not runs:
        raise ValueError("plot_runs needs at least one run")
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    (ax_loss, ax_acc), (ax_lr, ax_gn) = fig.subplots(2, 2)
    seen = {"loss": [], "lr": [], "gn": []}
    for run, color in zip(runs, COLORS * (len(runs) // len(COLORS) + 1)):
        epochs = [r["epoch"] for r in run.rows]
        marker = "o" if len(epochs) <= 30 else None  # dots while each epoch can still be told apart
        kw = dict(color=color, marker=marker, markersize=3)
        for key, split in (("train_loss", "train"), ("train_clean_loss", "train clean"), ("val_loss", "val")):
            ax_loss.plot(epochs, col := _column(run.rows, key), STYLES[split], **kw)
            seen["loss"] += col
        for key, split in (("train_acc", "train"), ("train_clean_acc", "train clean"), ("val_acc", "val")):
            ax_acc.plot(epochs, _column(run.rows, key), STYLES[split], **kw)
        ax_lr.plot(epochs, col := _column(run.rows, "lr"), "-", **kw)
        seen["lr"] += col
        ax_gn.plot(epochs, mean := _column(run.rows, "grad_norm_mean"), "-", **kw)
        ax_gn.plot(epochs, peak := _column(run.rows, "grad_norm_max"), ":", **kw)
        seen["gn"] += mean + peak
        clip = ((run.config or {}).get("optim") or {}).get("max_grad_norm")
        if isinstance(clip, (int, float)) and clip > 0:
            ax_gn.axhline(clip, color=color, linestyle="-.", linewidth=0.9, alpha=0.7)
    _maybe_log(ax_loss, seen["loss"])
    _maybe_log(ax_lr, seen["lr"], plain_ticks=False)
    _maybe_log(ax_gn, seen["gn"])
    ylim = ax_gn.get_ylim()  # the shaded range must not stretch the axis away from the data
    ax_gn.axhspan(*GRAD_NORM_RANGE, color="tab:green", alpha=0.07)
    ax_gn.set_ylim(ylim)

    _style_legend(ax_loss, STYLES.items())
    _style_legend(ax_acc, STYLES.items())
    _style_legend(ax_gn, [("mean", "-"), ("max", ":")],
                  [Line2D([], [], color="0.3", linestyle="-.", label="clip (max_grad_norm)"),
                   Patch(color="tab:green", alpha=0.2,
                         label=f"checklist range {GRAD_NORM_RANGE[0]:g}-{GRAD_NORM_RANGE[1]:g}")])
    for ax, name in ((ax_loss, "loss (train: objective with smoothing/mixing; val: plain CE)"),
                     (ax_acc, "accuracy"), (ax_lr, "learning rate (end of epoch)"),
                     (ax_gn, "gradient norm (pre-clip)")):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    ax_acc.set_ylim(-0.02, 1.02)
    if len(runs) > 1:
        fig.legend(handles=[Line2D([], [], color=c, linewidth=2.5, label=n)
                            for n, c in zip(_run_labels(runs), COLORS * len(runs))],
                   loc="outside lower center", ncols=min(len(runs), 5), fontsize=9)
    fig.suptitle(title or (_run_labels(runs)[0] if len(runs) == 1 else f"{len(runs)} runs"), fontsize=12)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def _ema(values: list[float], span: int) -> list[float]:
    alpha, out, acc = 2.0 / (span + 1), [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def plot_sweep(curves: dict[str, list[tuple[int, float]]], verdicts: dict[str, str], path: str | Path) -> Path:
    """Every curve's (step, loss) overlaid on a log axis, with its verdict in the legend; an x where one ended
    non-finite. Thin: the raw loss; thick: its moving average."""
    fig = Figure(figsize=(9.5, 5.8), layout="constrained")
    ax = fig.subplots()
    for (label, points), color in zip(curves.items(), COLORS * (len(curves) // len(COLORS) + 1)):
        good = [(s, v) for s, v in points if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
        name = f"{label}: {verdicts[label]}" if label in verdicts else label
        if not good:
            ax.plot([], [], color=color, linewidth=2, label=f"{name} (no finite loss)")
            continue
        steps, losses = zip(*good)
        if len(good) > 1:
            ax.plot(steps, losses, color=color, linewidth=0.7, alpha=0.25)
        ax.plot(steps, _ema(list(losses), max(1, len(good) // 25)), color=color, linewidth=1.8, label=name,
                marker="o" if len(good) == 1 else None)
        if len(good) < len(points):  # it ended on NaN/inf (or non-positive): mark where
            ax.plot(steps[-1], losses[-1], "x", color=color, markersize=10, markeredgewidth=2.5)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log)")
    ax.set_title("training loss per step (thick: moving average, thin: raw; x: ended in NaN/inf)", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_range(report: dict, path: str | Path, stop_factor: float) -> Path:
    """The range test's loss against lr (log x), raw and smoothed, with the suggestion marked; the y axis stops
    at stop_factor x the smoothed minimum, where the test stopped."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(report["lrs"], report["losses"], color="0.75", lw=1, label="loss per step")
    if report.get("smoothed"):
        ax.plot(report["lrs"][:len(report["smoothed"])], report["smoothed"], color="C0", lw=2,
                label="smoothed (centred mean)")
        low = min(report["smoothed"])
        ax.set_ylim(low * 0.9, min(max(report["smoothed"]), stop_factor * low) * 1.1)
    for key, color, name in (("suggested_lr", "C2", "suggested"), ("min_loss_lr", "C3", "min loss")):
        if report.get(key):
            ax.axvline(report[key], color=color, ls="--", label=f"{name} {report[key]:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {report['steps_run']} steps; {report['stopped']}", fontsize=9)
    ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_best_so_far(accs: list[Optional[float]], names: list[str], out: str | Path, title: str) -> Path:
    """Each trial's best validation accuracy (a dot; a cross at the bottom for a diverged trial) and the best so
    far (a step line), against the trial number."""
    fig = Figure(figsize=(max(6.0, 0.45 * len(accs) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    xs = list(range(len(accs)))
    best, running = [], -math.inf
    for a in accs:
        running = max(running, a) if a is not None else running
        best.append(running if math.isfinite(running) else None)
    ax.step(xs, [b if b is not None else math.nan for b in best], where="post", color="C0", lw=2,
            label="best so far")
    ok = [(x, a) for x, a in zip(xs, accs) if a is not None]
    ax.plot([x for x, _ in ok], [a for _, a in ok], "o", color="C1", label="trial")
    low = min((a for _, a in ok), default=0.0)
    bad = [x for x, a in zip(xs, accs) if a is None]
    if bad:
        ax.plot(bad, [low] * len(bad), "x", color="C3", markersize=9, label="diverged")
    ax.set_xticks(xs, names, rotation=60, fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def run_folders(paths: tuple[str, ...]) -> list[str]:
    """Run folders as given, a folder of runs (a tune or sweep folder: no metrics.jsonl of its own) opened into its
    runs, in name order (a tune's trials on several seeds one level deeper: trial_003/seed_1)."""
    out = []
    for p in paths:
        folder = Path(p)
        inner = sorted(d for pattern in ("*/", "*/seed_*/") for d in folder.glob(pattern)
                       if (d / "metrics.jsonl").is_file()) if folder.is_dir() else []
        out += [str(d) for d in inner] if inner and not (folder / "metrics.jsonl").is_file() else [p]
    return out


@dataclass
class PlotArgs:
    run_dirs: tyro.conf.Positional[tuple[str, ...]]
    """One or more run folders written by `vitdist train`, overlaid, one color each; a folder of runs (`vitdist
    tune`'s or `sweep`'s) stands for the runs in it."""
    out: Optional[str] = None
    """The PNG to write; default: curves.png in the first RUN_DIR."""


def main(argv: list[str] | None = None) -> int:
    from ..console import exit_on_user_error

    with exit_on_user_error():
        args = tyro.cli(PlotArgs, args=argv, prog="vitdist plot",
                        description="Loss, accuracy, learning rate and gradient norm per epoch of one or more "
                                    "runs, overlaid, in one PNG.")
        if not args.run_dirs:
            raise UserError("vitdist plot needs at least one RUN_DIR (a folder written by `vitdist train`)")
        if args.out is not None and Path(args.out).suffix.lower() != ".png":
            raise UserError(f"--out {args.out} must end in .png")
        runs = [read_run(d) for d in run_folders(args.run_dirs)]
        default = Path(args.run_dirs[0]) / "curves.png"  # a tune folder's picture goes in the tune folder
        out = plot_runs(runs, args.out or default)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
