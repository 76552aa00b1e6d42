"""The checklist's quick-reference tables, as data and as the `vitdist recommend` command.

    vitdist recommend --train-size 45000 [--gpu-memory-gb 8]

Prints learning rate, weight decay and dropout for the data-set size, a micro-batch for the GPU's memory, the
model-size table with real parameter counts, and the override flags that apply the recommendation.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Optional

import tyro

from ..config import BatchConfig, ModelConfig, TrainConfig, UserError
from ..scale.plan import BATCH_BY_GPU_MEMORY_GB, batch_guess


# Data-set size bands: "small (< 10K)", "large (> 100K)", medium between (both bounds inclusive).
SMALL_DATA_MAX = 10_000  # fewer training images than this: small
LARGE_DATA_MIN = 100_000  # more than this: large
OVERFIT_TEST_SIZE = 32  # the overfit test's 32 samples: a training set this small is that test
# band -> (lr, weight decay, dropout), each a (low, high) range from the checklist's tables.
BY_DATA_SIZE: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "overfit test": ((5e-3, 1e-2), (0.0, 0.0), (0.0, 0.0)),
    "small (< 10K)": ((1e-4, 5e-4), (1e-3, 5e-3), (0.3, 0.5)),
    "medium": ((3e-4, 1e-3), (1e-4, 1e-3), (0.1, 0.3)),
    "large (> 100K)": ((1e-3, 5e-3), (1e-5, 1e-4), (0.0, 0.1)),
}
# The model table: type -> (ModelConfig fields, the checklist's own parameter count).
MODEL_SIZES: dict[str, tuple[dict, str]] = {
    "tiny": (dict(embed_dim=128, num_layers=4, num_heads=4, dim_feedforward=512), "~200K"),
    "small": (dict(embed_dim=256, num_layers=6, num_heads=8, dim_feedforward=1024), "~2M"),
    "base": (dict(embed_dim=512, num_layers=6, num_heads=8, dim_feedforward=2048), "~10M"),
}
MODEL_TABLE_CLASSES = 10  # the counts are for CIFAR-10's head, on 32x32 input with patch 8 (16 tokens)
BELOW_TABLE_MICRO_BATCH = 16  # under 4 GB the table stops; half its smallest entry is a cautious start


def size_band(train_size: int) -> str:
    if train_size <= OVERFIT_TEST_SIZE:
        return "overfit test"
    if train_size < SMALL_DATA_MAX:
        return "small (< 10K)"
    if train_size > LARGE_DATA_MIN:
        return "large (> 100K)"
    return "medium"


def starting_values(band: str) -> dict[str, float]:
    """The template's lr, weight decay and dropout, each moved into the band's range (to its nearer end): the
    fewest changes from the tested template that the table allows."""
    template = TrainConfig()
    values = {"lr": template.optim.lr, "weight_decay": template.optim.weight_decay,
              "dropout": template.model.dropout}
    return {name: min(max(value, low), high)
            for (name, value), (low, high) in zip(values.items(), BY_DATA_SIZE[band])}


def detect_gpu() -> tuple[str, float] | None:
    """(name, memory in GB) of GPU 0, or None without CUDA. Rounded to whole GB (1e9 bytes), as cards are sold:
    a "16 GB" card reports 15.8e9 bytes and belongs in the table's 16 GB row."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, float(round(props.total_memory / 1e9))


def plan_batch(memory_gb: float | None, global_batch: int) -> tuple[int | None, str]:
    """(micro-batch, why): the table's upper end for this memory, capped at the global batch; the lower end is
    the fallback on out-of-memory. None without a GPU."""
    if memory_gb is None:
        return None, (f"no GPU: the table's guess does not apply (CPU); keep the global batch {global_batch}, "
                      f"CPU memory is rarely the limit")
    guess = batch_guess(memory_gb)
    if guess is None:
        micro = min(BELOW_TABLE_MICRO_BATCH, global_batch)
        return micro, (f"{memory_gb:g} GB is below the table's 4 GB: start at micro-batch {micro} of the global "
                       f"{global_batch} ({global_batch // micro} accumulation steps)")
    micro = min(guess[1], global_batch)
    accumulation = global_batch // micro
    return micro, (f"{memory_gb:g} GB -> the table's {guess[0]}-{guess[1]}: micro-batch {micro} of the global "
                   f"{global_batch} ({'no accumulation' if accumulation == 1 else f'{accumulation} accumulation steps'}"
                   f"; {guess[0]} on out-of-memory)")


