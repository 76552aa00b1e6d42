"""Test helper: vitdist.train's main, recording on each rank the weights every optimizer step left (read after
train.optimizer_step returns, before anything else sees them) and, with --ema.decay, the moving average as
training left it (not as the end's reload of the best checkpoint leaves it: that is rank 0's copy on every rank).
Written to $RECORD_DIR/rank<R>.pt when the run ends: {"steps": [state dict, ...], "average": state dict or None}.
The run itself is left alone: the same steps, the same files."""

import os
import sys
from pathlib import Path

import torch
from timm.utils.model_ema import ModelEmaV3

import vitdist.train.epoch as epoch_mod
from vitdist.train.command import main as command_main
import vitdist.train.step as step_mod

record = {"steps": [], "average": None}
real_optimizer_step, real_init, real_update = step_mod.optimizer_step, ModelEmaV3.__init__, ModelEmaV3.update


def optimizer_step(accelerator, model, *args, **kwargs):
    out = real_optimizer_step(accelerator, model, *args, **kwargs)
    weights = accelerator.unwrap_model(model).state_dict()
    record["steps"].append({k: v.detach().clone() for k, v in weights.items()})
    return out


def keep_average(ema):  # as made, and after each update: how often the trainer updates it is what is tested
    record["average"] = {k: v.detach().clone() for k, v in ema.module.state_dict().items()}


def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    keep_average(self)


def update(self, *args, **kwargs):
    real_update(self, *args, **kwargs)
    keep_average(self)


epoch_mod.optimizer_step, ModelEmaV3.__init__, ModelEmaV3.update = optimizer_step, init, update
code = command_main(sys.argv[1:])
torch.save(record, Path(os.environ["RECORD_DIR"]) / f"rank{os.environ.get('RANK', '0')}.pt")
sys.exit(code)
