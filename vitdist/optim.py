"""AdamW with parameter groups, and the warmup + cosine learning rate as a function of the step."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: no decay on biases, norms, the position embedding or the class token."""
    skip = getattr(model, "no_weight_decay", lambda: set())()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Devices with a fused AdamW kernel in every torch this package supports (>= 2.4: CUDA, and CPU since 2.4).
FUSED_DEVICES = ("cuda", "cpu")


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """fused: one kernel for the whole update, and it can skip a step on the device (found_inf) without the
    host reading anything."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def lr_at(step: int, cfg: OptimConfig, total_steps: int, warmup_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to cfg.lr, cosine to cfg.min_lr.

    A pure function of the step (nanoGPT's get_lr), so a resumed run needs no scheduler state.
    """
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def scheduled_lr(step: int, cfg: OptimConfig, steps_per_epoch: int, warmup_steps: int, planned_epochs: int,
                 extensions: list[dict]) -> float:
    """lr_at over the epochs first planned; then, for each extension of the run (config.json's "extended"), a new
    cosine from the rate the schedule had reached at its from_step down to min_lr at its last epoch: a run
    extended on resume keeps a continuous rate, with no jump back up. An extension with a peak_lr (--extend-lr)
    warms up linearly from that rate to peak_lr over its warmup_steps, and the cosine starts from there."""
    lr = lr_at(step, cfg, planned_epochs * steps_per_epoch, warmup_steps)
    for ext in extensions:
        if step >= ext["from_step"]:
            start, peak = ext["from_step"], ext["from_lr"]
            if "peak_lr" in ext:  # --extend-lr: a linear warmup from the rate reached to the new peak first
                if step < start + ext["warmup_steps"]:
                    lr = peak + (ext["peak_lr"] - peak) * (step - start + 1) / ext["warmup_steps"]
                    continue
                start, peak = start + ext["warmup_steps"], ext["peak_lr"]
            span = max(ext["epochs"] * steps_per_epoch - start, 1)
            progress = min((step - start) / span, 1.0)
            lr = cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
    return lr
