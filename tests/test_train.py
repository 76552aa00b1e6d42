"""The trainer's invariants: files, exact resume, accumulation, non-finite stop, early stopping, W&B offline."""

import glob
import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from vitdist.train import epoch as epoch_mod
from vitdist.train import run as run_mod
from vitdist.train import record as record_mod
from vitdist.flops import train_flops_per_image
from vitdist.train.run import train
from vitdist.train.step import Diverged

METRIC_FIELDS = {"epoch", "step", "train_loss", "train_acc", "train_clean_loss", "train_clean_acc", "val_loss",
                 "val_acc", "lr", "grad_norm_mean", "grad_norm_max", "epoch_time_s", "train_time_s", "images_per_s",
                 "achieved_tflops", "mfu", "skipped_steps"}
TIMING = {"epoch_time_s", "train_time_s", "images_per_s", "achieved_tflops"}


def rows(path):
    return [json.loads(line) for line in open(path)]


def weights(run_dir, epoch):
    return load_file(f"{run_dir}/checkpoints/epoch_{epoch:04d}/model.safetensors")


def test_short_run_writes_every_metric_and_the_config(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    results = train(cfg)
    metrics = rows(tmp_path / "run" / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    flops = train_flops_per_image(cfg.model, 10)
    for m in metrics:
        assert set(m) == METRIC_FIELDS
        assert all(v is not None for k, v in m.items() if k != "mfu")
        assert m["skipped_steps"] == 0
        assert m["mfu"] is None  # no known peak for a CPU
        assert m["achieved_tflops"] == pytest.approx(flops * m["images_per_s"] / 1e12)
        assert 0.0 <= m["val_acc"] <= 1.0 and m["grad_norm_max"] >= m["grad_norm_mean"] > 0
    assert metrics[-1]["step"] == 2 * 8  # 256 train images / global batch 32
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["lr"] == cfg.optim.lr
    steps = rows(tmp_path / "run" / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 17))
    assert steps[0]["lr"] == pytest.approx(cfg.optim.lr / 8)  # warmup: 1 epoch = 8 steps
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["best_epoch"] == results["best_epoch"]


class Crash(Exception):
    pass


RESUME_OVER = dict(epochs=4, model={"dropout": 0.1, "drop_path_rate": 0.1}, data={"augment": True})


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """4 epochs without a stop: the run every resumed run must end identical to."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_config(out, **RESUME_OVER))
    return out


def count_training_forwards(monkeypatch) -> dict:
    real_forward = run_mod.VisionTransformer.forward
    calls = {"n": 0}

    def forward(self, x):
        calls["n"] += self.training
        return real_forward(self, x)

    monkeypatch.setattr(run_mod.VisionTransformer, "forward", forward)
    return calls


@pytest.mark.parametrize("resume", ["auto", "checkpoint folder", "run folder"])
def test_exact_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys, straight_run, resume):
    """Dropout, drop path and augmentation on: the resumed run must restore every RNG, not only the weights.
    It must also really resume: say where, and run only the steps that were left (a fresh seeded restart would
    end with the same bytes). `--resume PATH` takes a checkpoint folder or a run folder."""
    real_save = epoch_mod.save_checkpoint

    def save_then_die(accelerator, run_dir, state):
        real_save(accelerator, run_dir, state)
        if state.epoch == 2:
            raise Crash  # the machine dies right after epoch 2's checkpoint

    monkeypatch.setattr(epoch_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Crash):
        train(tiny_config(tmp_path / "resumed", **RESUME_OVER))
    monkeypatch.setattr(epoch_mod, "save_checkpoint", real_save)
    assert len(rows(tmp_path / "resumed" / "metrics.jsonl")) == 2
    capsys.readouterr()

    checkpoint = tmp_path / "resumed" / "checkpoints" / "epoch_0002"
    path = {"auto": "auto", "checkpoint folder": str(checkpoint), "run folder": str(tmp_path / "resumed")}[resume]
    forwards = count_training_forwards(monkeypatch)
    train(tiny_config(tmp_path / "resumed", resume=path, **RESUME_OVER))
    assert f"resumed from {checkpoint} at epoch 2, step 16" in capsys.readouterr().out
    assert forwards["n"] == 2 * 8  # epochs 3 and 4 only, one micro-batch a step

    a, b = weights(straight_run, 4), weights(tmp_path / "resumed", 4)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda ms: [{k: v for k, v in m.items() if k not in TIMING} for m in ms]  # noqa: E731
    assert strip(rows(straight_run / "metrics.jsonl")) == strip(rows(tmp_path / "resumed" / "metrics.jsonl"))
    assert rows(straight_run / "steps.jsonl") == rows(tmp_path / "resumed" / "steps.jsonl")


def expected_lr(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """The checklist's schedule, written here apart from vitdist.optim: step is 1-based, as steps.jsonl logs it;
    linear warmup reaches lr at the last warmup step, then a cosine from lr towards min_lr at the last step."""
    if step <= warmup:
        return lr * step / warmup
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (step - 1 - warmup) / (total - warmup))) / 2


def test_every_step_follows_warmup_then_cosine(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=5, optim={"lr": 2e-3, "min_lr": 1e-5, "warmup_epochs": 1.5})
    train(cfg)
    steps = rows(tmp_path / "run" / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 41))  # 8 steps an epoch, 12 of them warmup
    for s in steps:
        assert s["lr"] == pytest.approx(expected_lr(s["step"], 2e-3, 1e-5, 12, 40), rel=1e-9), s
    assert steps[11]["lr"] == pytest.approx(2e-3)  # the peak, at the end of warmup
    assert steps[-1]["lr"] - 1e-5 < 0.01 * (2e-3 - 1e-5)  # near min_lr at the end
    assert all(a["lr"] > b["lr"] for a, b in zip(steps[12:], steps[13:]))  # decays at every step
    assert [m["lr"] for m in rows(tmp_path / "run" / "metrics.jsonl")] == [steps[8 * e - 1]["lr"] for e in range(1, 6)]


def test_the_best_epoch_not_the_last_is_tested_and_exported(tmp_path, monkeypatch):
    """Epochs 1 and 3 are planted worse on validation (their accuracy read as 0), so epoch 2 is the best whatever
    the training did: the run must test and export epoch 2's weights, not the last ones it trained."""
    real_evaluate = epoch_mod.evaluate
    calls = {"n": 0}

    def evaluate(model, loader, augment, accelerator):
        loss, acc = real_evaluate(model, loader, augment, accelerator)
        calls["n"] += 1
        return (loss, 0.0) if calls["n"] in (1, 5) else (loss, acc)  # per epoch: val, then clean train

    monkeypatch.setattr(epoch_mod, "evaluate", evaluate)
    run = tmp_path / "run"
    results = train(tiny_config(run, epochs=3, optim={"lr": 5e-3, "warmup_epochs": 0.5}, data={"name": "digits"}))
    metrics = rows(run / "metrics.jsonl")
    assert metrics[0]["val_acc"] == metrics[2]["val_acc"] == 0.0 < metrics[1]["val_acc"]
    assert results["best_epoch"] == 2 and results["epochs_run"] == 3

    exported, best, last = load_file(run / "model.safetensors"), weights(run, 2), weights(run, 3)
    assert any(not torch.equal(best[k], last[k]) for k in best)
    for k in best:
        assert torch.equal(exported[k], best[k]), k
    test_loss, test_acc = plain_eval(run, exported, "test")
    assert results["test_acc"] == pytest.approx(test_acc, abs=1e-6)
    assert results["test_loss"] == pytest.approx(test_loss, rel=1e-5)


def plain_eval(run, state_dict, split: str) -> tuple[float, float]:
    """(loss, accuracy) of state_dict on a split, in a plain VisionTransformer built from the run's config."""
    from vitdist.config import from_dict
    from vitdist.data.augment import BatchAugment
    from vitdist.data.sources import load_data
    from vitdist.model import VisionTransformer

    cfg = from_dict(json.loads((run / "config.json").read_text()))
    data = load_data(cfg.data, cfg.model.img_size, cfg.seed)
    ds = getattr(data, split)
    model = VisionTransformer.from_config(cfg.model, data.num_classes)
    model.load_state_dict(state_dict)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.stack([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        logits = model.eval()(BatchAugment(cfg.data, data.num_classes).normalize(x))
    return torch.nn.functional.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()


def test_resume_ignores_a_half_written_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=2)
    train(cfg)
    half = tmp_path / "run" / "checkpoints" / "epoch_0003"
    half.mkdir()  # a save that died before train_state.json: not complete
    (half / "model.safetensors").write_bytes(b"garbage")
    found = record_mod.find_resume("auto", tmp_path / "run")
    assert found.name == "epoch_0002"


def test_accumulation_equals_the_full_batch(tmp_path):
    full = tiny_config(tmp_path / "full", epochs=1, data={"augment": False})
    micro = replace(full, run_dir=str(tmp_path / "micro"), batch=replace(full.batch, micro_batch_size=8))
    train(full)
    train(micro)
    a, b = weights(tmp_path / "full", 1), weights(tmp_path / "micro", 1)
    # atol 2e-5: the key bias has a true gradient of zero (softmax ignores a constant added to every key), so
    # its gradient is float round-off, which Adam's normalisation turns into lr-sized steps: ~4e-6 apart here.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=k)
    steps_full, steps_micro = rows(tmp_path / "full" / "steps.jsonl"), rows(tmp_path / "micro" / "steps.jsonl")
    assert len(steps_micro) == 8  # 8 optimizer steps, not 32
    for s, t in zip(steps_full, steps_micro):
        assert t["loss"] == pytest.approx(s["loss"], rel=1e-5)
        assert t["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-4)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "run", epochs=4)
    real_forward = run_mod.VisionTransformer.forward
    calls = {"n": 0}

    def forward(self, x):
        out = real_forward(self, x)
        calls["model"] = self
        if self.training:
            calls["n"] += 1
            if calls["n"] > 20:  # epoch 3 (8 steps an epoch), from its 5th step on
                return out * float("nan")
        return out

    monkeypatch.setattr(run_mod.VisionTransformer, "forward", forward)
    with pytest.raises(Diverged, match="non-finite loss at epoch 3, step 21 "):
        train(cfg)
    # Read at the epoch's end (--log.every-steps 50), but the fused AdamW skipped the bad steps on the device.
    assert all(torch.isfinite(p).all() for p in calls["model"].parameters())
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts[-1] == "epoch_0002"
    for tensor in weights(tmp_path / "run", 2).values():
        assert torch.isfinite(tensor).all()
    assert [m["epoch"] for m in rows(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    last = rows(tmp_path / "run" / "steps.jsonl")[-1]  # the bad step is logged, for `vitdist diagnose`
    assert last["epoch"] == 3 and last["loss"] != last["loss"]  # NaN


def test_early_stopping(tmp_path):
    # A learning rate too small to move validation accuracy: no improvement after epoch 1.
    cfg = tiny_config(tmp_path / "run", epochs=10, early_stop_patience=2, optim={"lr": 1e-9, "min_lr": 0.0})
    results = train(cfg)
    assert results["stopped_early"]
    assert results["epochs_run"] < 10
    assert results["best_epoch"] == results["epochs_run"] - 2


def test_mixup_cutmix_reports_clean_train_accuracy(tmp_path):
    train(tiny_config(tmp_path / "run", epochs=1, data={"mixup_alpha": 0.8, "cutmix_alpha": 1.0}))
    (m,) = rows(tmp_path / "run" / "metrics.jsonl")
    assert m["train_acc"] is None and 0.0 <= m["train_clean_acc"] <= 1.0


def test_wandb_offline_logs_every_metric(tmp_path, monkeypatch):
    from wandb_offline import config, history

    monkeypatch.setenv("WANDB_MODE", "offline")
    train(tiny_config(tmp_path / "run", log={"wandb": True, "wandb_name": "t", "wandb_tags": ("ci",)}))
    (path,) = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    hist = history(path)
    epoch_rows = [h for h in hist if "val_acc" in h]
    assert [h["epoch"] for h in epoch_rows] == [1, 2]
    assert METRIC_FIELDS - {"mfu"} <= set(epoch_rows[0])  # mfu: None on a CPU, not sent
    assert [h["_step"] for h in epoch_rows] == [8, 16]  # the step axis is the optimizer step
    assert any("step/loss" in h for h in hist)
    assert config(path)["optim.lr"] == 1e-3


def oom_above(monkeypatch, limit: int):
    """Every training forward on more than `limit` images raises torch.OutOfMemoryError, as a full GPU would."""
    real_forward = run_mod.VisionTransformer.forward

    def forward(self, x):
        if self.training and x.shape[0] > limit:
            raise torch.OutOfMemoryError(f"injected: batch {x.shape[0]} > {limit}")
        return real_forward(self, x)

    monkeypatch.setattr(run_mod.VisionTransformer, "forward", forward)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_global_batch(tmp_path, monkeypatch, capsys):
    planned = tiny_config(tmp_path / "planned", epochs=1, data={"augment": False}, batch={"micro_batch_size": 8})
    train(planned)
    oom_above(monkeypatch, 8)
    train(replace(planned, run_dir=str(tmp_path / "shrunk"), batch=replace(planned.batch, micro_batch_size=None)))
    out = capsys.readouterr().out
    assert "out of memory at micro-batch 32: now micro-batch 16 x 2 accumulation = global batch 32" in out
    assert "out of memory at micro-batch 16: now micro-batch 8 x 4 accumulation" in out
    assert rows(tmp_path / "planned" / "steps.jsonl") == rows(tmp_path / "shrunk" / "steps.jsonl")
    a, b = weights(tmp_path / "planned", 1), weights(tmp_path / "shrunk", 1)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_out_of_memory_below_one_stops_with_a_message(tmp_path, monkeypatch):
    from vitdist.config import UserError

    oom_above(monkeypatch, 0)
    with pytest.raises(UserError, match="out of memory at micro-batch 1"):
        train(tiny_config(tmp_path / "run", epochs=1))


def test_batch_auto_without_a_gpu_keeps_the_whole_batch(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", epochs=1, batch={"auto": True}))
    assert "--batch.auto: no GPU" in capsys.readouterr().out


def test_a_fresh_run_never_appends_to_an_earlier_one(tmp_path):
    from vitdist.config import UserError

    cfg = tiny_config(tmp_path / "run", epochs=1)
    train(cfg)
    with pytest.raises(UserError, match="holds an earlier run .*--resume auto.*--overwrite"):
        train(cfg)
    train(replace(cfg, overwrite=True))
    assert [m["epoch"] for m in rows(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert len(rows(tmp_path / "run" / "steps.jsonl")) == 8


def test_test_split_is_scored_once_at_the_end_unless_turned_off(tmp_path):
    on = train(tiny_config(tmp_path / "on", epochs=1, data={"name": "digits", "train_subset": 128}))
    off = train(tiny_config(tmp_path / "off", epochs=1, test_at_end=False,
                            data={"name": "digits", "train_subset": 128}))
    assert 0.0 <= on["test_acc"] <= 1.0 and "test_acc" not in off


HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


def count_host_reads(monkeypatch) -> list[str]:
    """Record every read of a tensor's value on the host (what makes the host wait for a GPU), made outside
    torch.optim, as 'module:function'."""
    import sys

    reads = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def read(self, *args, _real=real, **kwargs):
            caller = sys._getframe(1)
            if not caller.f_globals.get("__name__", "").startswith("torch.optim"):
                reads.append(f"{caller.f_globals.get('__name__')}:{caller.f_code.co_name}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    return reads


@pytest.mark.parametrize("every_steps", [1000, 1])
def test_host_reads_do_not_grow_with_the_steps_of_an_epoch(tmp_path, monkeypatch, every_steps):
    """With the log interval longer than an epoch, a run of 16 steps an epoch reads tensors on the host exactly
    as often as one of 8: no read inside a step. Reading every step adds one read per step (the counter counts)."""
    reads = {}
    for size in (320, 640):  # 8 and 16 steps an epoch; 64 and 128 validation images, one eval batch either way
        cfg = tiny_config(tmp_path / str(size), data={"synthetic_size": size}, log={"every_steps": every_steps})
        found = count_host_reads(monkeypatch)
        train(cfg)
        monkeypatch.undo()
        reads[size] = found
    if every_steps == 1000:
        assert len(reads[640]) == len(reads[320]), sorted(set(reads[640]) - set(reads[320]))
    else:
        assert len(reads[640]) - len(reads[320]) == 2 * (16 - 8)
    assert rows(tmp_path / "640" / "steps.jsonl")[-1]["step"] == 32  # every step still logged
