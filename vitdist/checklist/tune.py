"""`vitdist tune`: the checklist's order of work, run by the tool under a budget, with every decision written down.

    vitdist tune --preset tiny --data.name imagefolder --data.root DIR --data.train-subset 10000 \\
        --epochs 10 --budget-trials 12 --budget-minutes 45

1. `check`: the shape, gradient and overfit checks; a FAIL stops the tune with the check's advice.
2. The learning-rate sweep (`sweep lr`'s short trials and verdicts); its recommended rate becomes the baseline's.
3. The template (the config as given) and the baseline (at the swept rate) train for --epochs each.
4. `diagnose` the best run so far and try its first advised change alone. A change is kept only when its best
   validation accuracy beats the best so far by more than the noise of the validation estimate (NOISE_Z binomial
   standard errors of the difference of two accuracies on the same validation split); otherwise it is reverted
   and the next advice is tried. Once the diagnosis is healthy (or only mild overfitting), the checklist's step-3
   tricks follow: label smoothing, warmup, Mixup/CutMix, stochastic depth, an EMA of the weights.
5. The best config trains for --final-epochs (by default the trial's own run is kept) and the test split is
   scored once, at the very end.

Every trial is an ordinary run folder under the tune folder; tune.json and tune.md record each decision, tune.png
draws the best validation accuracy so far against the trial number. `--resume auto` continues a killed tune: the
decisions are a function of the trials' results, so finished trials are read back, not rerun. Under `accelerate
launch`, all ranks run each trial together (rank 0 alone writes the records).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from ..config import TrainConfig, UserError
from .trials import is_main, say, sweep_folder, train_trial
from .tune_record import Arm, Trial
from .tuner import Tuner
from .worker import count_workers, dashboard, join_tune, joinable
from .tune_budget import agree, check_budget, template_fits
from .tune_record import log_decisions, plot_isolation, plot_tune, tune_markdown
from .nuisance import retune
from .tune_rule import confirm, fix_schedule, keep_or_revert, say_resolution

# Advice a fixed-length trial cannot take: a longer run (trials compare at the same epochs), the overfit check
# (step 1 ran it), a precision change (speed, not accuracy).
NOT_A_TRIAL = ("--epochs", "--preset", "--precision")
# The checklist's step-3 tricks, tried in this order once the diagnosis is healthy; each applies where the config
# does not have it yet.
TRICKS = (
    ("label smoothing 0.1 (step 3)", "--label-smoothing 0.1", lambda c: c.label_smoothing == 0),
    ("gradient clipping at 1.0 (step 3)", "--optim.max-grad-norm 1.0", lambda c: c.optim.max_grad_norm == 0),
    ("a warmup of a tenth of the run (step 3)", None, lambda c: c.optim.warmup_epochs == 0),
    ("Mixup/CutMix (the Lessons' optional trick)", "--data.mixup-alpha 0.8 --data.cutmix-alpha 1.0",
     lambda c: c.data.mixup_alpha == 0 and c.data.cutmix_alpha == 0),
    ("stochastic depth 0.1 (the Lessons' optional trick)", "--model.drop-path-rate 0.1",
     lambda c: c.model.drop_path_rate == 0),
    ("an EMA of the weights, decay 0.999", "--ema.decay 0.999", lambda c: c.ema.decay == 0),
)


@dataclass(frozen=True)
class TuneArgs:
    train: Annotated[TrainConfig, tyro.conf.arg(name="")]  # the template: a preset and the user's flags
    tune_dir: str = "runs/tune"
    """Folder for tune.json, tune.md, tune.png and one run folder per trial; --run-dir is not used."""
    budget_trials: int = 12
    """Training runs in all, the sweep's included (the final run is not counted): at least the sweep's rates and
    the template; a smaller budget is refused at start."""
    budget_minutes: float = 0.0
    """Stop starting trials when the next would likely end past this many minutes, counted from the start: the
    check and the sweep included (0: no time limit)."""
    lrs: tuple[float, ...] = (1e-2, 5e-3, 1e-3, 5e-4, 1e-4)
    """The sweep's rates (the checklist's step 1)."""
    sweep_epochs: int = 2
    """Epochs of each sweep trial: enough steps to read a loss curve."""
    seeds: int = 3
    """Seeds per arm: the template, the baseline and each change train on seeds --seed, --seed + 1, ... (each
    redrawing the validation hold-out where the data has no fixed split), and a change is judged on the paired
    differences, seed by seed: kept when their mean beats both their own spread and the binomial band."""
    confirm_seeds: int = 3
    """At the end, the template as given (without the tune's warmup fix) and the winner each train on this many
    fresh seeds, never used during the tune (each redrawing the hold-out): their mean and standard deviation are the
    tune's headline (0: skip)."""
    final_epochs: Optional[int] = None
    """Epochs of the final run of the best config; default --epochs: the best trial itself is the final run."""
    nuisance_trials: int = 4
    """Before a change to the scientific side (the model, the data and its augmentation) is judged, the rate is
    re-tuned for it by this many quasi-random points (Optuna's QMC sampler, one seed each, prunable; the first is
    the rate as it is): from 4 the weight decay too, from 8 the warmup. 0: judged at the best config's rate."""
    workers: int = 0
    """Trainings at once on this machine: this process and workers - 1 more (0: one per GPU, times
    --trials-per-gpu; on a CPU, 1). On a CPU the cores are split between them. Another machine joins with the
    same command and the same --storage."""
    trials_per_gpu: int = 1
    """With --workers 0 on GPUs: trainings packed on each GPU (small ViTs leave most of one idle)."""
    storage: Optional[str] = None
    """The Optuna study's storage: default a SQLite file in --tune-dir (study.db); a database URL
    (postgresql://user@host/db, mysql://...) or journal:PATH (a file on a shared filesystem) for workers on
    other machines."""
    study_name: Optional[str] = None
    """The study's name in --storage (default vitdist-NAME, NAME the tune folder's)."""
    pruner: Literal["successive-halving", "none"] = "successive-halving"
    """Stops a nuisance search's point far behind the search's other points at the same epoch (asynchronous
    successive halving: the first rung at a quarter of the trial, then 3 and 9 times that, each keeping the best
    third). An arm's seeds are never pruned."""
    heartbeat_seconds: float = 10.0
    """A worker beats this often while it trains; one silent for 3 beats is taken for dead and its training is
    run again by a live worker, from its last checkpoint."""
    join: bool = False
    """Only join the tune of this study as workers (another machine's, with the same --storage): wait for it to
    start, never start one. Without it, the same command joins a tune that is running and starts one otherwise."""
    dashboard: bool = False
    """Serve the study with optuna-dashboard while the tune runs (http://127.0.0.1:--dashboard-port)."""
    dashboard_port: int = 8080
    """The dashboard's port (on 127.0.0.1: reach it from elsewhere through an SSH tunnel)."""
    # --resume auto (train's own flag) continues the tune in --tune-dir: finished trials are read back, not rerun.


def apply_flags(cfg: TrainConfig, flags: str) -> TrainConfig:
    """cfg with flags parsed on top, exactly as `vitdist train` would parse them."""
    return tyro.cli(TrainConfig, default=cfg, args=shlex.split(flags)) if flags else cfg


def candidates(diagnosis, cfg: TrainConfig, tried: set[str]) -> list[tuple[str, str, str]]:
    """(step, what, flags) to try next, in order: the diagnosis's advice, then (healthy or mild) the tricks."""
    from .diagnose import HEALTHY, MILD

    out = [("diagnose: " + diagnosis.verdict, a.why, a.flags) for a in diagnosis.advice
           if not a.flags.startswith(NOT_A_TRIAL)]
    if diagnosis.verdict in (HEALTHY, MILD):
        for what, flags, applies in TRICKS:
            if applies(cfg):
                flags = flags or f"--optim.warmup-epochs {max(cfg.epochs / 10, 0.1):g}"
                out.append(("step 3 tricks", what, flags))
    return [c for c in out if c[2] not in tried]


# What a tune leaves in its folder: a new tune there refuses it (or deletes it with --overwrite).
TUNE_FILES = ["tune.json", "tune.md", "tune.png", "tune-isolation.png", "study.db", "workers", "trial_*", "confirm_*",
              "final", "sweep-lr", "wandb"]


def tune(args: TuneArgs) -> dict:
    """The tune, holding its folder (one tune per folder) from start to end; or, where a tune of this study is
    running already (another machine's, with the same --storage), this process's workers join it."""
    from .study import TuneStudy, delete_study, storage_url

    check_budget(args)
    workers = count_workers(args)
    folder = Path(args.tune_dir)
    url = storage_url(args.storage, folder)
    name = args.study_name or f"vitdist-{folder.resolve().name}"
    if args.join or (is_main() and joinable(url, name, args)):
        return join_tune(args, url, name, workers)
    with sweep_folder(folder, "--tune-dir", TUNE_FILES, args.train, what="tune"):
        study = None
        if is_main():
            if args.storage and args.train.overwrite and args.train.resume is None:
                delete_study(url, name)  # the study of the tune --overwrite deletes (study.db went with the folder)
            study = TuneStudy(url, name, args.heartbeat_seconds, args.pruner, args.train.epochs)
        settings = {"heartbeat_s": args.heartbeat_seconds, "pruner": args.pruner, "max_epochs": args.train.epochs}
        with (study.coordinating(settings) if study else contextlib.nullcontext()), dashboard(args, url):
            return _tune(args, study, workers)


def _tune(args: TuneArgs, study, workers: int) -> dict:
    from .checks import run_checks
    from .sweep import sweep_lr

    t = Tuner(args, study, workers, lambda c, resume=False: train_trial(c, resume))  # looked up at each call
    given = template = replace(args.train, resume=None)
    if template.log.wandb and template.log.wandb_group is None:  # the trials side by side in W&B
        given = template = replace(template, log=replace(template.log, wandb_group=f"tune-{t.dir.resolve().name}"))
    template = fix_schedule(t, template)
    # 1. the checks
    results = run_checks(template, print_fn=say)
    failed = [r for r in results if not r.passed]
    if failed:
        t.decide("check", "shape, gradient and overfit checks", {}, "FAIL",
                 "; ".join(f"{r.name}: {r.detail} ({r.hint})" for r in failed) + ": fix it before tuning")
        return {"failed": [r.name for r in failed]}
    t.decide("check", "shape, gradient and overfit checks", {}, "PASS", "the model can learn: go on")

    # 2. the learning rate
    swept_now = t.sweep is None
    if swept_now:  # resumed: the sweep's finished rates read back, an interrupted one continued
        sweep_cfg = replace(template, epochs=args.sweep_epochs, resume=args.train.resume, overwrite=False)
        started = time.perf_counter()
        t.sweep = sweep_lr(sweep_cfg, list(args.lrs), t.dir / "sweep-lr")
        t.sweep_minutes = (time.perf_counter() - started) / 60
    lr = t.sweep["recommended_lr"]
    verdicts = {f"{r['lr']:g}": r["verdict"] for r in t.sweep["runs"]}
    if lr is None:
        lr = template.optim.lr
        t.decide("sweep lr", f"{len(args.lrs)} rates, {args.sweep_epochs} epoch(s) each", {"verdicts": verdicts},
                 f"kept lr {lr:g}", f"no healthy rate ({t.sweep['advice']}); the template's rate stays")
    else:
        t.decide("sweep lr", f"{len(args.lrs)} rates, {args.sweep_epochs} epoch(s) each", {"verdicts": verdicts},
                 f"lr {lr:g}", t.sweep["advice"])

    if swept_now and not template_fits(t, template):
        return {"failed": ["budget"]}
    from .worker import start_workers

    with start_workers(study, workers, t.dir / "workers") if is_main() else contextlib.nullcontext():
        return search(t, given, template, lr)


def search(t: Tuner, given: TrainConfig, template: TrainConfig, lr: float) -> dict:
    """Steps 3-5, with the workers: the template and the baseline, one change at a time, the final run, the
    confirmation on fresh seeds. Returns the summary."""
    args = t.args
    # 3. the template, then the baseline at the swept rate
    ref = t.run("trial_000", "the template" + (", its warmup fixed" if template != given else ", as given"),
                changed_flags(given, template), template)
    best = ref
    t.reserve = template  # from here, the trials leave room for the confirmation at the end
    say_resolution(t, ref)
    base_cfg = replace(template, optim=replace(template.optim, lr=lr, min_lr=min(template.optim.min_lr, lr)))
    changes = [f"lr {lr:g}"] if lr != template.optim.lr else []
    best_cfg = template
    if changes and t.trials_left() >= 1 and t.fits(base_cfg):
        trial = t.run("trial_001", "baseline: " + ", ".join(changes), changed_flags(template, base_cfg), base_cfg)
        best, best_cfg = keep_or_revert(t, "baseline", trial, best, base_cfg, best_cfg)

    # 4. diagnose, change one thing, keep what helps
    best, best_cfg = change_one_thing_at_a_time(t, best, best_cfg)

    # 5. the best config, its final run, and the test split scored once
    final = best
    if args.final_epochs and args.final_epochs != best_cfg.epochs:
        final = t.run_many([Arm("final", f"the best config ({best.name}) for {args.final_epochs} epochs", "",
                                replace(best_cfg, epochs=args.final_epochs), seeds=[best_cfg.seed],  # one run, kept
                                kind="final")])[0]
    test = score_test_once(final.run_dir)
    t.reserve = None
    confirmed = confirm(t, given, best_cfg, best.name)  # against the template as given: the fix is the tune's
    summary = {"confirmed": confirmed,
               "best_trial": best.name, "best_val_acc": best.best_val_acc, "template_val_acc": ref.best_val_acc,
               "gain": (best.best_val_acc or 0) - (ref.best_val_acc or 0), "final_run": final.run_dir,
               "final_val_acc": final.best_val_acc, "test": test,
               "best_flags": changed_flags(given, best_cfg)}
    t.decide("final", f"{final.name}", {"test_acc": test and test["accuracy"]}, "done",
             f"best {best.name}: val {best.best_val_acc:.4f} against the template's {ref.best_val_acc:.4f}; "
             f"the test split scored once: {test['accuracy']:.4f}" if test else "no test split to score")
    if is_main():
        record = json.loads((t.dir / "tune.json").read_text())
        record["summary"] = summary
        (t.dir / "tune.json").write_text(json.dumps(record, indent=2) + "\n")
        (t.dir / "tune.md").write_text(tune_markdown(record))
        plot_tune(record, t.dir / "tune.png")
        plot_isolation(record, t.dir / "tune-isolation.png")
        if template.log.wandb:
            log_decisions(record, template)
        say(f"tune: best {best.name} (val {best.best_val_acc:.4f}, template {ref.best_val_acc:.4f}); flags: "
            f"{summary['best_flags'] or '(the template)'} -> {t.dir / 'tune.md'}")
    return summary


def change_one_thing_at_a_time(t: Tuner, best: Trial, best_cfg: TrainConfig) -> tuple[Trial, TrainConfig]:
    """Step 4: diagnose the best run so far, try its first advised change alone, keep it only when it beats the
    noise; until nothing is left to try or the budget is spent. Returns the best trial and config."""
    from .diagnose import diagnose
    from ..train.record import read_run

    tried: set[str] = set()
    while t.trials_left() > 0 and agree(t.minutes_left() > 0):
        run = read_run(best.run_dir)
        d = diagnose(run.rows, run.config, run.steps, run.results)
        options = candidates(d, best_cfg, tried)
        if not options:
            t.decide("diagnose", f"{best.name}: {d.verdict}", {}, "stop", "nothing left to try for this verdict")
            break
        step, what, flags = options[0]
        tried.add(flags)
        try:
            cfg = apply_flags(best_cfg, flags)
        except SystemExit:  # advice the config cannot take (a flag of another version): the next one
            t.decide(step, what, {"flags": flags}, "skipped", "the flags do not parse on this config")
            continue
        if not t.fits(cfg):  # a bigger model may not fit what is left; a cheaper change still might
            t.decide(step, what, {"flags": flags}, "skipped", f"it would likely take {t.expected_minutes(cfg):.1f} "
                                                             f"min and {t.minutes_left():.1f} are left")
            continue
        name = f"trial_{sum(x.kind == 'arm' for x in t.trials):03d}"
        cfg = retune(t, name, what, cfg, best_cfg)  # a scientific change: at its own best rate
        if cfg is None:  # no room to search its rate: a cheaper change may still be judged fairly
            continue
        trial = t.run(name, what, flags, cfg)
        best, best_cfg = keep_or_revert(t, step, trial, best, cfg, best_cfg)
    else:
        swept = len(t.sweep["runs"]) if t.sweep else 0
        searched = sum(x.kind == "nuisance" for x in t.trials)
        t.decide("budget", f"{t.trainings()} trainings ({swept} sweep rates, {len(t.trials) - searched} trials"
                           + (f", {searched} nuisance points)" if searched else ")"), {},
                 "stop", "the trial budget is spent" if t.trials_left() <= 0 else "the time budget is spent")
    return best, best_cfg


def score_test_once(run_dir: str) -> Optional[dict]:
    """The final run's best weights on the test split (vitdist eval), or None when the data has none."""
    from ..after.evaluate import EvalArgs, evaluate_run
    from ..train.record import run_config

    cfg = run_config(run_dir)
    try:
        return evaluate_run(EvalArgs(run_dir=run_dir, split="test", data=cfg.data))
    except UserError as e:
        if "has no test split" in str(e):
            return None
        raise


def changed_flags(template: TrainConfig, cfg: TrainConfig) -> str:
    from ..presets import as_flag, changed_fields

    return " ".join(as_flag(k, new) for k, (_, new) in changed_fields(cfg, template).items()
                    if k not in ("run_dir", "resume"))


def main(argv: list[str] | None = None) -> int:
    from ..console import exit_on_user_error
    from ..presets import parse_with_preset
    from .trials import run_interruptible

    argv = sys.argv[1:] if argv is None else list(argv)
    with exit_on_user_error():
        args = parse_with_preset(TuneArgs, argv, "vitdist tune",
                                 "The checklist's order of work under a budget: check, sweep the rate, a baseline, "
                                 "then diagnose and change one thing at a time, keeping what helps.")
        for name in ("budget_trials", "sweep_epochs"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        return run_interruptible(lambda: 1 if "failed" in tune(args) else 0, "vitdist tune", argv)


if __name__ == "__main__":
    sys.exit(main())
