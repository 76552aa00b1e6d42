"""Issue 10: a run folder is a record. config.json is written once; a resume takes it as the base, refuses any
flag that would change what a resume may not, and may only extend the run, with a rate that does not jump."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from vitdist import train as train_mod
from vitdist.train import epoch as epoch_mod
from vitdist.train import folder as folder_mod
from vitdist.config import TrainConfig, UserError
from vitdist.presets import changed_fields

FLAGS = ["--data.name", "synthetic", "--data.synthetic-size", "320", "--data.val-fraction", "0.2",
         "--data.train-eval-size", "64", "--model.embed-dim", "32", "--model.num-layers", "2", "--model.num-heads",
         "2", "--model.dim-feedforward", "64", "--batch.global-batch-size", "32", "--optim.warmup-epochs", "1",
         "--epochs", "3", "--early-stop-patience", "0", "--log.no-tensorboard", "--log.no-progress"]


def rows(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture
def finished(tmp_path):
    """A finished 3-epoch run (8 steps an epoch) at the default lr 1e-3, its folder's files as bytes."""
    run = tmp_path / "run"
    assert train_mod.main([*FLAGS, "--run-dir", str(run)]) == 0
    return run


def snapshot(run) -> dict:
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags,named", [
    (["--optim.lr", "5e-4"], "--optim.lr 0.0005 (the run has 0.001)"),
    (["--model.embed-dim", "256", "--model.dim-feedforward", "512"],
     "--model.embed-dim 256 (the run has 32), --model.dim-feedforward 512 (the run has 64)"),
    (["--preset", "small"], "--model.embed-dim 256 (the run has 32)"),
])
def test_a_resume_that_would_change_the_run_is_refused_and_touches_nothing(finished, capsys, flags, named):
    before = snapshot(finished)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train_mod.main(["--run-dir", str(finished), "--resume", "auto", *flags])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert "which this would change: " in err and named in err, err
    assert snapshot(finished) == before  # config.json, logs and checkpoints as they were


# Every field of TrainConfig and its sub-configs -> (a valid value other than BASE's, whether a resume may change
# it). Held to the dataclasses below: a new field fails the first test until it gets its row here. What may
# change is the README's list: --epochs (to extend), the logging flags, --data.num-workers, --data.root, the
# micro-batch (and --batch.auto, which picks it), --compile, the test/checkpoint cadence, and the resume's own
# flags (--resume, --run-dir, --overwrite, --extend-lr); everything else would change the run.
MAY, NOT = True, False
CHANGES = {
    "model.img_size": (16, NOT), "model.patch_size": (4, NOT), "model.embed_dim": (64, NOT),
    "model.num_layers": (3, NOT), "model.num_heads": (4, NOT), "model.dim_feedforward": (128, NOT),
    "model.num_classes": (10, NOT), "model.dropout": (0.1, NOT), "model.drop_path_rate": (0.1, NOT),
    "data.name": ("digits", NOT), "data.root": ("/data/moved/here", MAY), "data.download": (False, MAY),
    "data.val_fraction": (0.1, NOT), "data.train_subset": (100, NOT), "data.val_subset": (50, NOT),
    "data.train_eval_size": (32, NOT), "data.synthetic_size": (640, NOT), "data.num_workers": (2, MAY),
    "data.skip_corrupt": (True, NOT), "data.augment": (False, NOT), "data.crop_padding": (2, NOT),
    "data.color_jitter": (True, NOT), "data.rand_augment": ("2,9", NOT), "data.trivial_augment": (True, NOT),
    "data.random_erasing": (0.25, NOT), "data.mixup_alpha": (0.8, NOT), "data.cutmix_alpha": (1.0, NOT),
    "data.mean": ((0.4, 0.5, 0.6), NOT), "data.std": ((0.2, 0.25, 0.3), NOT),
    "optim.lr": (5e-4, NOT), "optim.weight_decay": (1e-3, NOT), "optim.betas": ((0.9, 0.95), NOT),
    "optim.warmup_epochs": (2.0, NOT), "optim.min_lr": (1e-5, NOT), "optim.max_grad_norm": (0.5, NOT),
    "batch.global_batch_size": (64, NOT), "batch.micro_batch_size": (16, MAY), "batch.auto": (True, MAY),
    "log.wandb": (True, MAY), "log.wandb_project": ("other", MAY), "log.wandb_name": ("a-name", MAY),
    "log.wandb_tags": (("a", "b"), MAY), "log.wandb_group": ("a-group", MAY), "log.tensorboard": (True, MAY),
    "log.progress": (True, MAY), "log.progress_every_s": (5.0, MAY), "log.every_steps": (10, MAY),
    "ema.decay": (0.999, NOT), "ema.warmup": (False, NOT), "ema.select_best": (False, NOT),
    "epochs": (5, MAY), "precision": ("bf16", NOT), "compile": (True, MAY), "label_smoothing": (0.0, NOT),
    "early_stop_patience": (5, NOT), "seed": (1, NOT), "run_dir": ("elsewhere", MAY), "resume": ("auto", MAY),
    "checkpoint_every_epochs": (2, MAY), "checkpoint_every_steps": (10, MAY), "overwrite": (True, MAY),
    "test_at_end": (False, MAY), "extend_lr": (1e-3, MAY),
}
NO_OTHER_VALUE = {"model.in_channels": "3 is the only value a config allows"}


