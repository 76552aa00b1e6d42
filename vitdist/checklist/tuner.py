"""The Tuner: it runs the tune's arms (tune_record.Arm) through the study (each seed queued for the workers,
this process working too), reads back how each ended (a tune_record.Trial), and keeps the tune's budget, clock
and records (tune.json, tune.md)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from ..config import TrainConfig, UserError, from_dict, to_dict
from .trials import is_main, say, train_trial
from .tune_budget import agree
from .tune_record import Arm, Trial, tune_markdown
from .tune_rule import NOISE_Z
from .worker import share, work

class Tuner:
    def __init__(self, args, study=None, workers: int = 1, train: Callable = train_trial):
        """args: the tune.TuneArgs; study: the TuneStudy (rank 0's; None on the other ranks); train: how a worker
        here trains (train_trial)."""
        self.args, self.dir = args, Path(args.tune_dir)
        self.train = train
        self.study, self.workers = study, workers  # the study: rank 0's (None on the other ranks)
        self.t0 = time.perf_counter()
        self.trials: list[Trial] = []
        self.decisions: list[dict] = []
        self.sweep: Optional[dict] = None
        self.sweep_minutes = 0.0  # the sweep's wall time, where it ran in this process (not read back)
        self.reserve: Optional[TrainConfig] = None  # the template, whose confirmation at the end is budgeted for
        self.resuming = args.train.resume is not None
        if self.resuming and (self.dir / "tune.json").is_file():  # the trainings themselves are the study's
            saved = json.loads((self.dir / "tune.json").read_text())
            self.sweep = saved.get("sweep")
            self.t0 -= 60 * saved.get("minutes", 0.0)  # --budget-minutes counts the time spent before the stop

    # --- budget and records

    def trainings(self) -> int:
        """Every training the tune has started: the sweep's rates, and each trial's seeds."""
        return (len(self.sweep["runs"]) if self.sweep else 0) + sum(len(t.accs) or 1 for t in self.trials)

    def trainings_left(self) -> int:
        """Trainings the budget still holds, the confirmation kept aside."""
        kept = 2 * self.args.confirm_seeds if self.reserve is not None else 0
        return self.args.budget_trials - self.trainings() - kept

    def trials_left(self) -> int:
        """Arms the trial budget still holds (an arm: one config on every seed)."""
        return self.trainings_left() // self.args.seeds

    def expected_minutes(self, cfg: TrainConfig, extra: int = 0) -> float:
        """A trial's likely length on all its seeds (after `extra` single-seed trainings of it: a nuisance
        search): the trainings so far, in seconds per (FLOP of an image x epoch), scaled to cfg's model and epochs
        (a wider or deeper model costs what its FLOPs say), in rounds of as many trainings as there are workers."""
        from ..flops import train_flops_per_image

        cost = lambda c: train_flops_per_image(c.model, 10) * c.epochs  # noqa: E731 - the class count barely moves it
        ran = [t.seconds / (len(t.accs) or 1) / cost(from_dict(t.config)) for t in self.trials if t.seconds > 0]
        rounds = math.ceil(self.args.seeds / self.workers) + math.ceil(extra / self.workers)
        return (sum(ran) / len(ran) * cost(cfg) * rounds / 60) if ran else 0.0

    def minutes_left(self) -> float:
        if self.args.budget_minutes <= 0:
            return math.inf
        return self.args.budget_minutes - (time.perf_counter() - self.t0) / 60

    def fits(self, cfg: TrainConfig, extra: int = 0) -> bool:
        """Whether a trial of cfg (after `extra` single-seed trainings of it) likely ends within the time budget,
        the confirmation at the end kept aside (rank 0's clock decides for all)."""
        kept = 0.0
        if self.reserve is not None:
            per_round = self.expected_minutes(self.reserve) / math.ceil(self.args.seeds / self.workers)
            kept = per_round * math.ceil(2 * self.args.confirm_seeds / self.workers)
        return agree(self.expected_minutes(cfg, extra) + kept <= self.minutes_left())

    def decide(self, step: str, what: str, numbers: dict, result: str, why: str) -> None:
        self.decisions.append({"step": step, "what": what, **numbers, "result": result, "why": why})
        say(f"tune: {step}: {what}: {result}: {why}")
        self.write()

    def write(self) -> None:
        if not is_main():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {"tune_dir": str(self.dir), "template": to_dict(self.args.train), "noise_z": NOISE_Z,
                  "sweep": self.sweep,
                  "trials": [t.__dict__ for t in self.trials], "decisions": self.decisions,
                  "minutes": (time.perf_counter() - self.t0) / 60}
        (self.dir / "tune.json").write_text(json.dumps(record, indent=2) + "\n")
        (self.dir / "tune.md").write_text(tune_markdown(record))

    # --- trials

    def run(self, name: str, what: str, flags: str, cfg: TrainConfig, seeds: Optional[list] = None) -> Trial:
        """One arm: cfg trained on each of the tune's seeds, or those given (NAME/ with one seed, NAME/seed_S/
        with several)."""
        return self.run_many([Arm(name, what, flags, cfg, seeds)])[0]

    def all_ended(self, keys: list[str]) -> bool:
        trials = self.study.trials()  # one look for all
        return all(self.study.finished(k, trials) is not None for k in keys)

    def run_many(self, arms: list[Arm]) -> list[Trial]:
        """Arms side by side: every seed of each is queued in the study at once, for whichever workers are free,
        and this process works too until all have ended. What the study has finished (a resumed tune's) is read
        back, not rerun."""
        from .study import training_key

        jobs = []
        for arm in arms:
            seeds = arm.seeds or [arm.cfg.seed + k for k in range(self.args.seeds)]
            folder = self.dir / arm.name
            folders = [folder] if len(seeds) == 1 else [folder / f"seed_{seed}" for seed in seeds]
            cfg = replace(arm.cfg, run_dir=str(folder), resume=None)
            trial = Trial(arm.name, arm.what, arm.flags, as_json(to_dict(cfg)), str(folders[0]), seeds=seeds,
                          nuisance={"lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay,
                                    "warmup_epochs": cfg.optim.warmup_epochs}, kind=arm.kind)
            keys = []
            for seed, run_dir in zip(seeds, folders):
                config = as_json(to_dict(replace(cfg, seed=seed, run_dir=str(run_dir))))
                keys.append(training_key(str(run_dir), config))
                if is_main():
                    self.study.ensure(str(run_dir), config, arm=arm.name, seed=seed, prunable=arm.prunable,
                                      space=arm.space, params={k: config["optim"][k] for k in arm.space or {}},
                                      group=arm.group)
            done = share(is_main() and self.all_ended(keys))
            say(f"\n=== tune {arm.name}: {arm.what}: read back" if done else
                f"\n=== tune {arm.name}: {arm.what} -> {folder}" + (f" (seeds {', '.join(map(str, seeds))})"
                                                                    if len(seeds) > 1 else ""))
            jobs.append((trial, keys))
        keys = [k for _, ks in jobs for k in ks]
        work(self.study, lambda: self.all_ended(keys), self.train)
        for trial, keys in jobs:
            ended = share([ending(self.study.finished(k)) for k in keys] if is_main() else None)
            crashed = [e["crash"] for e in ended if e["crash"]]
            if crashed:
                raise UserError(f"a training of {trial.name} failed in a worker: {crashed[0]} (the worker's "
                                f"console, {self.dir}/workers/, has its traceback); the tune stops here, and "
                                f"--resume auto continues it once that is fixed")
            trial.accs = [e["value"] for e in ended]
            trial.seconds = sum(e["seconds"] for e in ended)
            trial.num_val = next((e["num_val"] for e in ended if e["num_val"]), 0)
            trial.error = next((e["error"] for e in ended if e["error"]), None)
            trial.pruned = next((e["pruned"] for e in ended if e["pruned"]), None)
            trial.last_val_acc = ended[0]["last"]
            if trial.error is None and None not in trial.accs:
                trial.best_val_acc = sum(trial.accs) / len(trial.accs)
            self.trials.append(trial)
        self.write()
        return [trial for trial, _ in jobs]


def as_json(d: dict) -> dict:
    """d as tune.json and the study hold it (tuples as lists)."""
    return json.loads(json.dumps(d))


def ending(t) -> dict:
    """How one training ended, from its Optuna trial: its value (None: diverged or pruned) and why."""
    from optuna.trial import TrialState

    steps = sorted(t.intermediate_values)
    return {"value": t.value if t.state == TrialState.COMPLETE else None, "error": t.user_attrs.get("error"),
            "crash": t.user_attrs.get("crash") if t.state == TrialState.FAIL else None,
            "pruned": t.user_attrs.get("pruned"),
            "seconds": t.user_attrs.get("seconds", 0.0), "num_val": t.user_attrs.get("num_val", 0),
            "last": t.intermediate_values[steps[-1]] if steps else t.value}
