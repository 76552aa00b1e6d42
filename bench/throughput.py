"""vitdist's trainer against a bare PyTorch loop, eager against compiled, and host reads per step, side by side in
one run. Not a test; about two minutes on an idle 2-core CPU, several times that when other work shares the cores (the
CPU-share line then says the timings measured it too).

1. A bare loop: the same VisionTransformer, AdamW (vitdist.optim.build_optimizer, fused where the trainer fuses
   it), BatchAugment, label-smoothed cross-entropy and clip_grad_norm_ on the same batch, the training split held
   on the device and indexed by a permutation: nothing but the step. Images/s over --steps timed steps.
2. vitdist.train.train(cfg) on the same data, model and batch, --steps steps an epoch: training images/s from
   metrics.jsonl (epochs 2 on; the first is warmup), the epoch with its evaluation (epoch_time_s), and the whole
   epoch from one metrics row to the next (that adds the checkpoint). The two alternate (bare, trainer, bare,
   ..., bare): each trainer run is set against the mean of the bare runs either side of it, and each figure is
   the median of those ratios.
3. The bare loop under torch.compile(model) against eager, and the kernels of a step from torch.profiler: the
   bare loop eager and compiled, and train()'s step with what it adds by kernel name (on a CPU, which launches
   no kernels, the count is a proxy: see KERNELS_NOTE).
4. Host reads (Tensor.item/tolist/__float__/__int__/__bool__/__index__ outside torch.optim, counted as
   tests/test_train.py does) during train() at the default --log.every-steps, with epochs shorter than it.

    python bench/throughput.py [--preset tiny] [--patch-size 8] [--batch 128] [--steps 20] [--epochs 3]
                               [--repeats 5] [--precision auto] [--skip-compile] [--out FILE]

FILE defaults to bench/results/throughput_<device>.txt (cpu or cuda).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

import vitdist.train as vtrain
from vitdist.config import BatchConfig, TrainConfig
from vitdist.data.augment import BatchAugment
from vitdist.data.sources import load_data
from vitdist.model import VisionTransformer
from vitdist.optim import FUSED_DEVICES, build_optimizer
from vitdist.precision import mixed_precision, resolve_precision, use_tf32
from vitdist.presets import get_preset

HERE = Path(__file__).resolve().parent
# The presets' CIFAR epochs: the eval share of an epoch here copies theirs (train_eval_size of this many images).
SOURCE_TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000}
HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")
# Leaf aten ops that only make views or allocate: no kernel would run for them on a GPU.
NOT_KERNELS = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::_unsafe_view", "aten::as_strided",
    "aten::reshape", "aten::_reshape_alias", "aten::expand", "aten::expand_as", "aten::permute", "aten::transpose",
    "aten::t", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice", "aten::split",
    "aten::split_with_sizes", "aten::unbind", "aten::detach", "aten::detach_", "aten::alias", "aten::lift_fresh",
    "aten::resize_", "aten::set_", "aten::view_as", "aten::contiguous", "aten::flatten", "aten::numpy_T",
    "aten::result_type", "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense", "aten::to",
}
KERNELS_NOTE = {
    "cpu": "on a CPU, which launches no kernels, the proxy is CPU ops: leaf aten ops less views and allocations, "
           "plus inductor's generated C++ kernels",
    "cuda": "CUDA kernels from torch.profiler, memcpy and memset left out",
}
STEP_MARK = "bench::step"
# A timing during which this process got less of its cores than this (CPU time / wall / threads; 0.92-0.95 on an
# idle 2-core machine) measured other work too: on a CPU, such trainer runs are left out of the ratios.
SHARE_MIN = 0.9


def cpu_share(t0: float, cpu0: float) -> float:
    """The share of its threads' cores this process got since (t0, cpu0): about 1 on an idle machine, less when
    other work takes the cores (then its timings measure the other work too)."""
    return (time.process_time() - cpu0) / ((time.perf_counter() - t0) * torch.get_num_threads())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU runs behind the host: time whole steps, not their launches


def bench_config(args, steps: int, run_dir: str = "") -> TrainConfig:
    """The preset on synthetic data whose training split is `steps` global batches, eval in the preset's share."""
    base = get_preset(args.preset)
    vf = base.data.val_fraction
    n_train = steps * args.batch
    n = next(n for n in range(n_train, 2 * n_train + 10) if n - round(n * vf) >= n_train)
    source_train = SOURCE_TRAIN_IMAGES.get(base.data.name)
    train_eval = (max(1, round(base.data.train_eval_size * n_train / (source_train * (1 - vf))))
                  if source_train else min(base.data.train_eval_size, n_train))
    return replace(
        base,
        model=replace(base.model, patch_size=args.patch_size or base.model.patch_size),
        data=replace(base.data, name="synthetic", root=None, synthetic_size=n, train_eval_size=train_eval),
        batch=BatchConfig(global_batch_size=args.batch),
        log=replace(base.log, wandb=False, tensorboard=False, progress=False),
        precision=args.precision or base.precision,
        early_stop_patience=0, test_at_end=False, resume=None, overwrite=True, run_dir=run_dir,
    )