def config_fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        if dataclasses.is_dataclass(value):
            yield from config_fields(type(value), f"{f.name}.")
        else:
            yield prefix + f.name


def changed(cfg, key: str, value):
    section, _, name = key.rpartition(".")
    if section:
        return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})
    return dataclasses.replace(cfg, **{name: value})


def resume_base():
    """A 3-epoch run's config as its config.json reads back (the precision resolved, tuples through JSON)."""
    from conftest import tiny_config
    from vitdist.config import from_dict, to_dict

    cfg = dataclasses.replace(tiny_config("runs/r", epochs=3), precision="no")
    return from_dict(json.loads(json.dumps(to_dict(cfg))))


def test_the_resume_table_covers_every_field_of_every_config():
    every = set(config_fields(TrainConfig))
    assert every == set(CHANGES) | set(NO_OTHER_VALUE), (sorted(every - set(CHANGES) - set(NO_OTHER_VALUE)),
                                                         sorted(set(CHANGES) | set(NO_OTHER_VALUE) - every))
    base = resume_base()
    for key, (value, _) in CHANGES.items():  # each row changes its field, to a value the config takes
        assert changed_fields(changed(base, key, value), base) == {key: (getattr_path(base, key), value)}, key


def getattr_path(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("key", CHANGES)
def test_a_resume_refuses_every_field_it_may_not_change_naming_it_and_takes_the_rest(key):
    """train.check_resume (a pure function of the new config, the saved one and the plan) over every field, one
    changed at a time: a field outside what may change is refused on one line naming its flag and the run's
    value; a field inside is taken."""
    saved = resume_base()
    value, may = CHANGES[key]
    resume_dir = Path("runs/r/checkpoints/epoch_0003")
    if may:
        folder_mod.check_resume(changed(saved, key, value), saved, 3, resume_dir)
        return
    with pytest.raises(UserError) as e:
        folder_mod.check_resume(changed(saved, key, value), saved, 3, resume_dir)
    message = str(e.value)
    head, _, name = key.rpartition(".")
    flag = ("--" + head + "." if head else "--") + ("no-" if value is False else "") + name.replace("_", "-")
    assert f"which this would change: {flag}" in message and "\n" not in message, message
    assert f"(the run has {getattr_path(saved, key)})" in message, message


def interrupted_after_epoch_1(run, monkeypatch):
    real_save = epoch_mod.save_checkpoint

    def save_then_die(accelerator, run_dir, state):
        real_save(accelerator, run_dir, state)
        if state.epoch == 1:
            raise KeyboardInterrupt  # stands in for any death right after a checkpoint

    monkeypatch.setattr(epoch_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mod.main([*FLAGS, "--run-dir", str(run)])
    monkeypatch.setattr(epoch_mod, "save_checkpoint", real_save)


def test_resume_alone_continues_the_run_as_its_config_says(tmp_path, capsys, monkeypatch):
    """`--run-dir R --resume auto` and nothing else: the run's own data, model and schedule, not the defaults."""
    run = tmp_path / "run"
    interrupted_after_epoch_1(run, monkeypatch)
    config_before = (run / "config.json").read_bytes()
    assert train_mod.main(["--run-dir", str(run), "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "synthetic: 256 train" in out and "resumed from" in out
    assert [r["step"] for r in rows(run / "steps.jsonl")] == list(range(1, 25))
    assert (run / "config.json").read_bytes() == config_before


def test_extending_a_finished_run_continues_the_rate_without_a_jump(finished, capsys):
    saved = json.loads((finished / "config.json").read_text())
    capsys.readouterr()
    assert train_mod.main(["--run-dir", str(finished), "--resume", "auto", "--epochs", "5"]) == 0
    out = capsys.readouterr().out
    assert "extending the run from 3 to 5 epochs" in out
    record = json.loads((finished / "config.json").read_text())
    assert {k: v for k, v in record.items() if k != "extended"} == saved  # the original fields untouched
    (ext,) = record["extended"]
    assert (ext["from_epochs"], ext["epochs"], ext["from_step"]) == (3, 5, 24)

    steps = rows(finished / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 41))
    lrs = [s["lr"] for s in steps]
    min_lr = saved["optim"]["min_lr"]
    # Steps 1-24 as planned; 25-40 a new cosine from the rate step 25 would have had, down to min_lr.
    assert lrs[24] == pytest.approx(ext["from_lr"])
    for i, lr in enumerate(lrs[24:]):
        assert lr == pytest.approx(min_lr + (ext["from_lr"] - min_lr) * (1 + math.cos(math.pi * i / 16)) / 2)
    assert max(lrs[24:]) <= lrs[23] * 1.0001  # no jump: the issue saw 1.1e-6 -> 1.5e-4 here

    # Extended again later: the first extension stays, the second starts where it ended.
    assert train_mod.main(["--run-dir", str(finished), "--resume", "auto", "--epochs", "6"]) == 0
    assert [e["epochs"] for e in json.loads((finished / "config.json").read_text())["extended"]] == [5, 6]
    # And a plain resume of the extended run has nothing left to do, and changes nothing.
    before = snapshot(finished)
    assert train_mod.main(["--run-dir", str(finished), "--resume", "auto"]) == 0
    assert len(rows(finished / "steps.jsonl")) == 48
    assert snapshot(finished)[Path("config.json")] == before[Path("config.json")]


def test_a_resume_cannot_shorten_the_run(finished, capsys):
    with pytest.raises(SystemExit):
        train_mod.main(["--run-dir", str(finished), "--resume", "auto", "--epochs", "2"])
    assert "a resume can only extend it" in capsys.readouterr().err


def test_extending_an_interrupted_run_bends_its_cosine_from_where_it_is(tmp_path, monkeypatch):
    """Planned for 3 epochs, stopped after 1 (rate near its peak), resumed with --epochs 5: from step 9 on, a cosine
    from the rate step 9 had in the 3-epoch plan down to min_lr at step 40."""
    run = tmp_path / "run"
    interrupted_after_epoch_1(run, monkeypatch)
    assert train_mod.main(["--run-dir", str(run), "--resume", "auto", "--epochs", "5"]) == 0
    (ext,) = json.loads((run / "config.json").read_text())["extended"]
    planned_rate = 1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * (8 - 8) / 16)) / 2  # lr_at(8) of 3 x 8 steps
    assert ext["from_step"] == 8 and ext["from_lr"] == pytest.approx(planned_rate)
    lrs = [s["lr"] for s in rows(run / "steps.jsonl")]
    assert len(lrs) == 40
    for i, lr in enumerate(lrs[8:]):
        assert lr == pytest.approx(1e-6 + (planned_rate - 1e-6) * (1 + math.cos(math.pi * i / 32)) / 2)


def test_extending_a_finished_run_warns_that_min_lr_does_nothing_and_extend_lr_warms_up_again(finished, capsys):
    """A finished run's rate is min_lr: extended as it is, the added epochs barely move the weights, and the
    start says so. --extend-lr P warms the rate from where it is up to P over a tenth of the added steps, then a
    cosine down to min_lr; config.json's "extended" records it."""
    capsys.readouterr()
    assert train_mod.main(["--run-dir", str(finished), "--resume", "auto", "--epochs", "4"]) == 0
    out = capsys.readouterr().out
    assert "warning: the run had finished its schedule" in out and "--extend-lr" in out

    assert train_mod.main(["--run-dir", str(finished), "--resume", "auto", "--epochs", "14", "--extend-lr",
                           "5e-4"]) == 0
    out = capsys.readouterr().out
    assert "warms up from" in out and "warning: the run had finished" not in out
    ext = json.loads((finished / "config.json").read_text())["extended"][-1]
    assert (ext["from_step"], ext["peak_lr"], ext["warmup_steps"]) == (32, 5e-4, 8)  # 10 added epochs x 8 / 10
    lrs = [s["lr"] for s in rows(finished / "steps.jsonl")]
    assert len(lrs) == 14 * 8
    start, min_lr = ext["from_lr"], 1e-6
    for i in range(8):  # steps 33-40: linear from the rate reached to 5e-4
        assert lrs[32 + i] == pytest.approx(start + (5e-4 - start) * (i + 1) / 8)
    for i in range(72):  # steps 41-112: cosine from 5e-4 down to min_lr at the last step
        assert lrs[40 + i] == pytest.approx(min_lr + (5e-4 - min_lr) * (1 + math.cos(math.pi * i / 72)) / 2)
    assert lrs[-1] < 1e-5
    # The flag belongs to that extension alone: a later plain resume neither needs nor inherits it.
    assert json.loads((finished / "config.json").read_text()).get("extend_lr") is None
