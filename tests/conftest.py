"""Shared fixtures: tiny configs on synthetic data, so every test runs in seconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vitdist.config import BatchConfig, DataConfig, LogConfig, ModelConfig, OptimConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# Never let a test reach the network.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_config(run_dir, **overrides) -> TrainConfig:
    """A 2-layer, 32-wide ViT on 320 synthetic images: one epoch takes well under a second."""
    cfg = TrainConfig(
        model=ModelConfig(embed_dim=32, num_layers=2, num_heads=2, dim_feedforward=64, dropout=0.0),
        data=DataConfig(name="synthetic", synthetic_size=320, val_fraction=0.2, train_eval_size=64),
        optim=OptimConfig(lr=1e-3, warmup_epochs=1.0),
        batch=BatchConfig(global_batch_size=32),
        log=LogConfig(tensorboard=False, progress=False),
        epochs=2,
        early_stop_patience=0,
        run_dir=str(run_dir),
    )
    subs = {k: v for k, v in overrides.items() if k in ("model", "data", "optim", "batch", "log")}
    for key, value in subs.items():
        cfg = replace(cfg, **{key: replace(getattr(cfg, key), **value)})
    return replace(cfg, **{k: v for k, v in overrides.items() if k not in subs})


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `python -m vitdist ARGS` in a fresh process and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vitdist", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


@pytest.fixture
def cifar10_root(tmp_path_factory):
    """The shared CIFAR-10 JPEG copy unpacked once per session; skips where ../shared/data lacks it."""
    if not SHARED_DATA.exists():
        pytest.skip(f"needs {SHARED_DATA} (the shared CIFAR-10 copy), absent here")
    import tarfile

    dest = tmp_path_factory.getbasetemp() / "cifar10-jpeg"
    if not (dest / "cifar10").exists():
        with tarfile.open(SHARED_DATA) as tar:
            tar.extractall(dest, filter="data")
    return dest / "cifar10"
