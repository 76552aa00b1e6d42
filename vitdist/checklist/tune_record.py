"""What a tune writes besides tune.json: tune.md (the decisions and trials as tables), tune.png (the best
validation accuracy so far, trial by trial) and, with --log.wandb, the decisions as a W&B table."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig


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
                  f"hold-out): tuned {c['best']['mean']:.4f} ± {c['best']['std']:.4f} against the template's "
                  f"{c['template']['mean']:.4f} ± {c['template']['std']:.4f}: **{c['gain']:+.4f}**. Per seed "
                  f"({', '.join(map(str, c['seeds']))}): tuned {', '.join(f'{a:.4f}' for a in c['best']['accs'])}; "
                  f"template {', '.join(f'{a:.4f}' for a in c['template']['accs'])}.", ""]
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
    lines += ["", "## Trials", "", "| trial | change | flags | best val acc (each seed's) | minutes |",
              "|---|---|---|---|---|"]
    for tr in record["trials"]:
        acc = f"{tr['best_val_acc']:.4f}" if tr["best_val_acc"] is not None else f"error: {tr['error']}"
        if len(tr.get("accs") or []) > 1:  # each seed's, in the order of tr["seeds"]
            acc += " (" + ", ".join("-" if a is None else f"{a:.4f}" for a in tr["accs"]) + ")"
        lines.append(f"| {tr['name']} | {tr['what']} | `{tr['flags']}` | {acc} | {tr['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def plot_tune(record: dict, out: Path) -> Path:
    """Best validation accuracy so far against the trial number, each trial's own as a dot."""
    from .plots import plot_best_so_far

    trials = [t for t in record["trials"] if not t["name"].startswith("confirm_")]  # the search, not its check
    accs = [t["best_val_acc"] for t in trials]
    return plot_best_so_far(accs, [t["name"] for t in trials], out,
                            f"vitdist tune: best validation accuracy so far ({len(accs)} trials)")