class BareLoop:
    """The training step with nothing around it; the data on the device, batches by indexing."""

    def __init__(self, cfg: TrainConfig, device: torch.device, compile_model: bool = False):
        data = load_data(cfg.data, cfg.model.img_size, cfg.seed)
        self.device, self.batch = device, cfg.batch.global_batch_size
        self.images, self.labels = data.train.images.to(device), data.train.labels.to(device)
        self.steps_per_pass = len(self.labels) // self.batch
        torch.manual_seed(cfg.seed)
        model = VisionTransformer.from_config(cfg.model, data.num_classes).to(device).train()
        self.optimizer = build_optimizer(model, cfg.optim, fused=device.type in FUSED_DEVICES)  # as train() picks
        self.model = torch.compile(model) if compile_model else model
        self.params = list(model.parameters())
        self.augment = BatchAugment(cfg.data, data.num_classes).to(device)
        self.label_smoothing, self.max_norm = cfg.label_smoothing, cfg.optim.max_grad_norm or math.inf
        mixed = mixed_precision(cfg.precision)  # accelerate's autocast around the model's forward, as train() has it
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)
        self.scaler = torch.amp.GradScaler(device.type) if mixed == "fp16" else None
        self.order, self.i = None, self.steps_per_pass

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.i == self.steps_per_pass:
            self.order, self.i = torch.randperm(len(self.labels), device=self.device), 0
        idx = self.order[self.i * self.batch:(self.i + 1) * self.batch]
        self.i += 1
        return self.images[idx], self.labels[idx]

    def step(self) -> None:
        x, y = self.next_batch()
        inputs, targets = self.augment(x, y)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logits = self.model(inputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def images_per_s(self, steps: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            self.step()
        sync(self.device)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        sync(self.device)
        self.cpu_share = cpu_share(t0, cpu0)
        return steps * self.batch / (time.perf_counter() - t0)


def run_trainer(cfg: TrainConfig) -> dict:
    """train(cfg) with its own output hidden; images/s of the epochs after the first, three ways."""
    stamps = []  # when each epoch's metrics row is written: row to row is a whole epoch, checkpoint included
    real_append = getattr(vtrain, "append_jsonl", None)

    def stamped(path, rows):
        if Path(path).name == "metrics.jsonl":
            stamps.append(time.perf_counter())
        real_append(path, rows)

    threads = torch.get_num_threads()
    t0, cpu0 = time.perf_counter(), time.process_time()
    if real_append is not None:
        vtrain.append_jsonl = stamped
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            vtrain.train(cfg)
    finally:
        if real_append is not None:
            vtrain.append_jsonl = real_append
    if torch.get_num_threads() != threads:
        raise RuntimeError(f"train() changed torch's threads from {threads} to {torch.get_num_threads()}")
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:]
    images = [(b["step"] - a["step"]) * cfg.batch.global_batch_size for a, b in zip(rows, rows[1:])]
    out = {"steps_per_epoch": rows[0]["step"], "cpu_share": cpu_share(t0, cpu0),
           "training": sum(images) / sum(n / r["images_per_s"] for n, r in zip(images, later)),
           "epoch": sum(images) / sum(r["epoch_time_s"] for r in later)}
    out["whole"] = sum(images) / (stamps[-1] - stamps[0]) if len(stamps) == len(rows) else None
    return out


@contextlib.contextmanager
def counting_host_reads():
    """Every read of a tensor's value on the host made outside torch.optim, as Counter('module:function')."""
    reads = Counter()
    own = {name: torch.Tensor.__dict__.get(name) for name in HOST_READS}
    for name in HOST_READS:
        def read(self, *args, _real=getattr(torch.Tensor, name), **kwargs):
            caller = sys._getframe(1)
            module = caller.f_globals.get("__name__", "")
            if not module.startswith("torch.optim"):
                reads[f"{module}:{caller.f_code.co_name}"] += 1
            return _real(self, *args, **kwargs)
        setattr(torch.Tensor, name, read)
    try:
        yield reads
    finally:
        for name, real in own.items():
            if real is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, real)


