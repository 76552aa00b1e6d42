"""The analytic memory estimate against the peak of a real training step, on CPU. Not a test; about a minute.

For each preset, precision, dropout and micro-batch: one step as autobatch's probe runs it (forward, backward,
clip, AdamW), with every live tensor followed by PyTorch's MemTracker (the CPU's stand-in for
torch.cuda.max_memory_allocated), beside vitdist.scale.memory.estimate_memory(..., device_type="cpu").
On a GPU, bench/autobatch_gpu.py makes the same comparison against the CUDA allocator.

    python bench/memory_estimate.py [--presets tiny small base] [--batches 1 32 256]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch
from torch.distributed._tools.mem_tracker import MemTracker

from vitdist.scale.memory import StepProbe, estimate_memory
from vitdist.presets import get_preset

NUM_CLASSES = 10


def tracked_peak(probe: StepProbe, batch: int) -> int:
    tracker = MemTracker()
    tracker.track_external(probe.model, probe.optimizer)
    with tracker:
        probe.step(batch)
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32, 256])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU; patch 8 on 32px (17 tokens), {NUM_CLASSES} classes")
    print(f"{'preset':<6} {'precision':>9} {'dropout':>7} {'batch':>6} {'tracked':>10} {'estimate':>10} "
          f"{'est/tracked':>11}")
    ratios = []
    for name in args.presets:
        for precision in ("no", "bf16"):
            for dropout in (0.0, 0.1):
                base = get_preset(name)
                cfg = replace(base, precision=precision, model=replace(base.model, dropout=dropout))
                est = estimate_memory(cfg.model, NUM_CLASSES, precision, device_type="cpu")
                torch.manual_seed(0)
                probe = StepProbe(cfg, NUM_CLASSES, torch.device("cpu"))
                for batch in args.batches:
                    peak = tracked_peak(probe, batch)
                    ratios.append(est.peak(batch) / peak)
                    print(f"{name:<6} {precision:>9} {dropout:>7} {batch:>6} {peak / 1e6:>8.1f}MB "
                          f"{est.peak(batch) / 1e6:>8.1f}MB {ratios[-1]:>11.3f}")
                probe.close()
    print(f"estimate / tracked peak: {min(ratios):.3f} to {max(ratios):.3f} over {len(ratios)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
