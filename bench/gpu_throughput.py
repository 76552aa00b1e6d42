"""Throughput and MFU of the trainer as users run it, for a grid of presets and patch sizes, eager and compiled,
then a torch.profiler summary of 20 training steps (top kernels, the GPU's busy share of the steps' wall time).
One Python process, so the profiled runs reuse the grid's compiled code. Written for bench/gpu_check.sh.

Each run is vitdist.train.train() on synthetic uint8 images held on the device (the fast path: DeviceBatches,
no host read inside a log interval, fused AdamW), `--epochs` epochs of `--steps` steps. The first epoch waits
for the compiler and is left out; the figures are the later epochs' metrics rows: images_per_s,
achieved_tflops and mfu, computed by the trainer itself (vitdist/flops.py). Each result line is printed and
appended to OUT/gpu_throughput.jsonl as soon as it is measured, so a run cut short by its time limit keeps
what it finished.

    python bench/gpu_throughput.py [--presets tiny small base] [--patches 4 8] [--precision bf16]
                                   [--batch 512] [--steps 30] [--epochs 3] [--profile small base] [--out DIR]

On a CPU it runs too (a check of the script, not a benchmark): use small --steps and --batch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import vitdist.train as vtrain
from vitdist.config import BatchConfig, TrainConfig
from vitdist.presets import get_preset

# Targets of issue 9 on one H200, bf16.
TARGETS = {("base", 4, True): ("mfu", 0.40), ("tiny", 8, None): ("images_per_s", 100_000)}
BUSY_TARGET = 0.80  # small and base: the GPU busy this share of a step's wall time


def config(preset: str, patch: int, compiled: bool, args, run_dir: str, steps: int, epochs: int) -> TrainConfig:
    base = get_preset(preset)
    n_train = steps * args.batch
    n = n_train + max(args.batch, n_train // 20)  # a small validation split: the eval graph compiles, briefly
    return replace(
        base,
        model=replace(base.model, patch_size=patch),
        data=replace(base.data, name="synthetic", root=None, synthetic_size=n, val_fraction=(n - n_train) / n,
                     train_eval_size=args.batch),
        batch=BatchConfig(global_batch_size=args.batch),
        log=replace(base.log, wandb=False, tensorboard=False, progress=False),
        precision=args.precision, compile=compiled, epochs=epochs, early_stop_patience=0,
        test_at_end=False, resume=None, overwrite=True, run_dir=run_dir,
    )


def run(cfg: TrainConfig) -> dict:
    """train(cfg), its printing kept; the later epochs' throughput from metrics.jsonl."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        vtrain.train(cfg)
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:]
    header = next(line for line in printed.getvalue().splitlines() if line.startswith("vitdist: "))
    mfus = [r["mfu"] for r in later]
    return {
        "images_per_s": sum(r["images_per_s"] for r in later) / len(later),
        "achieved_tflops": sum(r["achieved_tflops"] for r in later) / len(later),
        "mfu": None if None in mfus else sum(mfus) / len(mfus),
        "first_epoch_s": rows[0]["epoch_time_s"], "wall_s": time.perf_counter() - t0,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "header": header,
    }


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (kernels on several streams may overlap)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def profile(cfg: TrainConfig, steps: int, skip: int) -> dict:
    """The trainer's optimizer steps skip+1 .. skip+steps under torch.profiler: top kernels by device time, and
    the share of those steps' wall time (first launch to last kernel) in which the GPU ran a kernel."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, record_function

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=activities)
    real_step, count = vtrain.optimizer_step, {"n": 0}

    def step(*a, **k):
        count["n"] += 1
        if count["n"] == skip + 1:
            if cuda:
                torch.cuda.synchronize()
            prof.start()
        if skip < count["n"] <= skip + steps:
            with record_function("bench::step"):
                out = real_step(*a, **k)
        else:
            out = real_step(*a, **k)
        if count["n"] == skip + steps:
            if cuda:
                torch.cuda.synchronize()
            prof.stop()
        return out

    vtrain.optimizer_step = step
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            vtrain.train(cfg)
    finally:
        vtrain.optimizer_step = real_step
    if count["n"] < skip + steps:
        raise RuntimeError(f"the run took {count['n']} steps, fewer than {skip} + {steps}")
    events = prof.events()
    marks = [e.time_range for e in events if e.name == "bench::step"]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA] if cuda else []
    out = {"steps": len(marks)}
    if kernels:
        start = min(m.start for m in marks)
        end = max(k.time_range.end for k in kernels)
        busy = union_length([(k.time_range.start, k.time_range.end) for k in kernels])
        out.update(wall_ms_per_step=(end - start) / 1e3 / len(marks), busy=busy / (end - start),
                   kernels_per_step=len(kernels) / len(marks))
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    try:
        out["table"] = prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60)
    except (AttributeError, KeyError, ValueError):  # renamed in some versions
        out["table"] = prof.key_averages().table(sort_by="self_device_time_total", row_limit=12,
                                                 max_name_column_width=60)
    return out


def measure(preset: str, patch: int, mode: str, args, root: Path, say) -> str | None:
    """One grid cell: a line of the table and of gpu_throughput.jsonl; the run's header line, None if it failed."""
    compiled = mode == "compiled"
    cfg = config(preset, patch, compiled, args, str(root / f"{preset}-p{patch}-{mode}"), args.steps, args.epochs)
    try:
        r = run(cfg)
    except Exception as e:  # noqa: BLE001 - one failed configuration must not stop the grid
        say(f"{preset:<6} {patch:>5} {mode:<8} FAILED: {type(e).__name__}: {str(e)[:300]}")
        return None
    target = ""
    for (p, k, c), (key, goal) in TARGETS.items():
        if (p, k) == (preset, patch) and c in (None, compiled) and torch.cuda.is_available():
            target = f"{key} >= {goal:g}: {'met' if r[key] >= goal else 'MISSED'}"
    mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a"
    mem = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "n/a"
    say(f"{preset:<6} {patch:>5} {mode:<8} {r['images_per_s']:>9.0f} {r['achieved_tflops']:>7.1f} {mfu:>6} "
        f"{r['first_epoch_s']:>9.1f} {mem:>7}  {target}")
    with open(Path(args.out_dir) / "gpu_throughput.jsonl", "a") as f:
        f.write(json.dumps({"preset": preset, "patch": patch, "mode": mode, **r}) + "\n")
    return r["header"]


