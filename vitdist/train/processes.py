"""The processes of a run: which device they use, the process group they join (elastic restarts included), and
the accelerate.Accelerator over them. Used by train, eval and the range test."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import (DataLoaderConfiguration, GradientAccumulationPlugin, InitProcessGroupKwargs,
                               ProjectConfiguration, parse_flag_from_env)

from ..precision import mixed_precision


def process_device() -> torch.device:
    """The kind of device the Accelerator will pick, before it exists (its precision depends on it): a GPU
    unless there is none or ACCELERATE_USE_CPU says no. Creating accelerate's PartialState this early instead
    would fix the process state before the Accelerator's CPU and DeepSpeed settings are read."""
    cuda = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    return torch.device("cuda" if cuda else "cpu")


def join_restarted_group() -> None:
    """After an elastic restart (`accelerate launch --max_restarts N`, torchrun's), join the process group under
    a key prefix of its own. The launcher keeps one store for every attempt, and its keys with it: through
    env:// a restarted gloo group reads the dead ranks' addresses from the failed attempt and stops with
    "connectFullMesh ... Connection refused". The first attempt is left to accelerate as usual."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if attempt == 0 or torch.distributed.is_initialized() or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    torch.distributed.init_process_group(
        "nccl" if process_device().type == "cuda" else "gloo",
        store=torch.distributed.PrefixStore(f"vitdist/attempt_{attempt}", store),
        rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


def make_accelerator(precision: str, accum: int, world_size: int, trackers=(), run_dir: Path | None = None):
    """The Accelerator of one run, at a resolved precision (resolve_precision). train() may run several times in
    one process (sweeps, tests): forget the last run's precision and accumulation, keep the process group."""
    if world_size > 1:
        join_restarted_group()
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=mixed_precision(precision),
        # optimizer_step sets the count for each step; the loader's end must not force a sync of its own.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum, sync_with_dataloader=False),
        log_with=list(trackers) or None,
        # Batches from loader workers come in pinned memory on a GPU: copy them without waiting.
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))
        if run_dir is not None else None,
        # Several processes without a GPU talk over gloo (NCCL needs CUDA; DeepSpeed would pick it anyway).
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if world_size > 1 and not torch.cuda.is_available()
        else [],
    )


def end_process_group() -> None:
    """Tear the process group down in order, every rank at the same point, before the interpreter exits: left to
    the interpreter's teardown, gloo's threads can abort a rank after all its work is done (SIGABRT; seen once in
    a clean-clone CI run of a 2-process `vitdist eval`, as under DeepSpeed: command.exit_now)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
