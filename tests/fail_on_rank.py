"""Test helper: vitdist.train's main, but rank FAIL_RANK raises in its FAIL_STEP-th training forward."""

import os
import sys

import vitdist.train as train_mod

rank, fail_rank, fail_step = int(os.environ.get("RANK", 0)), int(os.environ["FAIL_RANK"]), int(os.environ["FAIL_STEP"])
real_forward = train_mod.VisionTransformer.forward
calls = {"n": 0}


def forward(self, x):
    if self.training:
        calls["n"] += 1
        if rank == fail_rank and calls["n"] == fail_step:
            raise RuntimeError(f"planted failure on rank {rank}")
    return real_forward(self, x)


train_mod.VisionTransformer.forward = forward
sys.exit(train_mod.main(sys.argv[1:]))
