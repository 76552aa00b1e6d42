"""Real processes: 2 CPU processes over gloo end with the weights 1 process reaches on the same global batch."""

import json
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*args, num_processes: int, extra=(), timeout=300, env_extra=None):
    # DeepSpeed, by flag or by config file, runs on CPU through its own CPU accelerator. ACCELERATE_USE_CPU
    # would silently turn such a launch into plain DDP (MULTI_CPU), and --multi_gpu asks for DDP outright.
    deepspeed = bool({"--use_deepspeed", "--config_file"} & set(map(str, extra)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({} if deepspeed else {"ACCELERATE_USE_CPU": "true"}),
           **(env_extra or {})}
    multi = ["--multi_gpu"] if num_processes > 1 and not deepspeed else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *multi, "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), *extra, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_two_processes_match_one(tmp_path):
    one = accelerate_launch("-m", "vitdist.train", *TINY_FLAGS, "--run-dir", tmp_path / "one", num_processes=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = accelerate_launch("-m", "vitdist.train", *TINY_FLAGS, "--run-dir", tmp_path / "two", num_processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es) x micro-batch 16 x 1 accumulation = global batch 32" in two.stdout
    assert "; DDP;" in two.stdout and "; one process;" in one.stdout

    a = load_file(tmp_path / "one" / "checkpoints" / "epoch_0002" / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoints" / "epoch_0002" / "model.safetensors")
    # atol as in the accumulation test: Adam turns round-off in zero-true-gradient parameters into tiny steps.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=k)
    rows = lambda run: [json.loads(x) for x in open(tmp_path / run / "metrics.jsonl")]  # noqa: E731
    for m1, m2 in zip(rows("one"), rows("two"), strict=True):
        assert abs(m1["val_loss"] - m2["val_loss"]) < 1e-4
        assert m1["val_acc"] == m2["val_acc"]  # 64 validation images, split across ranks and gathered back
    assert len(list((tmp_path / "two" / "checkpoints" / "epoch_0002").glob("random_states_*.pkl"))) == 2