def host_reads(args, root: Path, short: int = 2, long: int = 4) -> dict:
    """Reads during train() with epochs shorter than --log.every-steps: 1 epoch of `short` steps, 2 of `short`,
    2 of `long`. Their differences split the count into what a step, an epoch and the startup add."""
    base = bench_config(args, short)
    counts = {}
    for epochs, steps in ((1, short), (2, short), (2, long)):
        cfg = bench_config(args, steps, str(root / f"reads_{epochs}x{steps}"))
        # The same evaluation in every run: only the training steps differ.
        cfg = replace(cfg, epochs=epochs, data=replace(
            cfg.data, val_subset=round(base.data.synthetic_size * base.data.val_fraction),
            train_eval_size=base.data.train_eval_size))
        with counting_host_reads() as sites, contextlib.redirect_stdout(io.StringIO()):
            vtrain.train(cfg)
        counts[epochs, steps] = sum(sites.values())
    step = (counts[2, long] - counts[2, short]) / (2 * (long - short))
    epoch = counts[2, short] - counts[1, short] - step * short
    return {"every": base.log.every_steps, "short": short, "long": long, "counts": counts, "sites": sites,
            "per_step": counts[2, long] / (2 * long), "step": step, "epoch": epoch,
            "startup": counts[1, short] - epoch - step * short}


def kernel_events(events, cuda: bool) -> list[tuple[float, str]]:
    """(host start time, name) of each kernel among the profiler events. On CUDA: the kernels the host ops
    launched. On a CPU: each innermost op that computes, an aten op with no such op below it that is not a view or
    an allocation (NOT_KERNELS), or an inductor C++ kernel."""
    if cuda:
        return [(e.time_range.start, k.name) for e in events for k in e.kernels
                if not k.name.startswith(("Memcpy", "Memset"))]
    found = []

    def visit(e) -> int:  # the kernels at or below e
        below = sum(visit(c) for c in e.cpu_children)
        if below == 0 and (e.name.startswith("cpp_fused")
                           or (e.name.startswith("aten::") and e.name not in NOT_KERNELS)):
            found.append((e.time_range.start, e.name))
            return 1
        return below

    for e in events:
        if e.cpu_parent is None and e.device_type.name == "CPU":
            visit(e)
    return found


def profile(fn, device: torch.device):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    return prof.events()


def kernels_per_step(events, cuda: bool, skip: int = 0) -> tuple[Counter, Counter]:
    """Kernels by name per step: (inside the STEP_MARK ranges, between consecutive ones), placed by the host time
    their op starts at (on a GPU, backward runs on another host thread). The first `skip` ranges are left out."""
    # The host's ranges only: on a GPU, record_function also leaves a range on the device's own clock.
    marks = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.name == STEP_MARK and e.device_type.name == "CPU")[skip:]
    starts = [m[0] for m in marks]
    inside, between = Counter(), Counter()
    if not marks:
        raise RuntimeError(f"no {STEP_MARK} ranges in the profile: was optimizer_step renamed?")
    for t, name in kernel_events(events, cuda):
        i = bisect.bisect_right(starts, t) - 1
        if i >= 0 and t <= marks[i][1]:
            inside[name] += 1 / len(marks)
        elif 0 <= i < len(marks) - 1:
            between[name] += 1 / (len(marks) - 1)
    return inside, between


