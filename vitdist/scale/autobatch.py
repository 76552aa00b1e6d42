"""`vitdist autobatch`: the largest micro-batch that fits on this GPU, measured, beside an analytic estimate.

    vitdist autobatch --preset base --precision bf16 [--zero-stage 2] [--global-batch 1024] [train flags]
    accelerate launch --config_file configs/zero2.yaml -m vitdist.scale.autobatch --preset base   # every rank measures

The measurement (memory.measure) runs real training steps (forward, backward, clipping, AdamW) of the config's
model at its precision, growing the micro-batch by doubling until a step runs out of memory, then bisecting.
Each trial's verdict is the minimum over all ranks, so every rank walks the same search and ends with the same
answer. This module turns it into a plan: SAFETY_MARGIN is taken off, and accumulation keeps the global batch.
Results are cached per GPU, model, precision and ZeRO stage in ~/.cache/vitdist/autobatch.json (VITDIST_CACHE
moves it).

The trainer's --batch.auto calls resolve_micro_batch(); next_plan_after_oom() and note_oom() are its fallback
when a step still runs out of memory later.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Callable, Optional

import torch
import tyro

from ..config import ConfigError, DATASET_CLASSES, ModelConfig, TrainConfig, UserError
from ..precision import resolve_precision
from .memory import GB, Measurement, all_ranks_min, estimate_memory, measure, print_estimate, vit_param_counts
from .plan import (CUDA_MAX_BATCH, DEFAULT_MAX_BATCH, SAFETY_MARGIN, check_micro_batch, per_rank_batch, plan_batches,
                   search_cap, with_margin)


def cache_path() -> Path:
    return Path(os.environ.get("VITDIST_CACHE") or "~/.cache/vitdist").expanduser() / "autobatch.json"


def cache_key(gpu: str, memory_bytes: float, m: ModelConfig, num_classes: int, precision: str, zero_stage: int,
              offload: bool = False) -> str:
    dims = (f"img{m.img_size} patch{m.patch_size} ch{m.in_channels} d{m.embed_dim} L{m.num_layers} "
            f"h{m.num_heads} ffn{m.dim_feedforward} cls{num_classes} dropout{int(m.dropout > 0)}")
    return (f"{gpu} {memory_bytes / GB:.1f}GB | {dims} | {precision} | zero{zero_stage}{'+offload' * offload} | "
            f"torch {torch.__version__}")


def read_cache(key: str) -> Optional[dict]:
    try:
        entry = json.loads(cache_path().read_text()).get(key)
        return entry if isinstance(entry, dict) and isinstance(entry.get("largest"), int) else None
    except (OSError, ValueError, AttributeError):
        return None  # no cache yet, or a damaged one: measure


def write_cache(key: str, measurement: Measurement) -> None:
    path = cache_path()
    try:
        entries = json.loads(path.read_text())
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = {"largest": measurement.largest, "capped": measurement.capped,
                    "peak_bytes": measurement.peak_bytes, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def measure_cached(cfg: TrainConfig, num_classes: int, device: torch.device, max_batch: int, zero_stage: int = 0,
                   offload: bool = False, memory_gb: Optional[float] = None, refresh: bool = False,
                   reduce_min: Optional[Callable[[int], int]] = None, progress: bool = False) -> Measurement:
    """measure(), or the cached result for this GPU, model, precision and stage when it covers max_batch.

    Every rank must call it: whether to use the cache is agreed over all ranks before any measuring.
    """
    reduce_min = reduce_min or all_ranks_min(device)
    memory = memory_gb * GB if memory_gb else torch.cuda.get_device_properties(device).total_memory
    key = cache_key(torch.cuda.get_device_name(device), memory, cfg.model, num_classes, cfg.precision,
                    zero_stage, offload)
    entry = None if refresh else read_cache(key)
    usable = entry is not None and (not entry.get("capped") or entry["largest"] >= max_batch)
    if reduce_min(int(usable)):
        return Measurement(reduce_min(entry["largest"]), bool(entry.get("capped")), entry.get("peak_bytes"), 0,
                           0.0, cached=True)
    result = measure(cfg, num_classes, device, max_batch, memory_gb, reduce_min=reduce_min, progress=progress)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        write_cache(key, result)
    return result


def resolve_micro_batch(cfg: TrainConfig, world_size: int, device, zero_stage: int = 0,
                        log: Callable[[str], None] = print) -> int:
    """--batch.auto: the micro-batch for this run, the same on every rank (every rank must call it).

    On a GPU: the cached or measured largest micro-batch (searched up to the per-rank batch), less
    SAFETY_MARGIN, rounded down to a divisor of the per-rank batch; accumulation = per-rank batch / micro.
    Without a GPU there is nothing to measure: the whole per-rank batch, no accumulation.
    """
    if cfg.batch.micro_batch_size is not None:
        raise UserError(f"--batch.auto measures the micro-batch: drop --batch.micro-batch-size "
                        f"{cfg.batch.micro_batch_size}, or drop --batch.auto to keep it")
    per_rank = per_rank_batch(cfg.batch.global_batch_size, world_size)
    device = torch.device(device)
    if device.type != "cuda":
        log(f"--batch.auto: no GPU, nothing to measure: micro-batch {per_rank} (global / {world_size} processes)")
        return per_rank
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))  # the trainer's resolved one
    num_classes = classes_of(cfg)
    m = measure_cached(cfg, num_classes, device, search_cap(per_rank), zero_stage)
    if m.largest == 0:
        raise UserError(f"--batch.auto: even a micro-batch of 1 runs out of memory on "
                        f"{torch.cuda.get_device_name(device)}: use --precision bf16, a smaller model, or ZeRO-3 "
                        f"with CPU offload (launch/deepspeed.sh 3-offload)")
    micro, accum = plan_batches(cfg.batch.global_batch_size, with_margin(m.largest), world_size)
    how = "cached" if m.cached else f"measured in {m.seconds:.0f} s"
    log(f"--batch.auto: largest micro-batch that ran: {m.largest}{'+' if m.capped else ''} ({how}, "
        f"{cache_path()}); less {SAFETY_MARGIN:.0%}: micro-batch {micro} x {accum} accumulation x "
        f"{world_size} processes = global batch {cfg.batch.global_batch_size}")
    return micro


def note_oom(cfg: TrainConfig, device, micro_batch: int, zero_stage: int = 0) -> None:
    """A training step ran out of memory at micro_batch: lower the cached result so that the next --batch.auto
    run (a restart with --resume auto, say) starts below it. Call it on the rank that hit the error."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    key = cache_key(torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory,
                    cfg.model, classes_of(cfg), cfg.precision, zero_stage)
    entry = read_cache(key)
    if entry is None or entry["largest"] >= micro_batch:
        write_cache(key, Measurement(micro_batch - 1, False, None, 0, 0.0))


