"""Issue 12: the weights' moving average (--ema.decay). Its arithmetic against torch's own reference
(AveragedModel with get_ema_multi_avg_fn; with accumulation and 2 processes in test_figures.py), exact resume
with it, evaluation beside the raw weights, selection as the run's best, and ZeRO-3 refused in one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import vitdist
from conftest import tiny_config
from test_interrupts import FLAGS, planted, same_run
from vitdist.after import evaluate
from vitdist.after.load import EMA_FILE
from vitdist.train.run import train

DECAY = 0.9
# The resume test also turns on the strong augmentation (augment.py): its per-image draws come from the generators
# a checkpoint restores, and one kill-and-resume pair covers both.
STRONG = ["--data.rand-augment", "2,9", "--data.random-erasing", "0.25"]


def averaged(run_dir, epoch: int) -> dict:
    path = run_dir / "checkpoints" / f"epoch_{epoch:04d}" / EMA_FILE
    return {k.removeprefix("module."): v for k, v in torch.load(path, weights_only=True).items()}


@pytest.mark.parametrize("warmup", [False, True])
def test_the_average_is_the_reference_ema_of_the_weights_each_step_left(tmp_path, monkeypatch, warmup):
    """Every optimizer step's weights, as the trainer handed them to the average, replayed through torch's
    reference: AveragedModel + get_ema_multi_avg_fn (a fixed decay; with warmup, the decay of each step,
    1 - (1 + t)^(-2/3) capped at DECAY, with the first step copied as both do)."""
    from timm.utils.model_ema import ModelEmaV3

    seen = []
    real_update = ModelEmaV3.update

    def update(self, model, step=None):
        seen.append((step, copy.deepcopy(model.state_dict())))
        return real_update(self, model, step=step)

    monkeypatch.setattr(ModelEmaV3, "update", update)
    run = tmp_path / "run"
    train(tiny_config(run, epochs=2, ema={"decay": DECAY, "warmup": warmup}, model={"dropout": 0.1}))
    assert [s for s, _ in seen] == list(range(1, 17))  # once per optimizer step, told the step count

    reference = reference_average(tiny_config(run).model, [weights for _, weights in seen], DECAY, warmup)
    got = averaged(run, 2)
    for k, v in reference.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-7, msg=k)
    assert not torch.equal(got["head.weight"], seen[-1][1]["head.weight"])  # an average, not the last weights


def reference_average(model_cfg, steps: list[dict], decay: float, warmup: bool) -> dict:
    """torch's reference EMA (AveragedModel + get_ema_multi_avg_fn) of the weights each optimizer step left, in
    step order: a fixed decay, or with warmup the decay of step t, 1 - (1 + t - 1)^(-2/3) capped at `decay`;
    the first step copied, as both do."""
    replay = vitdist.VisionTransformer.from_config(model_cfg, 10)
    reference = None
    for t, weights in enumerate(steps, start=1):
        replay.load_state_dict(weights)
        d = min(decay, 1 - (1 + (t - 1)) ** (-2 / 3)) if warmup else decay
        if reference is None or warmup:  # the warmup's decay changes each step: a fresh averaging function
            avg = get_ema_multi_avg_fn(d)
            if reference is None:
                reference = AveragedModel(replay, multi_avg_fn=avg, use_buffers=True)
            reference.multi_avg_fn = avg
        reference.update_parameters(replay)
    return reference.module.state_dict()


def test_the_average_is_evaluated_selected_and_exported(tmp_path, capsys):
    run = tmp_path / "run"
    results = train(tiny_config(run, epochs=3, ema={"decay": DECAY}, data={"name": "digits"},
                                batch={"global_batch_size": 64}))
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert all(0 <= r["val_acc_ema"] <= 1 and r["val_loss_ema"] > 0 for r in rows)
    assert " ema_acc " in out and "EMA 0.9 (decay warmup)" in out
    best = max(rows, key=lambda r: max(r["val_acc"], r["val_acc_ema"]))
    assert results["best_epoch"] == best["epoch"]
    assert results["best_val_acc"] == max(best["val_acc"], best["val_acc_ema"])
    assert results["weights"] == ("ema" if best["val_acc_ema"] > best["val_acc"] else "raw")
    exported = load_file(run / "model.safetensors")
    chosen = averaged(run, best["epoch"]) if results["weights"] == "ema" else \
        load_file(run / "checkpoints" / f"epoch_{best['epoch']:04d}" / "model.safetensors")
    assert exported.keys() == chosen.keys() and all(torch.equal(exported[k], chosen[k]) for k in chosen)
    # eval reads either: the last checkpoint's average scores what the run logged for it
    evaluate.main([str(run), "--split", "val", "--weights", "ema", "--no-plot"])
    assert json.loads((run / "eval-val-ema.json").read_text())["accuracy"] == rows[-1]["val_acc_ema"]
    assert json.loads((run / "eval-test.json").read_text())["accuracy"] == results["test_acc"]


def test_raw_only_selection_never_picks_the_average(tmp_path):
    results = train(tiny_config(tmp_path / "run", epochs=2, ema={"decay": DECAY, "select_best": False}))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert results["weights"] == "raw" and results["best_val_acc"] == max(r["val_acc"] for r in rows)


@pytest.fixture(scope="module")
def straight_ema(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight_ema") / "run"
    proc = planted(*FLAGS, *STRONG, "--ema.decay", str(DECAY), "--run-dir", out, env={})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_run_with_an_average_resumes_exactly_mid_epoch(tmp_path, straight_ema):
    """SIGINT as step 13 begins (epoch 2 of 3), RandAugment and random erasing on: the checkpoint of that step
    holds the average; the resumed run ends with the uninterrupted run's steps, weights and average, bit for
    bit."""
    run = tmp_path / "run"
    proc = planted(*FLAGS, *STRONG, "--ema.decay", str(DECAY), "--run-dir", run,
                   env={"FAIL_STEP": "13", "FAIL_WITH": "sigint"})
    assert proc.returncode == 130, proc.stderr[-3000:]
    proc = planted("--run-dir", run, "--resume", "auto", env={})
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_run(straight_ema, run)
    a, b = averaged(straight_ema, 3), averaged(run, 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