def bare_kernels_per_step(loop: BareLoop, steps: int = 3) -> tuple[float, Counter]:
    """(all kernels, kernels by name as the host ops claim them) per step of the bare loop."""
    from torch.profiler import record_function

    def run():
        for _ in range(steps):
            with record_function(STEP_MARK):
                loop.step()

    events = profile(run, loop.device)
    by_name = kernels_per_step(events, loop.device.type == "cuda")[0]
    if loop.device.type == "cuda":  # every kernel on the device, whether or not a host op claims it
        return sum(1 for e in events if e.device_type.name == "CUDA" and e.name != STEP_MARK
                   and not e.name.startswith(("Memcpy", "Memset"))) / steps, by_name
    return sum(by_name.values()), by_name


def trainer_kernels_per_step(cfg: TrainConfig, device: torch.device) -> tuple[Counter, Counter]:
    """Kernels by name per step of train() in one short epoch, its first step left out (it creates AdamW's
    state): (inside optimizer_step, between two of them: the batch, the lr, the sums)."""
    from torch.profiler import record_function

    real = vtrain.optimizer_step

    def marked(*a, **k):
        with record_function(STEP_MARK):
            return real(*a, **k)

    vtrain.optimizer_step = marked
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            events = profile(lambda: vtrain.train(replace(cfg, epochs=1)), device)
    finally:
        vtrain.optimizer_step = real
    return kernels_per_step(events, device.type == "cuda", skip=1)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
        name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                    platform.processor() or "CPU")
    import accelerate

    return (f"{device.type}: {name}; torch {torch.__version__}, accelerate {accelerate.__version__}, "
            f"python {platform.python_version()}; torch threads {torch.get_num_threads()}")


