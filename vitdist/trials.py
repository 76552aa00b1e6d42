"""Running trials: one short training run each, as `sweep lr`, `sweep grid` and `tune` run them, and the small
helpers they share (only rank 0 prints; a diverged trial is a result, not a crash)."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

from .config import TrainConfig
from .runs import read_jsonl


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def say(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def read_trial_log(path: Path) -> list[dict]:
    """A trial's log; a run that died before writing one has none."""
    return read_jsonl(path) if path.exists() else []


def train_trial(cfg: TrainConfig) -> tuple[dict | None, str | None]:
    """train(cfg) -> (results, None), or (None, why) when the loss went non-finite."""
    from .train import Diverged, train

    try:  # a trial's folder from an earlier sweep starts afresh; tuning never looks at the test split
        return train(replace(cfg, overwrite=True, test_at_end=False)), None
    except Diverged as e:
        return None, str(e)


def smooth(values: list[float], beta: float, start: float | None = None) -> list[float]:
    """EMA of values. Started at `start` when given (no bias), else bias-corrected (Adam's correction)."""
    out, s = [], (start if start is not None else 0.0)
    for i, v in enumerate(values):
        s = beta * s + (1 - beta) * v
        out.append(s if start is not None else s / (1 - beta ** (i + 1)))
    return out
