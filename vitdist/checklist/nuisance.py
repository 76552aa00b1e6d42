"""The nuisance hyperparameters, tuned again for each scientific change (Google's Deep Learning Tuning Playbook):
before a change to the model or the data (width, depth, patch, dropout, augmentation) is judged, its rate is
searched by a short quasi-random search (from 4 points the weight decay too, from 8 the warmup), so that the two
sides are compared each at its own best rate, not the change at the rate tuned for the other side.

The points: the config's own values first (the change as it is), then Optuna's QMC sampler (scrambled Sobol,
seeded by the config's seed) over the rate within /3..x3 of the best config's and the decay within /10..x10. Each
point trains on one seed and may be pruned; the best (a finished point's best validation accuracy, else a pruned
one's last) gives the values the change is then judged with, on every seed."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Optional

from ..config import TrainConfig

SCIENTIFIC = ("model.", "data.")  # what a change studies; the optimizer's settings are the nuisance
LR_SPAN = 3.0  # the rate searched from lr / LR_SPAN to lr * LR_SPAN (log scale)
WD_SPAN = 10.0  # the weight decay likewise, where it is not 0
WD_FROM, WARMUP_FROM = 4, 8  # points from which the weight decay, and the warmup, are searched too


def is_scientific(cfg: TrainConfig, best_cfg: TrainConfig) -> bool:
    """Whether cfg changes the model or the data of best_cfg (a change the rate should be tuned again for)."""
    from ..presets import changed_fields

    return any(k.startswith(SCIENTIFIC) for k in changed_fields(cfg, best_cfg))


def search_space(cfg: TrainConfig, points: int) -> dict[str, tuple[float, float, bool]]:
    """{optim field: (low, high, log)} around cfg's values; the more points, the more fields."""
    o = cfg.optim
    space = {"lr": (o.lr / LR_SPAN, o.lr * LR_SPAN, True)}
    if points >= WD_FROM and o.weight_decay > 0:
        space["weight_decay"] = (o.weight_decay / WD_SPAN, o.weight_decay * WD_SPAN, True)
    if points >= WARMUP_FROM:
        space["warmup_epochs"] = (0.0, max(cfg.epochs / 5, 0.1), False)
    return space


def qmc_points(cfg: TrainConfig, space: dict, points: int) -> list[dict]:
    """`points` points of the space: cfg's own values, then scrambled Sobol points from Optuna's QMCSampler."""
    import optuna
    from optuna.distributions import FloatDistribution

    dists = {name: FloatDistribution(low, high, log=log) for name, (low, high, log) in space.items()}
    own = {name: float(getattr(cfg.optim, name)) for name in space}
    with warnings.catch_warnings():  # experimental; Sobol's balance wants a power of 2 of points: a short search
        warnings.simplefilter("ignore")
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.QMCSampler(
            qmc_type="sobol", scramble=True, seed=cfg.seed))
        study.add_trial(optuna.trial.create_trial(params=own, distributions=dists, value=0.0))  # fixes the space
        out = [own]
        for _ in range(points - 1):
            trial = study.ask(dists)
            out.append(dict(trial.params))
            study.tell(trial, 0.0)
    return out


def with_point(cfg: TrainConfig, point: dict) -> TrainConfig:
    optim = replace(cfg.optim, **point)
    return replace(cfg, optim=replace(optim, min_lr=min(optim.min_lr, optim.lr)))


def describe(point: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in point.items())


def retune(t, name: str, what: str, cfg: TrainConfig, best_cfg: TrainConfig) -> Optional[TrainConfig]:
    """cfg with its nuisance values re-tuned, where cfg is a scientific change of best_cfg (cfg as it is for any
    other change, or with --nuisance-trials 0). None where the budget of the tune.Tuner t has no room for the
    search and the change on every seed after it: judged at the other side's rate, the comparison would not be
    fair, so the change is skipped (the next advice may be cheaper)."""
    from .tune_record import Arm

    k = t.args.nuisance_trials
    if k <= 0 or not is_scientific(cfg, best_cfg):
        return cfg
    if t.trainings_left() < k + t.args.seeds:
        t.decide("nuisance", what, {}, "skipped",
                 f"the trial budget has {t.trainings_left()} trainings left: not enough for a search of its rate "
                 f"({k} points) and the change on its {t.args.seeds} seed(s)")
        return None
    if not t.fits(cfg, extra=k):
        t.decide("nuisance", what, {}, "skipped",
                 f"a search of its rate ({k} points) and the change on its {t.args.seeds} seed(s) would likely take "
                 f"{t.expected_minutes(cfg, extra=k):.1f} min, and {t.minutes_left():.1f} are left")
        return None
    space = search_space(cfg, k)
    points = qmc_points(cfg, space, k)
    arms = [Arm(f"{name}_nuisance_{i}", f"{what}: nuisance point {i} ({describe(p)})", "", with_point(cfg, p),
                seeds=[cfg.seed], prunable=True, space=space, kind="nuisance", group=f"{name}_nuisance")
            for i, p in enumerate(points)]
    trials = t.run_many(arms)
    scores = [(tr.best_val_acc, 1) if tr.best_val_acc is not None else (tr.last_val_acc, 0) for tr in trials]
    ranked = [(done, acc, i) for i, (acc, done) in enumerate(scores) if acc is not None]
    if not ranked:
        t.decide("nuisance", what, {"points": points}, "none", "every point diverged: judged at the best config's "
                                                                "rate")
        return cfg
    _, acc, i = max(ranked)  # a finished point before a pruned one
    results = [{"point": p, "val_acc": tr.best_val_acc, "pruned": tr.pruned} for p, tr in zip(points, trials)]
    pruned = sum(tr.pruned is not None for tr in trials)
    t.decide("nuisance", what, {"points": results, "chosen": points[i], "space": space}, describe(points[i]),
             f"the best of {k} quasi-random points (Optuna's QMC sampler, one seed each; {pruned} pruned): val "
             f"{acc:.4f} at {describe(points[i])}, searched over {describe_space(space)}")
    return with_point(cfg, points[i])


def describe_space(space: dict) -> str:
    return ", ".join(f"{k} {lo:.3g}..{hi:.3g}" for k, (lo, hi, _) in space.items())
