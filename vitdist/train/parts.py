"""The run's state as its phases pass it on (run.py, epoch.py): Run (what open_run set up), Parts (what build
made) and Derived (the numbers computed once and logged). What a checkpoint stores is folder.py's TrainState."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator

from ..config import TrainConfig
from ..data.augment import BatchAugment
from ..data.sources import DataBundle


@dataclass(frozen=True)
class Derived:
    """Values computed once from the config, the data and the world size; logged, never stored in the config."""

    world_size: int
    micro_batch_size: int
    accumulation_steps: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    num_train: int
    num_val: int
    num_test: int
    num_classes: int
    num_params: int
    train_flops_per_image: float  # forward + backward, from the model's shape (flops.py)
    peak_tflops: float | None  # one device's dense peak at this precision; None where unknown (a CPU)


@dataclass
class Run:
    """The run as open_run sets it up. Two fields change later: micro_batch (shrunk after an out-of-memory) and
    extensions (config.json's "extended" entries: one more for a resume that extends the run)."""

    cfg: TrainConfig  # with --precision auto resolved
    asked_precision: str  # as the user gave it
    accelerator: Accelerator
    run_dir: Path
    world_size: int
    micro_batch: int
    accum: int
    zero_stage: int  # 0 without DeepSpeed
    trackers: list[str]
    resume_dir: Path | None  # the checkpoint a resume starts from
    saved: TrainConfig | None  # the run folder's config.json, where it resumes
    extensions: list[dict]
    planned: int  # the epochs the record plans (its config.json and extensions)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class Parts:
    """What build() makes for the run: the data, the prepared model and optimizer, the loaders, the schedule."""

    data: DataBundle
    model: Any  # the prepared model (DDP or DeepSpeed's engine around VisionTransformer)
    optimizer: Any
    augment: BatchAugment
    ema: Any  # timm's ModelEmaV3 (--ema.decay), or None
    averaged: Any  # the module whose weights the optimizer steps and ema averages (None without ema)
    input_dtype: torch.dtype  # DeepSpeed's bf16/fp16 modes hold the weights in half precision: feed that dtype
    fused: bool  # AdamW's fused kernel
    train_dl: Any  # DeviceBatches, or a DataLoader sharded per rank by accelerate
    val_dl: Any
    train_eval_dl: Any
    test_dl: Any  # None without a test split
    derived: Derived
    schedule: Callable[[int], float]  # the learning rate at an optimizer step
