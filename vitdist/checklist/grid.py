"""`vitdist sweep grid`: one short run per combination (or N random draws) of config values, given as
--set FIELD=V1,V2; the trials are ranked by best validation accuracy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ..config import TrainConfig, UserError
from .trials import is_main, read_trial_log, say, sweep_folder, train_trial


@dataclass(frozen=True)
class GridArgs:
    train: Annotated[TrainConfig, tyro.conf.arg(name="")]
    set: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """FIELD=V1,V2,...: values to try for one config field (e.g. optim.weight_decay=1e-4,1e-3 or
    model.dropout=0.1,0.2); repeat for more fields."""
    random: int = 0
    """Run only this many random draws from the grid (seeded by --seed); 0 runs the full grid."""
    sweep_dir: str = "runs/sweep-grid"
    """Folder for results.json and one run folder per trial (trial_NNN/); --run-dir is not used."""


def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def resolve_field(key: str) -> tuple[str | None, str, object]:
    """'optim.weight_decay' (or 'optim.weight-decay', '--optim.weight-decay') -> ('optim', 'weight_decay', type)."""
    key = key.strip().lstrip("-").replace("-", "_")
    top = _field_types(TrainConfig)
    head, _, name = key.rpartition(".")
    if not head:
        if name in top and not dataclasses.is_dataclass(top[name]):
            return None, name, top[name]
    elif head in top and dataclasses.is_dataclass(top[head]):
        sub = _field_types(top[head])
        if name in sub:
            return head, name, sub[name]
        raise UserError(f"--set {key}: {head} has no field {name!r}; its fields: {', '.join(sub)}")
    subs = [k for k, t in top.items() if dataclasses.is_dataclass(t)]
    raise UserError(f"--set {key}: unknown config field; use SECTION.FIELD with SECTION one of {', '.join(subs)} "
                    f"(e.g. optim.weight_decay), or a top-level field such as epochs or label_smoothing")


def parse_value(text: str, tp, key: str):
    """One grid value, parsed as the field's type."""
    text = text.strip()
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        if text.lower() in ("none", "null"):
            return None
        tp = next(a for a in args if a is not type(None))
        args, origin = typing.get_args(tp), typing.get_origin(tp)
    if origin is Literal:
        if text in args:
            return text
        raise UserError(f"--set {key}={text}: not one of {', '.join(map(str, args))}")
    try:
        if tp is bool:
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
        if tp is int:
            return int(text)
        if tp is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
        if tp is str:
            return text
    except ValueError:
        raise UserError(f"--set {key}={text}: not a valid {tp.__name__}") from None
    raise UserError(f"--set {key}: a field of type {tp} cannot be swept; sweep numbers, flags, names or choices")


def parse_grid(specs: list[str]) -> dict[str, list]:
    """['optim.weight_decay=1e-4,1e-3', ...] -> {'optim.weight_decay': [1e-4, 1e-3], ...} (values typed)."""
    if not specs:
        raise UserError("--set is missing: give at least one FIELD=V1,V2 (e.g. --set optim.weight_decay=1e-4,1e-3)")
    grid: dict[str, list] = {}
    for spec in specs:
        key, eq, values = spec.partition("=")
        if not eq or not values.strip():
            raise UserError(f"--set {spec!r}: expected FIELD=V1,V2,... (e.g. model.dropout=0.1,0.2)")
        section, name, tp = resolve_field(key)
        full = f"{section}.{name}" if section else name
        if full in grid:
            raise UserError(f"--set {full} is given twice: list all its values in one --set")
        grid[full] = list(dict.fromkeys(parse_value(v, tp, full) for v in values.split(",")))
    return grid


def apply_overrides(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """dataclasses.replace on the nested sub-configs; their __post_init__ rejects bad values (ConfigError)."""
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section:
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
        else:
            cfg = replace(cfg, **{name: value})
    return cfg


def grid_trials(grid: dict[str, list], random_draws: int, seed: int) -> list[dict]:
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if random_draws < 0:
        raise UserError(f"--random must be >= 0 (0 runs the full grid), got {random_draws}")
    if 0 < random_draws < len(combos):
        picked = sorted(random.Random(seed).sample(range(len(combos)), random_draws))
        combos = [combos[i] for i in picked]
    return combos


def sweep_grid(cfg: TrainConfig, specs: list[str], random_draws: int, sweep_dir: str | Path) -> dict:
    grid = parse_grid(specs)
    trials = grid_trials(grid, random_draws, cfg.seed)
    sweep_dir = Path(sweep_dir)
    # Every trial's config is built (and validated) before the first one trains.
    configs = [replace(apply_overrides(cfg, t), run_dir=str(sweep_dir / f"trial_{i:03d}"), resume=None)
               for i, t in enumerate(trials)]
    with sweep_folder(sweep_dir, "--sweep-dir", ["trial_*", "results.json"], cfg):
        return _sweep_grid(cfg, grid, trials, configs, random_draws, sweep_dir)


def _sweep_grid(cfg: TrainConfig, grid: dict, trials: list[dict], configs: list[TrainConfig], random_draws: int,
                sweep_dir: Path) -> dict:
    rows = []
    for i, (overrides, run_cfg) in enumerate(zip(trials, configs)):
        say(f"\n=== sweep grid trial {i + 1}/{len(trials)}: "
             f"{' '.join(f'{k}={v}' for k, v in overrides.items())} -> {run_cfg.run_dir}")
        results, error = train_trial(run_cfg, resume=cfg.resume is not None)
        metrics = read_trial_log(Path(run_cfg.run_dir) / "metrics.jsonl")
        rows.append({"trial": i, "run_dir": run_cfg.run_dir, "overrides": overrides, "error": error,
                     "best_val_acc": results["best_val_acc"] if results else None,
                     "best_epoch": results["best_epoch"] if results else None,
                     "final_val_loss": metrics[-1]["val_loss"] if metrics and results else None,
                     "final_train_acc": metrics[-1]["train_acc"] if metrics and results else None})
    ranked = sorted(rows, key=lambda r: -r["best_val_acc"] if r["best_val_acc"] is not None else math.inf)
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    report = {"kind": "grid", "grid": grid, "random": random_draws, "sweep_dir": str(sweep_dir),
              "trials": ranked}
    if is_main():
        _print_grid_table(grid, ranked)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {sweep_dir / 'results.json'}")
    return report


def _print_grid_table(grid: dict, ranked: list[dict]) -> None:
    keys = list(grid)
    widths = [max(len(k), 8) for k in keys]
    print("\ngrid results, ranked by best validation accuracy:")
    print("rank trial " + " ".join(f"{k:>{w}}" for k, w in zip(keys, widths))
          + " best_val_acc best_epoch final_val_loss")
    for r in ranked:
        cells = " ".join(f"{str(r['overrides'][k]):>{w}}" for k, w in zip(keys, widths))
        if r["error"]:
            tail = f"diverged: {r['error']}"
        else:
            tail = f"{r['best_val_acc']:>12.4f} {r['best_epoch']:>10} {r['final_val_loss']:>14.4f}"
        print(f"{r['rank']:>4} {r['trial']:>5} {cells} {tail}")
    best = ranked[0]
    if best["best_val_acc"] is not None:
        from ..presets import as_flag

        flags = " ".join(as_flag(k, v) for k, v in best["overrides"].items())
        print(f"best: trial {best['trial']} ({best['best_val_acc']:.4f}); its flags: {flags}")