@dataclass(frozen=True)
class AutobatchArgs:
    train: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)
    zero_stage: Optional[int] = None
    """DeepSpeed ZeRO stage the run will use: 0 (DDP, nothing sharded), 1, 2 or 3. Default: the --config-file's,
    else that of the DeepSpeed launch this runs under (accelerate launch --config_file configs/zero2.yaml), else
    0. The measurement itself runs without DeepSpeed (a lower bound for every stage); the estimate shows what
    the stage saves."""
    offload: bool = False
    """ZeRO with parameters and optimizer state in CPU memory (as configs/zero3_offload.yaml)."""
    config_file: Optional[str] = None
    """An accelerate config (configs/*.yaml): its ZeRO stage and offload apply."""
    global_batch: Optional[int] = None
    """The global batch to plan for; default: --batch.global-batch-size."""
    num_processes: Optional[int] = None
    """Processes (GPUs) the run will use; default: WORLD_SIZE under a launcher, else 1."""
    memory_gb: Optional[float] = None
    """Measure as if the GPU had only this much memory (GB): to plan for a smaller card, or leave room."""
    max_batch: int = DEFAULT_MAX_BATCH
    """Largest micro-batch tried (at most 65,535: CUDA's attention kernels put the batch on a grid axis)."""
    safety_margin: float = SAFETY_MARGIN
    """Share taken off the largest micro-batch that ran (fragmentation, evaluation, other processes)."""
    refresh: bool = False
    """Measure again even when the cache holds a result for this GPU, model, precision and stage."""

    def __post_init__(self):
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"--zero-stage {self.zero_stage} is not a ZeRO stage: choose 0 (DDP), 1, 2 or 3")
        if self.config_file is not None and not Path(self.config_file).is_file():
            raise ConfigError(f"--config-file {self.config_file} does not exist: pass an accelerate config such "
                              f"as configs/zero2.yaml")
        for name in ("global_batch", "num_processes", "memory_gb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not 1 <= self.max_batch <= CUDA_MAX_BATCH:
            raise ConfigError(f"--max-batch must be in [1, {CUDA_MAX_BATCH}], got {self.max_batch}")
        if not 0 <= self.safety_margin < 1:
            raise ConfigError(f"--safety-margin must be in [0, 1), got {self.safety_margin}")


def parse_args(argv: list[str] | None) -> AutobatchArgs:
    from ..presets import parse_with_preset

    return parse_with_preset(AutobatchArgs, argv, "vitdist autobatch",
                             "Measure the largest micro-batch that fits and plan accumulation.")


def read_zero_config(path: str) -> tuple[int, bool]:
    """(ZeRO stage, offload) of an accelerate config YAML: 0 unless it is a DeepSpeed one."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"--config-file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or str(cfg.get("distributed_type")).upper() != "DEEPSPEED":
        return 0, False
    ds = cfg.get("deepspeed_config") or {}
    if ds.get("deepspeed_config_file"):
        json_path = Path(ds["deepspeed_config_file"])
        if not json_path.is_file():  # configs/*.yaml name their JSON from the repository root
            json_path = Path(path).resolve().parent.parent / json_path
        if not json_path.is_file():
            raise ConfigError(f"--config-file {path} names deepspeed_config_file {ds['deepspeed_config_file']}, "
                              f"which does not exist")
        return read_deepspeed_json(json_path)
    stage = ds.get("zero_stage", 2)
    offload = any(str(ds.get(k, "none")) != "none" for k in ("offload_param_device", "offload_optimizer_device"))
    return int(stage), offload


def read_deepspeed_json(path: Path) -> tuple[int, bool]:
    """(ZeRO stage, offload) of a DeepSpeed JSON config (configs/ds_zero*.json)."""
    zero = json.loads(path.read_text()).get("zero_optimization", {})
    return int(zero.get("stage", 0)), bool(offloaded(zero))


def offloaded(zero_optimization: dict) -> list[str]:
    """What a DeepSpeed config's zero_optimization section moves off the GPU: 'param', 'optimizer', both or none."""
    return [k.removeprefix("offload_") for k in ("offload_param", "offload_optimizer")
            if str((zero_optimization.get(k) or {}).get("device", "none")) not in ("none", "None")]


def launched_zero_config() -> tuple[int, bool]:
    """(ZeRO stage, offload) of the DeepSpeed launch this process runs under, from the variables accelerate launch
    sets (a config file's JSON, or --zero_stage and --offload_*_device); (0, False) outside one."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return 0, False
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        return read_deepspeed_json(Path(os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"]))
    offload = any(os.environ.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{k}_DEVICE", "none") not in ("none", "")
                  for k in ("PARAM", "OPTIMIZER"))
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")), offload


def classes_of(cfg: TrainConfig) -> int:
    return cfg.model.num_classes or DATASET_CLASSES.get(cfg.data.name, 10)


def run(args: AutobatchArgs) -> int:
    cfg = args.train
    stage, offload = read_zero_config(args.config_file) if args.config_file else launched_zero_config()
    stage = stage if args.zero_stage is None else args.zero_stage
    offload = offload or args.offload
    if offload and stage == 0:
        raise ConfigError("--offload needs DeepSpeed: add --zero-stage 3 (as configs/zero3_offload.yaml)")
    world = args.num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    flag = "--global-batch" if args.global_batch else "--batch.global-batch-size"
    global_batch = args.global_batch or cfg.batch.global_batch_size
    if cfg.batch.micro_batch_size is not None:
        check_micro_batch(global_batch, cfg.batch.micro_batch_size, world, flag)
    per_rank = per_rank_batch(global_batch, world, flag)

    say = print
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under a launcher: one group, one GPU per rank
        from accelerate import PartialState

        # Without a GPU, name gloo: a DeepSpeed launch would otherwise leave each CPU process on its own.
        state = PartialState(**({} if torch.cuda.is_available() else {"backend": "gloo"}))
        device, say = state.device, (print if state.is_main_process else (lambda *a, **k: None))
    else:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device(
            "cpu")
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))  # auto: what the trainer picks here
    m, k = cfg.model, classes_of(cfg)
    params, _ = vit_param_counts(m, k)
    say(f"model: ViT {m.embed_dim}/{m.num_layers}/{m.num_heads}/{m.dim_feedforward}, patch {m.patch_size} on "
        f"{m.img_size}px = {m.num_patches + 1} tokens, {params / 1e6:.2f}M parameters, {k} classes; precision "
        f"{cfg.precision}; ZeRO stage {stage}{' + CPU offload' if offload else ''}; {world} process(es)")
    planned = estimate_memory(m, k, cfg.precision, stage, world, offload, device.type)

    from .plan import BATCH_BY_GPU_MEMORY_GB, batch_guess

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = args.memory_gb * GB if args.memory_gb else total
        say(f"device: {torch.cuda.get_device_name(device)}, {total / GB:.1f} GB total, {free / GB:.1f} GB free"
            + (f"; measuring within {args.memory_gb:g} GB (--memory-gb)" if args.memory_gb else ""))
        guess = batch_guess(budget / GB)
        say(f"checklist table: {f'micro-batch {guess[0]}-{guess[1]}' if guess else 'below 4 GB: no row'} for "
            f"{budget / GB:.0f} GB (a starting guess)")
        # Up to --max-batch, not only what this global batch needs: the card's real limit is the news here.
        meas = measure_cached(cfg, k, device, args.max_batch, stage, offload, args.memory_gb, args.refresh,
                              progress=True)
        if meas.largest == 0:
            raise UserError(f"even a micro-batch of 1 runs out of memory on {torch.cuda.get_device_name(device)}: "
                            f"use --precision bf16, a smaller model, or --zero-stage 3 --offload")
        how = (f"cached in {cache_path()} (--refresh to measure again)" if meas.cached
               else f"{meas.trials} trials in {meas.seconds:.0f} s, doubling then bisecting")
        capped = " (the search cap, --max-batch: more may fit)" if meas.capped else ""
        say(f"measured: largest micro-batch whose step ran (forward, backward, clip, AdamW; no DeepSpeed), "
            f"minimum over ranks: {meas.largest:,}{capped} [{how}]")
        safe = with_margin(meas.largest, args.safety_margin)
        say(f"less the {args.safety_margin:.0%} safety margin: micro-batch {safe:,}")
        as_measured = estimate_memory(m, k, cfg.precision, 0, 1, False, "cuda")
        print_estimate(say, as_measured, meas.largest, meas.peak_bytes)
        if stage or world > 1:
            say(f"  the run ({f'ZeRO-{stage}' if stage else 'DDP'}{' + offload' if offload else ''} over {world} "
                f"process(es)), analytic: largest micro-batch within {budget / GB:.0f} GB "
                f"~{planned.max_batch(budget):,} (the measured {meas.largest:,} ran without it: a lower bound)")
            print_estimate(say, planned, safe)
    else:
        say("device: no GPU (CPU only): nothing to measure; what follows is estimated, not measured")
        rows = ", ".join(f"{gb:g} GB{'+' if i == 0 else ''}: {lo}-{hi}"
                         for i, (gb, (lo, hi)) in enumerate(BATCH_BY_GPU_MEMORY_GB))
        say(f"checklist table (by GPU memory; no GPU here to pick a row): {rows}")
        budget = available_memory() / 2
        safe = min(planned.max_batch(budget), CUDA_MAX_BATCH)
        say(f"CPU estimate (analytic, not measured): half the available RAM ({budget / GB:.1f} GB) holds a "
            f"micro-batch of ~{safe:,}")
        print_estimate(say, planned, max(1, min(safe, per_rank)))
        if safe == 0:
            raise UserError(f"the CPU estimate leaves no room for even one sample in {budget / GB:.1f} GB")
    micro, accum = plan_batches(global_batch, safe, world, flag)
    say(f"plan: global batch {global_batch} = {world} process(es) x micro-batch {micro} x {accum} accumulation "
        f"step(s)")
    say(f"flags: --batch.global-batch-size {global_batch} --batch.micro-batch-size {micro}"
        f"   (or let the trainer measure at start: --batch.auto)")
    return 0


def available_memory() -> float:
    """Bytes the system can still give (MemAvailable), for the CPU estimate."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    from ..console import exit_on_user_error

    with exit_on_user_error():
        return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