@functools.lru_cache(maxsize=1)
def model_table() -> tuple[tuple[str, dict, int, str], ...]:
    """(type, fields, real parameter count, the checklist's count) per row of the model table (built once: base
    takes a moment to initialise)."""
    from ..model import VisionTransformer, count_parameters

    rows = []
    for name, (fields, quoted) in MODEL_SIZES.items():
        model = VisionTransformer.from_config(ModelConfig(**fields), num_classes=MODEL_TABLE_CLASSES)
        rows.append((name, fields, count_parameters(model), quoted))
    return tuple(rows)


def flags(band: str, values: dict[str, float], micro_batch: int | None, global_batch: int) -> str:
    from .diagnose import fmt

    if band == "overfit test":
        return "--preset overfit"
    out = ["--preset tiny", f"--optim.lr {fmt(values['lr'])}", f"--optim.weight-decay {fmt(values['weight_decay'])}",
           f"--model.dropout {fmt(values['dropout'])}"]
    if micro_batch is not None and micro_batch < global_batch:
        out.append(f"--batch.micro-batch-size {micro_batch}")
    return " ".join(out)


@dataclass
class RecommendArgs:
    train_size: int
    """Number of training images (e.g. 45000 for CIFAR-10 less its 10% validation)."""
    gpu_memory_gb: Optional[float] = None
    """GPU memory in GB; default: GPU 0's, detected with torch.cuda (none on a CPU-only machine)."""


def main(argv: list[str] | None = None) -> int:
    from ..console import exit_on_user_error
    from .diagnose import fmt

    with exit_on_user_error():
        args = tyro.cli(RecommendArgs, args=argv, prog="vitdist recommend",
                        description="The checklist's quick-reference tables for your data-set size and GPU: a "
                                    "starting configuration and the flags that apply it.")
        if args.train_size <= 0:
            raise UserError(f"--train-size must be > 0 (the number of training images), got {args.train_size}")
        if args.gpu_memory_gb is not None and args.gpu_memory_gb <= 0:
            raise UserError(f"--gpu-memory-gb must be > 0 (omit it to detect the GPU), got {args.gpu_memory_gb}")

        band = size_band(args.train_size)
        values = starting_values(band)
        print(f"training set: {args.train_size:,} images -> {band}")
        print(f"  {'':<16}{'lr':<14}{'weight decay':<14}dropout")
        for name, ranges in BY_DATA_SIZE.items():
            cells = [fmt(lo) if lo == hi else f"{fmt(lo)} - {fmt(hi)}" for lo, hi in ranges]
            print(f"{'>' if name == band else ' '} {name:<16}{cells[0]:<14}{cells[1]:<14}{cells[2]}")
        print(f"start: lr {fmt(values['lr'])}, weight decay {fmt(values['weight_decay'])}, dropout "
              f"{fmt(values['dropout'])} (the template's values, moved into the row's range)")

        global_batch = BatchConfig().global_batch_size if band != "overfit test" else OVERFIT_TEST_SIZE
        if args.gpu_memory_gb is not None:
            memory, where = args.gpu_memory_gb, "given"
        else:
            gpu = detect_gpu()
            memory, where = (gpu[1], f"detected: {gpu[0]}") if gpu else (None, "no CUDA device found")
        micro, why = plan_batch(memory, global_batch)
        print(f"\nbatch size by GPU memory ({where}):")
        current = batch_guess(memory) if memory else None
        for at_least, (lo, hi) in BATCH_BY_GPU_MEMORY_GB[::-1]:
            mark = ">" if current == (lo, hi) else " "
            print(f"{mark} {at_least:>4.0f} GB{'+' if at_least == BATCH_BY_GPU_MEMORY_GB[0][0] else ' '}  {lo}-{hi}")
        print(f"{why}\n(`vitdist autobatch` measures the largest micro-batch that really fits)")

        print(f"\nmodel sizes ({MODEL_TABLE_CLASSES} classes, 32x32 input, patch 8; real parameter counts):")
        print(f"  {'type':<7}{'embed':>6}{'layers':>7}{'heads':>6}{'FFN':>6}{'params':>11}   checklist says")
        for name, f, params, quoted in model_table():
            print(f"  {name:<7}{f['embed_dim']:>6}{f['num_layers']:>7}{f['num_heads']:>6}{f['dim_feedforward']:>6}"
                  f"{params:>11,}   {quoted}")
        print("start with tiny (fast iteration); grow it when `vitdist diagnose` says underfitting.")

        print(f"\nflags (add your data's, e.g. --data.name, --data.root):\n  "
              f"{flags(band, values, micro, global_batch)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