def spread(ratios: list[float], what: str = "runs") -> str:
    return f"{statistics.median(ratios):.3f}  ({min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} {what})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--patch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--batch", type=int, default=128, help="global batch, on one process")
    parser.add_argument("--steps", type=int, default=20, help="timed bare steps, and the trainer's steps an epoch")
    parser.add_argument("--epochs", type=int, default=3, help="trainer epochs a run; the first is warmup")
    parser.add_argument("--repeats", type=int, default=5, help="trainer runs, each between two bare runs")
    parser.add_argument("--precision", choices=["auto", "no", "tf32", "bf16", "fp16"], default=None,
                        help="default: the preset's")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--out", default=None, help="default: bench/results/throughput_<device>.txt")
    args = parser.parse_args()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # train() runs on the current device; the bare loop on the same one
    out = Path(args.out) if args.out else HERE / "results" / f"throughput_{device.type}.txt"
    root = Path(tempfile.mkdtemp(prefix="vitdist-throughput-"))
    cfg = bench_config(args, args.steps, str(root / "trainer"))
    # Resolved once, as train() resolves it; both sides then run the same precision (and TF32 setting).
    cfg = replace(cfg, epochs=max(args.epochs, 2), precision=resolve_precision(cfg.precision, device))
    use_tf32(cfg.precision)
    threads = torch.get_num_threads()
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:5.0f} s] {msg}", file=sys.stderr, flush=True)

    # --- bare loop and trainer, alternating: each trainer run between two bare runs, against their mean
    bare = BareLoop(cfg, device)
    bare_ips, bare_shares, trainer_runs = [], [], []
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for r in range(args.repeats + 1):
        bare_ips.append(bare.images_per_s(args.steps))
        bare_shares.append(bare.cpu_share)
        log(f"bare loop {bare_ips[-1]:.0f} images/s")
        if r < args.repeats:
            trainer_runs.append(run_trainer(cfg))
            log(f"trainer run {r + 1}/{args.repeats}: {trainer_runs[-1]['training']:.0f} images/s training")
    if trainer_runs[0]["steps_per_epoch"] != args.steps:
        raise RuntimeError(f"the trainer ran {trainer_runs[0]['steps_per_epoch']} steps an epoch, not {args.steps}")
    written = json.loads((root / "trainer" / "config.json").read_text())["precision"]
    if written != cfg.precision:
        raise RuntimeError(f"train() ran precision {written}, the bare loop {cfg.precision}")
    with counting_host_reads() as bare_reads:
        bare.images_per_s(2, warmup=0)

    # --- kernels per step: the bare loop, the trainer
    bare_kernels, bare_names = bare_kernels_per_step(bare)
    in_step_names, between_names = trainer_kernels_per_step(bench_config(args, 5, str(root / "profile")), device)
    in_step, between = sum(in_step_names.values()), sum(between_names.values())
    log(f"kernels a step: bare loop {bare_kernels:.0f}; trainer {in_step:.0f} + {between:.0f} between steps")

    # --- the bare loop compiled against eager
    compiled = None
    if not args.skip_compile:
        if device.type == "cpu":
            import torch._inductor.config as inductor_config

            inductor_config.cpp.enable_kernel_profile = True  # generated C++ kernels show in torch.profiler
        loop = BareLoop(cfg, device, compile_model=True)
        t0 = time.perf_counter()
        loop.images_per_s(1, warmup=2)  # compiles forward and backward
        compile_s = time.perf_counter() - t0
        log(f"compiled in {compile_s:.0f} s")
        eager_ips, compiled_ips, compile_shares = [], [], []
        for _ in range(2):  # alternating, as above
            eager_ips.append(bare.images_per_s(args.steps))
            compiled_ips.append(loop.images_per_s(args.steps))
            compile_shares += [bare.cpu_share, loop.cpu_share]
            log(f"eager {eager_ips[-1]:.0f}, compiled {compiled_ips[-1]:.0f} images/s")
        compiled = {"compile_s": compile_s, "eager": eager_ips, "ips": compiled_ips, "share": min(compile_shares),
                    "kernels": bare_kernels_per_step(loop)[0]}

    # --- host reads during train()
    reads = host_reads(args, root)
    log("host reads counted")
    if torch.get_num_threads() != threads:
        raise RuntimeError(f"torch's threads changed from {threads} to {torch.get_num_threads()} during the run")

    # --- the table
    n_val = round(cfg.data.synthetic_size * cfg.data.val_fraction)
    lines = [
        f"bench/throughput.py, {time.strftime('%Y-%m-%d')}: {args.preset} preset, patch {cfg.model.patch_size} "
        f"({cfg.model.num_patches} tokens + class token), global batch {args.batch} on one process, precision "
        f"{cfg.precision}, synthetic uint8 images in memory",
        f"machine: {machine(device)}, the same for every part",
        f"trainer: train(), {args.repeats} runs of {cfg.epochs} epochs x {args.steps} steps, the first epoch "
        f"dropped; an epoch also evaluates {n_val} val + {cfg.data.train_eval_size} clean train images (the preset's "
        f"share of its epoch) and saves a checkpoint",
        f"bare loop: {args.steps} timed steps (after 2 warmup) before and after each trainer run, {args.batch} "
        f"images a step on both sides; a ratio is a run against the mean of the bare runs either side of it, the "
        f"median over the runs (range)",
        "",
        f"{'':<50}{'images/s':>9}   vs bare loop",
        f"{'bare loop, eager':<50}{statistics.median(bare_ips):>9.0f}   1",  # all its runs
    ]
    # A run counts where the process had its cores through it and the bare runs either side (always on a GPU).
    clean = [k for k, t in enumerate(trainer_runs) if device.type != "cpu"
             or min(bare_shares[k], bare_shares[k + 1], t["cpu_share"]) >= SHARE_MIN]
    used = clean or list(range(len(trainer_runs)))
    labels = {"training": ("trainer, training (images_per_s)", 0.95),
              "epoch": ("trainer, epoch + eval (epoch_time_s)", None),
              "whole": ("trainer, whole epoch (+ checkpoint, row to row)", 0.93)}
    for key, (label, target) in labels.items():
        if any(t[key] is None for t in trainer_runs):
            lines.append(f"{label:<50}{'n/a':>9}   (vitdist.train.append_jsonl is gone: no row times)")
            continue
        ratios = [t[key] / ((a + b) / 2) for t, a, b in zip(trainer_runs, bare_ips, bare_ips[1:])]
        picked = [ratios[k] for k in used]
        verdict = ""
        if target is not None and device.type == "cpu":  # the targets are this CPU's
            met = "met" if statistics.median(picked) >= target else "MISSED"
            verdict = f"   target >= {target}: {met if clean else 'not judged, no clean run'}"
        if len(used) < len(ratios):
            verdict += f"; all {len(ratios)} runs {statistics.median(ratios):.3f}"
        lines.append(f"{label:<50}{statistics.median([trainer_runs[k][key] for k in used]):>9.0f}   "
                     f"{spread(picked, 'clean runs' if clean else 'runs')}" + verdict)
    if compiled is not None:
        ratios = [c / e for c, e in zip(compiled["ips"], compiled["eager"])]
        lines += [f"{'bare loop, eager (beside compiled)':<50}{statistics.median(compiled['eager']):>9.0f}",
                  f"{'bare loop, torch.compile(model)':<50}{statistics.median(compiled['ips']):>9.0f}   "
                  f"{spread(ratios, 'pairs')} of eager beside it; compiling took {compiled['compile_s']:.0f} s"
                  + (f" (CPU share down to {compiled['share']:.2f}: other work in these timings)"
                     if device.type == "cpu" and compiled["share"] < SHARE_MIN else "")]
    both = in_step_names + between_names
    extra = sorted(((name, both[name] - bare_names[name]) for name in set(both) | set(bare_names)),
                   key=lambda kv: -abs(kv[1]))
    shares = bare_shares + [t["cpu_share"] for t in trainer_runs]
    if device.type == "cpu":
        load = f"; load average {load_start:.1f} at the start" if load_start is not None else ""
        lines += [f"CPU share this process got (CPU time / wall / threads; 1 = the cores to itself): bare loop "
                  f"{min(bare_shares):.2f}-{max(bare_shares):.2f}, trainer runs "
                  f"{min(t['cpu_share'] for t in trainer_runs):.2f}-{max(t['cpu_share'] for t in trainer_runs):.2f}"
                  + load]
        if not clean:
            lines.append(f"  every trainer run or a bare run beside it got less than {SHARE_MIN} of the cores: other "
                         f"work took them, and the ratios above measure it too; rerun on an idle machine")
        elif min(shares) < SHARE_MIN:
            lines.append(f"  {len(trainer_runs) - len(clean)} of {len(trainer_runs)} trainer runs left out of the "
                         f"ratios: it or a bare run beside it got less than {SHARE_MIN} of the cores")
    lines += ["", f"kernels per step ({KERNELS_NOTE[device.type]}):",
              f"  bare loop eager {bare_kernels:.0f}"
              + (f", compiled {compiled['kernels']:.0f} (compiled / eager {compiled['kernels'] / bare_kernels:.2f})"
                 if compiled is not None else ", compiled skipped (--skip-compile)"),
              f"  trainer {in_step + between:.0f} ({in_step:.0f} in optimizer_step, {between:.0f} between steps: "
              f"the batch, the lr, the sums), {(in_step + between) / bare_kernels:.2f} of the bare loop's",
              "  the trainer's step against the bare loop's, by name: " + ", ".join(
                  f"{name[:60]} {n:+.0f}" for name, n in extra[:8] if round(n))]
    sites = ", ".join(f"{site} {n}" for site, n in reads["sites"].most_common())
    short, long, counts = reads["short"], reads["long"], reads["counts"]
    lines += ["", f"host reads (Tensor.item/tolist/__float__/__int__/__bool__/__index__ outside torch.optim) in "
                  f"train(), --log.every-steps {reads['every']}, epochs shorter than that:",
              f"  2 epochs x {long} steps: {counts[2, long]} reads = {reads['per_step']:.2f} per optimizer step; "
              f"against 2 x {short} ({counts[2, short]}) and 1 x {short} ({counts[1, short]}): "
              f"{reads['step']:.2f} a step + {reads['epoch']:.0f} an epoch + {reads['startup']:.0f} at startup",
              f"  where (2 x {long}): {sites}",
              f"  bare loop: {sum(bare_reads.values()) / 2:.0f} per step",
              "", f"wall time {time.perf_counter() - t_start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
