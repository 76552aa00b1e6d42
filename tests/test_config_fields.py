"""Issue 16, item 8: every field of every config is validated where the config is built. The table below holds,
for each field, values a user could type that must be refused; the first test holds the table to the
dataclasses themselves, so a new field without its bad values fails here."""

from __future__ import annotations

import dataclasses
import math

import pytest

from vitdist import config as C
from vitdist.after.evaluate import EvalArgs
from vitdist.after.predict import PredictArgs
from vitdist.train.command import parse_train_config

NAN, INF = math.nan, math.inf
# field (as the flag spells it, less its dashes) -> values that must be refused. Fields whose every value is fine
# (switches, free names) are listed in FREE with why.
BAD = {
    "model.img_size": [0, -32, 1.5], "model.patch_size": [0, -4, 3], "model.in_channels": [1, 4, 0],
    "model.embed_dim": [0, -8, 30], "model.num_layers": [0, -1], "model.num_heads": [0, 3],
    "model.dim_feedforward": [0, -1], "model.num_classes": [1, 0, -3], "model.dropout": [-0.1, 1.0, NAN],
    "model.drop_path_rate": [-0.1, 1.0, NAN],
    "data.name": ["mnist"], "data.root": [""], "data.val_fraction": [-0.1, 1.0, NAN],
    "data.train_subset": [0, -5], "data.val_subset": [0, -5], "data.train_eval_size": [0, -1],
    "data.synthetic_size": [0, -10, 5], "data.num_workers": [-1], "data.crop_padding": [-1],
    "data.rand_augment": ["9", "2,31", "0,9", "a,b"], "data.random_erasing": [-0.1, 1.5, NAN],
    "data.mixup_alpha": [-1.0, INF, NAN], "data.cutmix_alpha": [-1.0, INF, NAN],
    "data.mean": [(0.5, 0.5), (NAN, 0.5, 0.5), (INF, 0.0, 0.0)], "data.std": [(0.0, 0.5, 0.5), (-1.0, 1.0, 1.0),
                                                                               (0.5, 0.5), (NAN, 1.0, 1.0)],
    "optim.lr": [0.0, -1e-3, INF, NAN], "optim.weight_decay": [-1e-4, INF, NAN],
    "optim.betas": [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.9), (0.9,), (NAN, 0.9)],
    "optim.warmup_epochs": [-1.0, INF, NAN], "optim.min_lr": [-1e-6, 1.0, NAN],
    "optim.max_grad_norm": [-1.0, INF, NAN],
    "batch.global_batch_size": [0, -32], "batch.micro_batch_size": [0, -8, 48],
    "log.wandb_project": [""], "log.wandb_name": [""], "log.wandb_tags": [("",)], "log.wandb_group": [""],
    "log.progress_every_s": [-1.0, INF, NAN], "log.every_steps": [0, -1],
    "ema.decay": [-0.1, 1.0, NAN],
    "epochs": [0, -1], "precision": ["fp8"], "label_smoothing": [-0.1, 1.0, NAN], "early_stop_patience": [-1],
    "seed": [-1, 2**32], "run_dir": [""], "resume": [""], "checkpoint_every_epochs": [0, -1],
    "checkpoint_every_steps": [-1], "extend_lr": [0.0, -1e-3, INF, NAN],
}
FREE = {
    "data.download": "a switch", "data.skip_corrupt": "a switch", "data.augment": "a switch",
    "data.color_jitter": "a switch", "data.trivial_augment": "a switch (exclusive with rand_augment: tested below)",
    "batch.auto": "a switch", "log.wandb": "a switch", "log.tensorboard": "a switch", "log.progress": "a switch",
    "ema.warmup": "a switch", "ema.select_best": "a switch", "compile": "a switch", "overwrite": "a switch",
    "test_at_end": "a switch",
}


def fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else getattr(C, f.type, None)):
            yield from fields(getattr(C, f.type) if isinstance(f.type, str) else f.type, f"{f.name}.")
        else:
            yield prefix + f.name


def test_the_table_covers_every_field_of_every_config():
    every = set(fields(C.TrainConfig))
    assert every == set(BAD) | set(FREE), (sorted(every - set(BAD) - set(FREE)), sorted(set(BAD) - every))
    assert not set(BAD) & set(FREE)


def built_with(key: str, value) -> C.TrainConfig:
    base = C.TrainConfig()
    section, _, name = key.rpartition(".")
    if section:
        return dataclasses.replace(base, **{section: dataclasses.replace(getattr(base, section), **{name: value})})
    return dataclasses.replace(base, **{name: value})


@pytest.mark.parametrize("key, value", [(k, v) for k, values in BAD.items() for v in values],
                         ids=lambda x: str(x))
def test_every_bad_value_is_refused_where_the_config_is_built_naming_its_flag(key, value):
    flag = "--" + key.replace("_", "-")
    with pytest.raises(C.ConfigError) as e:
        built_with(key, value)
    message = str(e.value)
    assert flag in message and "\n" not in message, message


@pytest.mark.parametrize("argv, flag", [
    (["--model.in-channels", "1"], "--model.in-channels"), (["--data.crop-padding", "-2"], "--data.crop-padding"),
    (["--optim.betas", "0.9", "1.5"], "--optim.betas"), (["--data.std", "0", "0", "0"], "--data.std"),
    (["--optim.lr", "inf"], "--optim.lr"), (["--data.train-eval-size", "-5"], "--data.train-eval-size"),
    (["--optim.lr", "nan"], "--optim.lr"), (["--seed", "-1"], "--seed"),
])
def test_the_issues_flags_are_refused_on_the_command_line(argv, flag):
    with pytest.raises(C.ConfigError, match=flag):
        parse_train_config(argv)


def test_good_values_and_the_presets_still_build():
    from vitdist.presets import PRESETS

    for _, cfg in PRESETS.values():
        assert C.from_dict(C.to_dict(cfg)) == cfg
    built_with("data.rand_augment", "2,9")
    built_with("optim.betas", (0.0, 0.5))
    built_with("data.root", "/nowhere/at/all")  # a config is valid without its data (a run whose data moved)
    with pytest.raises(C.ConfigError, match="alternatives"):
        dataclasses.replace(C.DataConfig(), rand_augment="2,9", trivial_augment=True)


@pytest.mark.parametrize("cls, kwargs, flag", [
    (EvalArgs, {"run_dir": "r", "batch_size": 0}, "--batch-size"),
    (PredictArgs, {"run_dir": "r", "inputs": ("x",), "batch_size": 0}, "--batch-size"),
    (PredictArgs, {"run_dir": "r", "inputs": ("x",), "num_workers": -1}, "--num-workers"),
    (PredictArgs, {"run_dir": "r", "inputs": ("x",), "top_k": 0}, "--top-k"),
])
def test_eval_and_predict_arguments_are_validated_too(cls, kwargs, flag):
    with pytest.raises(C.UserError, match=flag):
        cls(**kwargs)
