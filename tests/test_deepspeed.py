"""DeepSpeed ZeRO on CPU with 2 real processes (gloo): the same curve as DDP, exact resume, a plain export."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from test_distributed import (TINY_FLAGS, accelerate_launch, check_killed_and_resumed_is_bit_identical,
                              check_nan_on_rank_1_stops_both, steps)

pytest.importorskip("deepspeed", reason="DeepSpeed is the optional [deepspeed] extra")

FLAGS = [*TINY_FLAGS, "--epochs", "3", "--optim.warmup-epochs", "1"]  # 24 optimizer steps
# CPU fp32: ZeRO partitions the same arithmetic, so curves agree to round-off (measured ~1e-6 relative).
CURVE_RTOL = 1e-4


def zero_flags(stage: int) -> list[str]:
    return ["--use_deepspeed", "--zero_stage", str(stage), "--gradient_accumulation_steps", "1",
            "--gradient_clipping", "1.0", "--zero3_save_16bit_model", "true"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = accelerate_launch("-m", "vitdist.train", *FLAGS, "--run-dir", out, num_processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("stage,micro", [(2, None), (3, None), (2, 8)])
def test_zero_matches_ddp(tmp_path, ddp_run, stage, micro):
    """micro 8: each rank's 16 samples in 2 micro-batches, accumulated in DeepSpeed's terms (its
    gradient_accumulation_steps, set from vitdist's plan), against DDP's single pass."""
    run = tmp_path / f"zero{stage}"
    micro_flags = ["--batch.micro-batch-size", str(micro)] if micro else []
    proc = accelerate_launch("-m", "vitdist.train", *FLAGS, *micro_flags, "--run-dir", run, num_processes=2,
                             extra=zero_flags(stage))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"DeepSpeed ZeRO-{stage}" in proc.stdout, proc.stdout[-2000:]  # not DDP under another name
    assert f"micro-batch {micro or 16} x {2 if micro else 1} accumulation" in proc.stdout
    ours, ref = steps(run), steps(ddp_run)
    assert len(ours) == len(ref) == 24
    for a, b in zip(ours, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=CURVE_RTOL), (stage, a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (stage, a, b)
        assert a["lr"] == pytest.approx(b["lr"])

    # The exported weights are a plain state dict: a VisionTransformer with no DeepSpeed reproduces the
    # engine's validation numbers at the best epoch.
    acc, loss, best = plain_model_on_val(run, torch.float32)
    assert acc == pytest.approx(best["val_acc"])
    assert loss == pytest.approx(best["val_loss"], rel=1e-4)


def plain_model_on_val(run, dtype):
    """(accuracy, loss, the best epoch's metrics row): model.safetensors in a plain VisionTransformer."""
    from vitdist.config import from_dict
    from vitdist.data.augment import BatchAugment
    from vitdist.data.sources import load_data
    from vitdist.model import VisionTransformer

    cfg = from_dict(json.loads((run / "config.json").read_text()))
    results = json.loads((run / "results.json").read_text())
    data = load_data(cfg.data, cfg.model.img_size, cfg.seed)
    model = VisionTransformer.from_config(cfg.model, data.num_classes)
    weights = load_file(run / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {dtype}
    model.load_state_dict(weights)  # load_state_dict copies into the fp32 parameters
    model.to(dtype).eval()
    x = torch.stack([data.val[i][0] for i in range(len(data.val))])
    y = torch.stack([data.val[i][1] for i in range(len(data.val))])
    with torch.no_grad():
        logits = model(BatchAugment(cfg.data, data.num_classes).normalize(x).to(dtype)).float()
    acc = (logits.argmax(-1) == y).float().mean().item()
    best = [json.loads(r) for r in open(run / "metrics.jsonl")][results["best_epoch"] - 1]
    assert results["best_val_acc"] == best["val_acc"]
    return acc, torch.nn.functional.cross_entropy(logits, y).item(), best


def test_zero2_in_bf16_holds_and_exports_bf16_weights(tmp_path):
    """DeepSpeed's bf16 mode holds the model itself in bf16 (no autocast): the trainer feeds it bf16 inputs,
    and the exported weights, bf16, run in a plain VisionTransformer to the engine's validation numbers."""
    run = tmp_path / "bf16"
    proc = accelerate_launch("-m", "vitdist.train", *FLAGS, "--precision", "bf16", "--run-dir", run,
                             num_processes=2, extra=zero_flags(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "precision bf16 (torch.bfloat16 weights); DeepSpeed ZeRO-2" in proc.stdout, proc.stdout[-2000:]
    assert all(math.isfinite(row["loss"]) for row in steps(run))
    acc, loss, best = plain_model_on_val(run, torch.bfloat16)
    assert acc == pytest.approx(best["val_acc"], abs=1 / 64)  # 64 validation images: one may flip in bf16
    assert loss == pytest.approx(best["val_loss"], rel=1e-2)


@pytest.mark.parametrize("config", ["zero1", "zero3", "zero3_offload"])  # zero2: launch/deepspeed.sh below
def test_shipped_zero_configs_follow_ddp(tmp_path, ddp_run, config):
    """configs/*.yaml as launch/deepspeed.sh passes them (their JSON's "auto" filled from vitdist's flags):
    the first epoch, all warmup in both runs, takes DDP's steps."""
    run = tmp_path / config
    proc = accelerate_launch("-m", "vitdist.train", *FLAGS, "--epochs", "1", "--run-dir", run, num_processes=2,
                             extra=["--config_file", str(REPO / "configs" / f"{config}.yaml")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"DeepSpeed ZeRO-{config[4]}" in proc.stdout, proc.stdout[-2000:]
    assert ("(param and optimizer offloaded)" in proc.stdout) == ("offload" in config)
    ours, ref = steps(run), steps(ddp_run)[:8]
    assert len(ours) == 8
    for a, b in zip(ours, ref):
        assert a["lr"] == pytest.approx(b["lr"])
        assert a["loss"] == pytest.approx(b["loss"], rel=CURVE_RTOL), (config, a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (config, a, b)


def test_launch_deepspeed_sh_runs_for_real(tmp_path, ddp_run):
    """launch/deepspeed.sh as a user types it, from another folder, with the real accelerate (not a stand-in):
    the command it builds (--config_file configs/zero2.yaml plus --deepspeed_config_file ds_zero2.json) runs
    ZeRO-2 on 2 processes and takes DDP's first 8 steps."""
    run, bin_dir = tmp_path / "run", tmp_path / "bin"
    # This environment's accelerate, and nothing else of its bin/: a second ninja (pip's, beside the system's)
    # would rebuild DeepSpeed's JIT-compiled CPU op (30-40 s) here and again in the next test.
    bin_dir.mkdir()
    (bin_dir / "accelerate").symlink_to(Path(sys.executable).parent / "accelerate")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # it would turn DeepSpeed into DDP
    env.update(OMP_NUM_THREADS="1", PATH=f"{bin_dir}:{env['PATH']}")
    proc = subprocess.run(["bash", str(REPO / "launch" / "deepspeed.sh"), "2", "2", *FLAGS, "--epochs", "1",
                           "--run-dir", str(run)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"+ accelerate launch --config_file {REPO}/configs/zero2.yaml "
                                  f"--deepspeed_config_file {REPO}/configs/ds_zero2.json --num_processes 2 ")
    assert "2 process(es) x micro-batch 16 x 1 accumulation" in proc.stdout and "DeepSpeed ZeRO-2;" in proc.stdout
    ours, ref = steps(run), steps(ddp_run)[:8]
    assert len(ours) == 8
    for a, b in zip(ours, ref):
        assert a["lr"] == pytest.approx(b["lr"])
        assert a["loss"] == pytest.approx(b["loss"], rel=CURVE_RTOL), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (a, b)


def test_zero2_killed_and_resumed_ends_where_an_uninterrupted_run_does(tmp_path):
    """Dropout, drop path and augmentation on, so every rank's generators must come back from the checkpoint."""
    check_killed_and_resumed_is_bit_identical(tmp_path, FLAGS, "DeepSpeed ZeRO-2", extra=zero_flags(2))


@pytest.mark.parametrize("zero", [False, True])
def test_one_rank_raising_ends_every_rank(tmp_path, zero):
    t0 = time.time()
    proc = accelerate_launch(str(REPO / "tests" / "fail_on_rank.py"), *FLAGS, "--run-dir", tmp_path / "run",
                             num_processes=2, extra=zero_flags(2) if zero else (), timeout=180,
                             env_extra={"FAIL_RANK": "1", "FAIL_STEP": "3"})
    assert proc.returncode != 0
    assert "planted failure on rank 1" in proc.stderr
    assert ("DeepSpeed ZeRO-2" if zero else "; DDP;") in proc.stdout
    assert time.time() - t0 < 180


def test_a_nan_on_one_rank_stops_both_under_zero2(tmp_path):
    """As under DDP (test_distributed.py): vitdist, not the launcher, stops both ranks, with exit 1 and advice."""
    check_nan_on_rank_1_stops_both(tmp_path / "run", "DeepSpeed ZeRO-2", extra=zero_flags(2))


def test_an_average_of_the_weights_is_refused_under_zero3_and_follows_zero2(tmp_path):
    """--ema.decay: under ZeRO-3 (each rank holds a shard) one line on every rank, exit 2, nothing written;
    under ZeRO-2 the average runs and is evaluated."""
    proc = accelerate_launch("-m", "vitdist.train", *TINY_FLAGS, "--ema.decay", "0.9", "--run-dir", tmp_path / "z3",
                             num_processes=2, extra=zero_flags(3), timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.count("vitdist: error: --ema.decay does not run under DeepSpeed ZeRO-3") == 2, \
        proc.stderr[-2000:]
    assert not (tmp_path / "z3").exists()
    proc = accelerate_launch("-m", "vitdist.train", *TINY_FLAGS, "--epochs", "1", "--ema.decay", "0.9",
                             "--run-dir", tmp_path / "z2",
                             num_processes=2, extra=zero_flags(2), timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "z2" / "metrics.jsonl")]
    assert all(0 <= r["val_acc_ema"] <= 1 for r in rows)
