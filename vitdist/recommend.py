"""The checklist's quick-reference tables, as data (and, later, the `vitdist recommend` command)."""

from __future__ import annotations

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