def profile_report(preset: str, mode: str, args, root: Path, say) -> None:
    cfg = config(preset, 4, mode == "compiled", args, str(root / f"profile-{preset}-{mode}"),
                 steps=args.profile_steps + 10, epochs=1)  # 5 steps to warm up, 20 profiled, 5 after
    try:
        p = profile(cfg, args.profile_steps, skip=5)
    except Exception as e:  # noqa: BLE001
        say(f"profile {preset} patch 4 {mode}: FAILED: {type(e).__name__}: {str(e)[:300]}")
        return
    if "busy" in p:
        verdict = f"target >= {BUSY_TARGET}: {'met' if p['busy'] >= BUSY_TARGET else 'MISSED'}"
        say(f"profile {preset} patch 4 {mode}: {p['steps']} steps, {p['wall_ms_per_step']:.2f} ms a step, GPU busy "
            f"{p['busy']:.1%} of it ({verdict}), {p['kernels_per_step']:.0f} kernels a step")
    else:
        say(f"profile {preset} patch 4 {mode}: {p['steps']} steps (no GPU: no busy share)")
    say(p["table"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--patches", nargs="+", type=int, default=[8, 4])
    parser.add_argument("--precision", default="bf16", choices=["auto", "no", "tf32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, default=512, help="global batch, one process")
    parser.add_argument("--steps", type=int, default=30, help="steps an epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first is left out (compiling, warming up)")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--profile", nargs="*", default=["small", "base"], help="presets to profile, at patch 4")
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--out", default=None, help="folder for gpu_throughput.jsonl/.txt; default runs/gpu-check")
    args = parser.parse_args()
    out = Path(args.out or "runs/gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    args.out_dir = str(out)
    txt = out / "gpu_throughput.txt"
    (out / "gpu_throughput.jsonl").write_text("")
    root = Path(tempfile.mkdtemp(prefix="vitdist-gpu-"))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (a check of the script only)"
    lines = [f"bench/gpu_throughput.py, {time.strftime('%Y-%m-%d %H:%M')}: {device}, torch {torch.__version__}, "
             f"precision {args.precision}, global batch {args.batch}, {args.epochs} epochs x {args.steps} steps "
             f"(the first left out), synthetic images on the device",
             f"{'preset':<6} {'patch':>5} {'mode':<8} {'images/s':>9} {'TFLOPS':>7} {'MFU':>6} "
             f"{'epoch 1 s':>9} {'peak GB':>7}  target"]

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        txt.write_text("\n".join(lines) + "\n")

    for line in lines:
        print(line, flush=True)
    t_start, header = time.perf_counter(), "-"
    for preset in args.presets:
        for patch in args.patches:
            for mode in args.modes:
                header = measure(preset, patch, mode, args, root, say) or header
        if preset in args.profile:  # now, while this preset's compiled code is fresh in this process
            for mode in args.modes:
                profile_report(preset, mode, args, root, say)
    say(f"all: {time.perf_counter() - t_start:.0f} s; the last run's header: {header}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
