"""Issue 10: interrupts and preemption. Ctrl-C and SIGTERM finish the step, checkpoint it (inside an epoch too),
say how to continue and exit 130 / 143 without a traceback; the resume ends bit-identical to a run never
stopped. A second Ctrl-C stops at once. --checkpoint-every-steps. An elastic launcher restarts a killed rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from test_distributed import RANDOM_FLAGS, TINY_FLAGS, accelerate_launch, steps

FLAGS = [*TINY_FLAGS, *RANDOM_FLAGS, "--epochs", "3"]  # 8 steps an epoch, 24 in all; every random draw on
TIMING = ("epoch_time_s", "train_time_s", "images_per_s", "achieved_tflops")


def planted(*args, env: dict) -> subprocess.CompletedProcess:
    """vitdist.train in one process with tests/fail_on_rank.py's fault (FAIL_WITH) at optimizer step FAIL_STEP."""
    return subprocess.run([sys.executable, str(REPO / "tests" / "fail_on_rank.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "FAIL_RANK": "all", "FAIL_STEP": "0", **env})


def same_run(a, b) -> None:
    """Two run folders ended with the same steps, epoch rows (less timings) and weights, bit for bit."""
    assert steps(a) == steps(b)
    strip = lambda p: [{k: v for k, v in json.loads(r).items() if k not in TIMING} for r in open(p)]  # noqa: E731
    assert strip(a / "metrics.jsonl") == strip(b / "metrics.jsonl")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = planted(*FLAGS, "--run-dir", out, env={})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("signal_name,code", [("sigint", 130), ("sigterm", 143)])
def test_a_signal_checkpoints_the_step_and_the_resume_is_exact(tmp_path, straight, signal_name, code):
    run = tmp_path / "run"
    proc = planted(*FLAGS, "--run-dir", run, env={"FAIL_STEP": "13", "FAIL_WITH": signal_name})
    name = signal_name.upper()
    assert proc.returncode == code, proc.stderr[-3000:]
    assert f"vitdist: {name}: finishing this step, then saving a checkpoint" in proc.stderr
    checkpoint = run / "checkpoints" / "epoch_0001_step_00000013"  # step 13 finished, 5 steps into epoch 2
    assert (f"vitdist: stopped on {name} with a checkpoint in {checkpoint}. Continue with: vitdist train "
            f"--run-dir {run} --resume auto") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (checkpoint / "train_state.json").is_file() and len(steps(run)) == 13

    proc = planted("--run-dir", run, "--resume", "auto", env={})  # the command it printed (config.json holds the rest)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {checkpoint} at epoch 1, step 13 (5 steps into epoch 2)" in proc.stdout
    same_run(straight, run)


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    run = tmp_path / "run"
    proc = planted(*FLAGS, "--run-dir", run, env={"FAIL_STEP": "13", "FAIL_WITH": "sigint-twice"})
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "vitdist: second SIGINT: stopping now, without a checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0001"]  # nothing for step 13


def test_checkpoints_every_k_steps_resume_mid_epoch_after_a_kill(tmp_path, straight):
    run = tmp_path / "run"
    proc = planted(*FLAGS, "--checkpoint-every-steps", "5", "--run-dir", run,
                   env={"FAIL_STEP": "15", "FAIL_WITH": "sigkill"})
    assert proc.returncode == -9
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names[-1] == "epoch_0001_step_00000010", names  # steps 5 and 10 saved; 15 never finished
    proc = planted("--run-dir", run, "--resume", "auto", env={})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at epoch 1, step 10 (2 steps into epoch 2)" in proc.stdout
    same_run(straight, run)


@pytest.fixture(scope="module")
def straight_two(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight2") / "run"
    proc = accelerate_launch("-m", "vitdist.train", *FLAGS, "--run-dir", out, num_processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_signal_on_one_rank_stops_both_at_the_same_step(tmp_path, straight_two):
    """SIGTERM reaches rank 1 alone as step 13 begins. Its flag rides step 13's all-reduce; both ranks read it at
    the next read (every 2 steps here), stop after step 14, checkpoint it and exit 143; the resume is exact."""
    run = tmp_path / "run"
    proc = accelerate_launch(str(REPO / "tests" / "fail_on_rank.py"), *FLAGS, "--log.every-steps", "2",
                             "--run-dir", run, num_processes=2,
                             env_extra={"FAIL_RANK": "1", "FAIL_STEP": "13", "FAIL_WITH": "sigterm"})
    assert proc.returncode != 0
    assert proc.stderr.count("vitdist: stopped on SIGTERM with a checkpoint in "
                             f"{run / 'checkpoints' / 'epoch_0001_step_00000014'}") == 2, proc.stderr[-3000:]
    assert "accelerate launch --num_processes 2 -m vitdist.train --run-dir" in proc.stderr
    assert proc.stderr.count("exitcode  : 143") + proc.stderr.count("exitcode: 143") >= 1, proc.stderr[-3000:]
    proc = accelerate_launch("-m", "vitdist.train", "--run-dir", run, "--resume", "auto", num_processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at epoch 1, step 14 (6 steps into epoch 2)" in proc.stdout
    same_run(straight_two, run)


def test_an_elastic_launch_restarts_a_killed_rank_and_ends_bit_identical(tmp_path, straight_two):
    """`accelerate launch --max_restarts 2 ... --resume auto`: rank 1 is SIGKILLed as step 13 begins (a lost
    process, no checkpoint of its own). The launcher restarts both ranks, rank 1 three seconds late; the new group
    forms (without processes.join_restarted_group rank 0 reads the dead rank's address, still in the launcher's
    store, and fails) and continues from step 12's checkpoint."""
    run = tmp_path / "run"
    proc = accelerate_launch(str(REPO / "tests" / "fail_on_rank.py"), *FLAGS, "--checkpoint-every-steps", "4",
                             "--run-dir", run, "--resume", "auto", num_processes=2, extra=["--max_restarts", "2"],
                             env_extra={"FAIL_RANK": "1", "FAIL_STEP": "13", "FAIL_WITH": "sigkill",
                                        "RESTARTED_RANK_1_LATE": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no complete checkpoint" in proc.stdout  # the first attempt starts the folder
    assert "exitcode: -9" in proc.stderr or "exitcode  : -9" in proc.stderr, proc.stderr[-3000:]
    assert "at epoch 1, step 12 (4 steps into epoch 2)" in proc.stdout, proc.stdout
    same_run(straight_two, run)


def test_ranks_that_see_different_run_folders_stop_with_one_line(tmp_path):
    """Several nodes must share the run folder. Here rank 1 runs in another folder, so the relative --run-dir is
    not rank 0's: every rank says so and exits 2 at start, instead of hanging at the first checkpoint."""
    wrapper = tmp_path / "in_own_folder.py"
    wrapper.write_text("import os, sys\n"
                       "folders = sys.argv[1:3]\n"
                       "os.chdir(folders[int(os.environ['RANK'])])\n"
                       "from vitdist.train import main\n"
                       "sys.exit(main(sys.argv[3:]))\n")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    proc = accelerate_launch(wrapper, tmp_path / "a", tmp_path / "b", *TINY_FLAGS, "--run-dir", "run",
                             num_processes=2, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("vitdist: error: --run-dir run: 1 of 2 processes do not see the folder rank 0 "
                             "writes in") == 2, proc.stderr[-3000:]
    assert "(this one does)" in proc.stderr and "(this one does not)" in proc.stderr
    assert not (tmp_path / "a" / "run").exists()  # left as it was
