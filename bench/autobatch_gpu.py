"""autobatch on one GPU: tiny, small and base in bf16. Not a test; a few minutes on an H200.

For each preset, on the whole GPU and within an emulated smaller card (--budgets-gb, where the search meets
the memory wall below its cap), it prints: the measured largest micro-batch, the analytic estimate against
torch.cuda.max_memory_allocated at that batch (the ratio should be within 0.8-1.2), and images/s at the
micro-batch autobatch would use (the largest less its 10% margin).

    python bench/autobatch_gpu.py [--budgets-gb 0 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from vitdist.scale import autobatch as ab
from vitdist.scale import memory as mem
from vitdist.presets import get_preset

NUM_CLASSES = 10  # CIFAR-10's head, as the presets train


def images_per_s(cfg, device: torch.device, batch: int, steps: int) -> float:
    probe = mem.StepProbe(cfg, NUM_CLASSES, device)
    try:
        for _ in range(3):  # warm-up: kernels picked, allocator settled
            probe.step(batch)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            probe.step(batch)
        torch.cuda.synchronize(device)  # the GPU runs behind the host: wait for the last step
        return steps * batch / (time.perf_counter() - t0)
    finally:
        probe.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--budgets-gb", nargs="+", type=float, default=[0, 8],
                        help="memory budgets to measure within, in GB; 0 is the whole GPU")
    parser.add_argument("--max-batch", type=int, default=ab.DEFAULT_MAX_BATCH)
    parser.add_argument("--steps", type=int, default=10, help="timed steps for images/s")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/autobatch_gpu.py: no GPU here; this benchmark measures GPU memory, so there is nothing to do")
        return 0
    device = torch.device("cuda", 0)
    total = torch.cuda.get_device_properties(device).total_memory
    print(f"{torch.cuda.get_device_name(device)}, {total / mem.GB:.1f} GB; torch {torch.__version__}; bf16; "
          f"search cap {args.max_batch:,}")
    print(f"{'budget':>8} {'preset':<6} {'largest':>8} {'safe':>7} {'estimate':>10} {'measured':>10} {'est/meas':>8} "
          f"{'images/s':>10} {'search_s':>8}")
    ratios = []
    for budget in args.budgets_gb:
        for name in args.presets:
            cfg = replace(get_preset(name), precision="bf16")
            m = mem.measure(cfg, NUM_CLASSES, device, args.max_batch, memory_gb=budget or None)
            if m.largest == 0:
                print(f"{budget or total / mem.GB:>7.0f}G {name:<6} not even a micro-batch of 1 fits")
                continue
            est = mem.estimate_memory(cfg.model, NUM_CLASSES, "bf16").peak(m.largest)
            ratios.append(est / m.peak_bytes)
            safe = ab.with_margin(m.largest)
            speed = images_per_s(cfg, device, safe, args.steps)
            print(f"{budget or total / mem.GB:>7.0f}G {name:<6} {m.largest:>7,}{'+' if m.capped else ' '} {safe:>7,} "
                  f"{est / mem.GB:>8.2f}GB {m.peak_bytes / mem.GB:>8.2f}GB {ratios[-1]:>8.2f} {speed:>10,.0f} "
                  f"{m.seconds:>8.1f}")
    within = sum(0.8 <= r <= 1.2 for r in ratios)
    print(f"estimate within 20% of torch.cuda.max_memory_allocated: {within}/{len(ratios)}  "
          f"('+': the search cap was reached, more may fit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
