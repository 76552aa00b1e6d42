"""Test helper: vitdist.train's main with a fault planted in rank FAIL_RANK's (or, with "all", every rank's)
FAIL_STEP-th training forward. FAIL_WITH says which: "raise" (the default) raises; "nan" turns that forward's
logits NaN (a loss diverged on that rank alone); "sigkill" kills the process on the spot, as a lost machine
would (each rank of a launch sits in its own session, so killing the launcher would not reach them), at the
start of its FAIL_STEP-th optimizer step (the same count with one micro-batch a step; the model's forward is
left alone, so a --compile run compiles the real one). "sigint", "sigterm" and "sigint-twice" send those
signals there instead, as Ctrl-C, SLURM's preemption notice, and an impatient second Ctrl-C would. Under an
elastic launcher (--max_restarts), only the first attempt fails. "late-record" has rank FAIL_RANK
write results.json a second late, and every rank read it once train() returns. "slow-decode" makes every image
take 30 ms to decode (nothing fails: a signal is sent from outside). "late-start" has rank FAIL_RANK start
FAIL_STEP seconds after the others, as a slow node would (nothing fails). REPORT_GROUP=1 prints, once the command
returns, whether it left its process group up. FAIL_MAIN names another command's module
(vitdist.checklist.sweep, vitdist.checklist.tune): its trials' steps count as one sequence, so a signal lands
inside a chosen trial."""

import importlib
import os
import signal
import sys
import time

import vitdist.train.command as command_mod
import vitdist.train.epoch as epoch_mod
import vitdist.train.run as run_mod
import vitdist.train.step as step_mod
from vitdist.model import VisionTransformer

rank, fail_rank, fail_step = int(os.environ.get("RANK", 0)), os.environ["FAIL_RANK"], int(os.environ["FAIL_STEP"])
fail_with = os.environ.get("FAIL_WITH", "raise")
# Under an elastic launcher (--max_restarts), only the first attempt fails: the restarted group runs clean.
here = fail_rank in ("all", str(rank)) and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
real_forward = VisionTransformer.forward
real_optimizer_step = step_mod.optimizer_step
calls = {"n": 0}


def forward(self, x):
    if self.training:
        calls["n"] += 1
        if here and calls["n"] == fail_step:
            if fail_with == "nan":
                return real_forward(self, x) * float("nan")
            raise RuntimeError(f"planted failure on rank {rank}")
    return real_forward(self, x)


SIGNALS = {"sigkill": [signal.SIGKILL], "sigint": [signal.SIGINT], "sigterm": [signal.SIGTERM],
           "sigint-twice": [signal.SIGINT, signal.SIGINT]}


def optimizer_step(*args, **kwargs):
    calls["n"] += 1
    if here and calls["n"] == fail_step:
        for signum in SIGNALS[fail_with]:
            os.kill(os.getpid(), signum)
    return real_optimizer_step(*args, **kwargs)


# A restarted rank 1 that comes up late (RESTARTED_RANK_1_LATE seconds), as a slower node would: rank 0 then
# reads the group's addresses before rank 1 has written its new one.
if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" and rank == 1:
    time.sleep(float(os.environ.get("RESTARTED_RANK_1_LATE", "0")))

if fail_with == "late-start":
    if here:
        time.sleep(fail_step)
elif fail_with in SIGNALS:
    epoch_mod.optimizer_step = step_mod.optimizer_step = optimizer_step  # the run's, and lr_range's
elif fail_with == "late-record":  # rank FAIL_RANK writes results.json a second late; every rank, once train()
    # returns, must find it whole (a tune's or sweep's next step reads it on every rank)
    import json
    from pathlib import Path

    real_write, real_train = run_mod.write_atomically, command_mod.train

    def late_write(path, text):
        if here and Path(path).name == "results.json":
            time.sleep(1.0)
        real_write(path, text)

    def train_then_read(cfg):
        results = real_train(cfg)
        json.loads((Path(cfg.run_dir) / "results.json").read_text())  # raises where it is missing or half written
        return results

    run_mod.write_atomically, command_mod.train = late_write, train_then_read
elif fail_with == "slow-decode":  # each image takes 30 ms to decode: time to press Ctrl-C while the data decodes
    import vitdist.data.images as data_mod  # where FileImages decodes

    real_decode = data_mod.decode

    def slow_decode(image, img_size):
        time.sleep(0.03)
        return real_decode(image, img_size)

    data_mod.decode = slow_decode
else:
    VisionTransformer.forward = forward
code = importlib.import_module(os.environ.get("FAIL_MAIN", "vitdist.train")).main(sys.argv[1:])
if os.environ.get("REPORT_GROUP"):  # whether the command tore its process group down before returning
    import torch.distributed

    print(f"rank {rank}: process group left up: {torch.distributed.is_initialized()}", flush=True)
sys.exit(code)
