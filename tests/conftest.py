"""Shared fixtures: tiny configs on synthetic data, so every test runs in seconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

# Tests keep their decoded-image and autobatch caches out of the user's ~/.cache (set before vitdist loads).
os.environ.setdefault("VITDIST_CACHE", tempfile.mkdtemp(prefix="vitdist-test-cache-"))

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
    subs = {k: v for k, v in overrides.items() if k in ("model", "data", "optim", "batch", "log", "ema")}
    for key, value in subs.items():
        cfg = replace(cfg, **{key: replace(getattr(cfg, key), **value)})
    return replace(cfg, **{k: v for k, v in overrides.items() if k not in subs})


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `python -m vitdist ARGS` in a fresh process and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vitdist", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 OpenMP threads per process fight the other processes
    and run the tiny test models 10-50x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
