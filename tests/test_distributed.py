"""Real processes: 2 CPU processes over gloo take the steps 1 process takes on the same global batch; a killed
2-process run resumes bit-identical; a NaN on one rank stops both."""

import json
import math
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import REPO

TINY_FLAGS = ["--data.name", "synthetic", "--data.synthetic-size", "320", "--data.val-fraction", "0.2",
              "--data.train-eval-size", "64", "--data.no-augment", "--model.embed-dim", "32", "--model.num-layers",
              "2", "--model.num-heads", "2", "--model.dim-feedforward", "64", "--model.dropout", "0",
              "--batch.global-batch-size", "32", "--epochs", "2", "--early-stop-patience", "0",
              "--log.no-tensorboard"]
# Every draw a resume must restore, per rank: dropout, drop path, crop and flip.
RANDOM_FLAGS = ["--model.dropout", "0.1", "--model.drop-path-rate", "0.1", "--data.augment"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(*args, num_processes: int, extra=(), env_extra=None) -> tuple[list[str], dict]:
    # DeepSpeed, by flag or by config file, runs on CPU through its own CPU accelerator. ACCELERATE_USE_CPU
    # would silently turn such a launch into plain DDP (MULTI_CPU), and --multi_gpu asks for DDP outright.
    deepspeed = bool({"--use_deepspeed", "--config_file"} & set(map(str, extra)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({} if deepspeed else {"ACCELERATE_USE_CPU": "true"}),
           **(env_extra or {})}
    multi = ["--multi_gpu"] if num_processes > 1 and not deepspeed else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *multi, "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), *extra, *map(str, args)]
    return cmd, env


def accelerate_launch(*args, num_processes: int, extra=(), timeout=300, env_extra=None):
    cmd, env = launch_command(*args, num_processes=num_processes, extra=extra, env_extra=env_extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def launch_killed_at(step: int, *args, num_processes: int, extra=()) -> None:
    """Launch vitdist.train with every rank SIGKILLed as its `step`-th optimizer step begins: the job dies mid-epoch,
    with nothing written after the last checkpoint."""
    proc = accelerate_launch(str(REPO / "tests" / "fail_on_rank.py"), *args, num_processes=num_processes,
                             extra=extra, env_extra={"FAIL_RANK": "all", "FAIL_STEP": str(step),
                                                     "FAIL_WITH": "sigkill"})
    assert proc.returncode != 0 and "planted failure" not in proc.stderr, proc.stderr[-3000:]


def steps(run_dir):
    return [json.loads(line) for line in open(run_dir / "steps.jsonl")]


def test_two_processes_match_one(tmp_path):
    one = accelerate_launch("-m", "vitdist.train", *TINY_FLAGS, "--run-dir", tmp_path / "one", num_processes=1)
    assert one.returncode == 0, one.stderr[-3000:]
    # Rank 0 writes results.json a second late: rank 1 must still return from train() only once it is whole.
    two = accelerate_launch(REPO / "tests" / "fail_on_rank.py", *TINY_FLAGS, "--run-dir", tmp_path / "two",
                            num_processes=2, env_extra={"FAIL_RANK": "0", "FAIL_STEP": "0", "FAIL_WITH": "late-record"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es) x micro-batch 16 x 1 accumulation = global batch 32" in two.stdout
    assert "; DDP;" in two.stdout and "; one process;" in one.stdout

    # Every step's logged loss is the mean over both ranks' halves of the global batch, as one process sees it.
    s1, s2 = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert len(s1) == len(s2) == 16
    for a, b in zip(s1, s2):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4), (a, b)
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-4), (a, b)
        assert a["lr"] == b["lr"]

    a = load_file(tmp_path / "one" / "checkpoints" / "epoch_0002" / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoints" / "epoch_0002" / "model.safetensors")
    # atol as in the accumulation test: Adam turns round-off in zero-true-gradient parameters into tiny steps.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=k)
    rows = lambda run: [json.loads(x) for x in open(tmp_path / run / "metrics.jsonl")]  # noqa: E731
    for m1, m2 in zip(rows("one"), rows("two"), strict=True):
        assert abs(m1["val_loss"] - m2["val_loss"]) < 1e-4
        assert m1["val_acc"] == m2["val_acc"]  # 64 validation images, split across ranks and gathered back
        assert math.isclose(m1["train_loss"], m2["train_loss"], rel_tol=1e-4)
        assert m1["train_acc"] == m2["train_acc"]
    assert len(list((tmp_path / "two" / "checkpoints" / "epoch_0002").glob("random_states_*.pkl"))) == 2


def test_two_processes_killed_and_resumed_end_bit_identical(tmp_path):
    """DDP, with dropout, drop path and augmentation on: each rank draws its own numbers, so a resume must
    restore each rank's generators, not rank 0's everywhere nor a fresh seed."""
    check_killed_and_resumed_is_bit_identical(tmp_path, [*TINY_FLAGS, "--epochs", "3"], "; DDP;")


def check_killed_and_resumed_is_bit_identical(tmp_path, flags: list, engine: str, extra=()) -> None:
    """flags: 3 epochs of 8 steps. Every rank dies at step 20 (epoch 3); the resume from epoch 2 must end with
    the uninterrupted run's steps and weights, bit for bit, with every random draw on."""
    flags = [*flags, *RANDOM_FLAGS]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = accelerate_launch("-m", "vitdist.train", *flags, "--run-dir", straight, num_processes=2, extra=extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    launch_killed_at(20, *flags, "--run-dir", killed, num_processes=2, extra=extra)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["epoch_0002"]

    proc = accelerate_launch("-m", "vitdist.train", *flags, "--run-dir", killed, "--resume", "auto",
                             num_processes=2, extra=extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at epoch 2, step 16" in proc.stdout and engine in proc.stdout
    assert steps(killed) == steps(straight)
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_nan_on_one_rank_stops_both_with_exit_1_and_advice(tmp_path):
    """Rank 1's loss turns NaN at its 12th step (epoch 2): both ranks stop at that step, name the loss, print the
    checklist's advice without a traceback and exit 1; epoch 1's checkpoint is kept, and the bad step logged."""
    check_nan_on_rank_1_stops_both(tmp_path / "run", "; DDP;")


def check_nan_on_rank_1_stops_both(run, engine: str, extra=()) -> None:
    """extra: a DeepSpeed launch's flags; its checkpoints hold the engine's own files, not model.safetensors."""
    proc = accelerate_launch(str(REPO / "tests" / "fail_on_rank.py"), *TINY_FLAGS, "--run-dir", run,
                             num_processes=2, extra=extra, timeout=180,
                             env_extra={"FAIL_RANK": "1", "FAIL_STEP": "12", "FAIL_WITH": "nan"})
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert engine in proc.stdout
    stopped = "vitdist: training stopped: non-finite loss at epoch 2, step 12 (lr "
    assert proc.stderr.count(stopped) == 2, proc.stderr[-3000:]  # one line from each rank
    assert proc.stderr.count("Try: lower the learning rate 10x") == 2
    assert "Diverged" not in proc.stderr and "vitdist/train.py" not in proc.stderr  # no traceback of ours
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0001"]
    if not extra:
        for tensor in load_file(run / "checkpoints" / "epoch_0001" / "model.safetensors").values():
            assert torch.isfinite(tensor).all()
    last = steps(run)[-1]
    assert last["step"] == 12 and last["epoch"] == 2 and math.isnan(last["loss"])
    assert [json.loads(x)["epoch"] for x in open(run / "metrics.jsonl")] == [1]
