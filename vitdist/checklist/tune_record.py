"""What a tune records: each Arm it trains (one config, on each of its seeds) as a Trial (each seed's best
validation accuracy, their mean, how it ended) in tune.json; tune.md (the decisions and trials as tables);
tune.png (the best validation accuracy so far, trial by trial); tune-isolation.png (the playbook's isolation plot:
each scientific change against the best so far, both at their own tuned rate, seed by seed); and, with
--log.wandb, the decisions as a W&B table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import TrainConfig


@dataclass
class Trial:
    name: str
    what: str  # the change, in words
    flags: str  # the change, as flags on top of the parent config ("" for the template)
    config: dict
    run_dir: str
    best_val_acc: Optional[float] = None
    num_val: int = 0
    seconds: float = 0.0
    error: Optional[str] = None
    seeds: list = field(default_factory=list)  # the seeds it trained on, paired with every other arm's
    accs: list = field(default_factory=list)  # each seed's best validation accuracy (best_val_acc: their mean)
    pruned: Optional[dict] = None  # a nuisance point stopped early: its epoch and accuracy there
    last_val_acc: Optional[float] = None  # the last epoch's, reported to the study (a pruned one's best guess)
    nuisance: dict = field(default_factory=dict)  # the rate, weight decay and warmup it trained with
    kind: str = "arm"  # "arm" (judged on every seed), "nuisance" (a point of a rate search), "final", "confirm"


@dataclass
class Arm:
    """One config to train on each of its seeds (the tune's, or those given), as a trial."""
    name: str
    what: str
    flags: str
    cfg: TrainConfig
    seeds: Optional[list] = None
    prunable: bool = False  # a nuisance search's point: the pruner may stop it
    space: Optional[dict] = None  # the nuisance search's space, {param: (low, high, log)}: Optuna's parameters
    group: Optional[str] = None  # the search it is a point of: the pruner compares it with that search's only
    kind: str = "arm"



def log_decisions(record: dict, template: TrainConfig) -> None:
    """The decisions as a W&B table, in a run of their own in the trials' group (offline: in the tune folder)."""
    import wandb

    columns = ["step", "change", "result", "why", "trial", "val_acc", "best_val_acc", "noise"]
    table = wandb.Table(columns=columns, data=[[d["step"], d["what"], d["result"], d["why"], d.get("trial"),
                                                d.get("val_acc"), d.get("best_val_acc"), d.get("noise")]
                                               for d in record["decisions"]])
    folder = Path(record["tune_dir"])
    run = wandb.init(project=template.log.wandb_project, group=template.log.wandb_group,
                     name=f"{folder.name}-decisions", job_type="tune", dir=str(folder),
                     config={"summary": record.get("summary")})
    run.log({"tune/decisions": table})
    run.finish()
    if wandb.run is None:  # finish() returns before the files are closed (train.close_trackers): wait for them
        wandb.teardown()


def tune_markdown(record: dict) -> str:
    lines = ["# vitdist tune", ""]
    s = record.get("summary")
    c = (s or {}).get("confirmed")
    if c and c.get("gain") is not None:  # the headline: fresh seeds, not the tune's own best
        lines += [f"**Confirmed on {len(c['seeds'])} fresh seeds** (never used during the tune; each redraws the "
                  f"hold-out): tuned {c['best']['mean']:.4f} ± {c['best']['std']:.4f} against the template as "
                  f"given, {c['template']['mean']:.4f} ± {c['template']['std']:.4f}: **{c['gain']:+.4f}**. Per seed "
                  f"({', '.join(map(str, c['seeds']))}): tuned {', '.join(f'{a:.4f}' for a in c['best']['accs'])}; "
                  f"template as given {', '.join(f'{a:.4f}' for a in c['template']['accs'])}.", ""]
    if s:
        test = f"{s['test']['accuracy']:.4f}" if s.get("test") else "no test split"
        lines += [f"Best: **{s['best_trial']}**, validation accuracy {s['best_val_acc']:.4f} against the template's "
                  f"{s['template_val_acc']:.4f} ({s['gain']:+.4f}). Test accuracy of the final run, scored once: "
                  f"{test}.", "", f"Flags over the template: `{s['best_flags'] or '(none)'}`", ""]
    lines += [f"A change is kept when it beats the best so far by more than {record['noise_z']:g} binomial standard "
              f"errors of the difference of two validation accuracies.", "", "## Decisions", "",
              "| # | step | change | result | why |", "|---|---|---|---|---|"]
    for i, d in enumerate(record["decisions"], 1):
        lines.append(f"| {i} | {d['step']} | {d['what']} | {d['result']} | {d['why']} |")
    lines += ["", "## Trials", "", "| trial | change | flags | lr, weight decay, warmup | best val acc (each seed's) "
                                   "| minutes |", "|---|---|---|---|---|---|"]
    for tr in record["trials"]:
        acc = (f"{tr['best_val_acc']:.4f}" if tr["best_val_acc"] is not None else
               f"pruned at epoch {tr['pruned']['epoch']} ({tr['pruned']['val_acc']:.4f})" if tr.get("pruned") else
               f"error: {tr['error']}")
        n = tr.get("nuisance") or {}
        nuisance = f"{n['lr']:.3g}, {n['weight_decay']:.3g}, {n['warmup_epochs']:.3g}" if n else ""
        if len(tr.get("accs") or []) > 1:  # each seed's, in the order of tr["seeds"]
            acc += " (" + ", ".join("-" if a is None else f"{a:.4f}" for a in tr["accs"]) + ")"
        lines.append(f"| {tr['name']} | {tr['what']} | `{tr['flags']}` | {nuisance} | {acc} | "
                     f"{tr['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def plot_tune(record: dict, out: Path) -> Path:
    """Best validation accuracy so far against the trial number, each trial's own as a dot."""
    from .plots import plot_best_so_far

    trials = [t for t in record["trials"] if t.get("kind", "arm") in ("arm", "final")]  # the arms, on every seed
    accs = [t["best_val_acc"] for t in trials]
    return plot_best_so_far(accs, [t["name"] for t in trials], out,
                            f"vitdist tune: best validation accuracy so far ({len(accs)} trials)")


def isolated_changes(record: dict) -> list[dict]:
    """The scientific changes judged (each follows its nuisance search, run or skipped): what, result, the rate
    each side had, and each side's per-seed accuracies."""
    out, searched = [], {}
    trials = {t["name"]: t for t in record["trials"]}
    for d in record["decisions"]:
        if d["step"] == "nuisance":
            searched[d["what"]] = d
        elif d["what"] in searched and d.get("trial") in trials:
            change, best = trials[d["trial"]], trials.get(d.get("best_trial") or "")
            out.append({"what": d["what"], "result": d["result"], "tuned": "chosen" in searched[d["what"]],
                        "after": change["accs"], "after_lr": change["nuisance"]["lr"],
                        "before": d.get("best_val_accs") or [d.get("best_val_acc")],
                        "before_lr": best["nuisance"]["lr"] if best else None})
    return out


def plot_isolation(record: dict, out: Path) -> Optional[Path]:
    """The isolation plot: for each scientific change, the best so far and the change, each at its own tuned
    rate, one point per seed (lines join a seed's pair) and each side's mean; None when no change was scientific."""
    from matplotlib.figure import Figure

    changes = isolated_changes(record)
    if not changes:
        return None
    fig = Figure(figsize=(3.2 * len(changes) + 0.8, 4.2), layout="constrained")
    axes = fig.subplots(1, len(changes), squeeze=False)[0]
    for ax, c in zip(axes, changes):
        pairs = list(zip(c["before"], c["after"])) if len(c["before"]) == len(c["after"]) else []
        for a, b in pairs:
            if a is not None and b is not None:
                ax.plot([0, 1], [a, b], "-", color="0.75", lw=1)
        for x, accs in ((0, c["before"]), (1, c["after"])):
            ok = [a for a in accs if a is not None]
            ax.plot([x] * len(ok), ok, "o", color="C0", alpha=0.8)
            if ok:
                ax.plot([x - 0.15, x + 0.15], [sum(ok) / len(ok)] * 2, "-", color="C3", lw=2.5)
        ax.set_xticks([0, 1], [f"best so far\nlr {c['before_lr']:.3g}" if c["before_lr"] else "best so far",
                               f"the change\nlr {c['after_lr']:.3g}" + ("" if c["tuned"] else " (not re-tuned)")],
                      fontsize=8)
        ax.set_xlim(-0.5, 1.5)
        ax.set_title(f"{c['what'][:40]}: {c['result']}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("best validation accuracy (each seed; red: mean)")
    out = Path(out)
    fig.savefig(out, dpi=110)
    return out
