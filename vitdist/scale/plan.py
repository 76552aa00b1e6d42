"""Batch plans: the micro-batch a memory budget allows (with its safety margin), the accumulation that keeps the
global batch, the next plan after an out-of-memory error, and the checklist's starting guess by GPU memory."""

from __future__ import annotations

import math


from ..config import UserError


# The probe's step is the training step without what a long run adds: Mixup/CutMix soft targets, allocator
# fragmentation after thousands of steps, evaluation and checkpoint buffers, DDP/DeepSpeed buckets, other
# processes on the GPU. 10% is headroom for these, chosen, not measured: raise --safety-margin if a long run
# still runs out of memory (the trainer then halves the micro-batch: next_plan_after_oom).
SAFETY_MARGIN = 0.10
# The flash and memory-efficient attention kernels launch the batch on a CUDA grid axis: at most 65,535.
CUDA_MAX_BATCH = 65535
DEFAULT_MAX_BATCH = 32768


def with_margin(largest: int, margin: float = SAFETY_MARGIN) -> int:
    """The micro-batch to use: the largest that ran, less the safety margin (at least 1 when anything ran)."""
    return max(1, math.floor(largest * (1 - margin) + 1e-9)) if largest > 0 else 0


def search_cap(per_rank_batch: int, margin: float = SAFETY_MARGIN) -> int:
    """Search no further than needed: the smallest batch whose margin-reduced size is the whole per-rank batch."""
    cap = math.ceil(per_rank_batch / (1 - margin))
    while cap > 1 and with_margin(cap - 1, margin) >= per_rank_batch:
        cap -= 1
    while with_margin(cap, margin) < per_rank_batch:
        cap += 1
    return min(CUDA_MAX_BATCH, cap)


def largest_divisor_at_most(n: int, limit: int) -> int:
    best = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for c in (d, n // d):
                if best < c <= limit:
                    best = c
    return best


def per_rank_batch(global_batch: int, world_size: int, flag: str = "--batch.global-batch-size") -> int:
    if global_batch < world_size:
        raise UserError(f"{flag} {global_batch} is smaller than {world_size} processes: each process needs at "
                        f"least one sample per step; use {world_size} or more")
    if global_batch % world_size:
        raise UserError(f"{flag} {global_batch} is not divisible by {world_size} processes: use a multiple "
                        f"of {world_size}")
    return global_batch // world_size


def check_micro_batch(global_batch: int, micro_batch: int, world_size: int,
                      flag: str = "--batch.global-batch-size") -> None:
    """A user-given micro-batch must tile the global batch over the processes."""
    if global_batch < micro_batch * world_size:
        raise UserError(f"{flag} {global_batch} is smaller than --batch.micro-batch-size {micro_batch} x "
                        f"{world_size} processes = {micro_batch * world_size}: raise the global batch or lower "
                        f"the micro-batch")
    if global_batch % (micro_batch * world_size):
        raise UserError(f"{flag} {global_batch} is not divisible by --batch.micro-batch-size {micro_batch} x "
                        f"{world_size} processes: use a multiple of {micro_batch * world_size}")


def plan_batches(global_batch: int, max_micro: int, world_size: int,
                 flag: str = "--batch.global-batch-size") -> tuple[int, int]:
    """(micro-batch, accumulation steps): the largest micro-batch <= max_micro that divides the per-rank batch."""
    per_rank = per_rank_batch(global_batch, world_size, flag)
    micro = largest_divisor_at_most(per_rank, max(1, max_micro))
    return micro, per_rank // micro


def next_plan_after_oom(micro: int, accum: int) -> tuple[int, int]:
    """After a step ran out of memory: the largest divisor of the micro-batch up to half of it, and the
    accumulation that keeps the global batch (a power of two halves; 12 -> 6; 9 -> 3; 7 -> 1).

    The new micro-batch divides the old one, so each batch the loader already yields splits into whole
    chunks (x.split(micro)) and the data order stays that of the run. Below 1: nothing left to try.
    """
    if micro <= 1:
        raise UserError(f"out of memory at micro-batch 1 (x {accum} accumulation steps): nothing left to halve; "
                        f"use --precision bf16, a smaller model (--model.embed-dim, --model.num-layers), or "
                        f"ZeRO-3 with CPU offload (launch/deepspeed.sh 3-offload)")
    smaller = largest_divisor_at_most(micro, micro // 2)
    return smaller, accum * (micro // smaller)


# Batch size by GPU memory (GB): a starting guess only; `vitdist autobatch` measures the real fit.
BATCH_BY_GPU_MEMORY_GB: list[tuple[float, tuple[int, int]]] = [
    (16.0, (128, 256)),  # 16 GB and more
    (8.0, (64, 128)),
    (4.0, (32, 64)),
]


def batch_guess(memory_gb: float) -> tuple[int, int] | None:
    """The checklist's (low, high) micro-batch for a GPU of this much memory; None below 4 GB."""
    for at_least, batch in BATCH_BY_GPU_MEMORY_GB:
        if memory_gb >= at_least:
            return batch
    return None
