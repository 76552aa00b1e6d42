"""Issue 17: every number a user reads, against an independent reference, under the settings users change. One
run of 2 gloo processes with gradient accumulation (4 micro-batches of 4 per rank per step) and an EMA: its epoch
rows recomputed from steps.jsonl, FlopCounterMode and a given peak; its average replayed through torch's
AveragedModel; `vitdist eval`'s top-5, per-class accuracy and confusion matrix against scikit-learn."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score, top_k_accuracy_score

import vitdist
from conftest import REPO
from test_distributed import TINY_FLAGS, accelerate_launch, steps
from test_ema import DECAY, averaged, reference_average
from test_flops import counted_flops
from vitdist.after import evaluate
from vitdist.data.sources import load_data
from vitdist.train.record import run_config

GLOBAL_BATCH, RANKS, STEPS_PER_EPOCH = 32, 2, 8  # TINY_FLAGS: 256 training images
PEAK = 2.5  # VITDIST_PEAK_TFLOPS: a CPU has no peak of its own
# train_loss sums every micro-batch's loss x 4 in float32 (32 a rank an epoch, then the 2 ranks), each step's
# logged loss sums its 4 micro-batches / 4 (then the mean of 2 ranks): equal in exact arithmetic, since every
# micro-batch holds 4 images. Each float32 addition of positive terms errs by at most 2^-24 of the running sum:
# 31 + 1 additions on one side, 3 + 1 (and an exact halving) on the other, ~37 units in all. A wrong weighting
# is off by a per cent or more.
LOSS_REL = 37 * 2 ** -24


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """(run folder, each rank's record from tests/record_steps.py: every step's weights and the final average)."""
    tmp = tmp_path_factory.mktemp("figures")
    run = tmp / "run"
    proc = accelerate_launch(REPO / "tests" / "record_steps.py", *TINY_FLAGS, "--batch.micro-batch-size", "4",
                             "--ema.decay", str(DECAY), "--run-dir", run, num_processes=RANKS,
                             env_extra={"RECORD_DIR": str(tmp), "VITDIST_PEAK_TFLOPS": str(PEAK)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) x micro-batch 4 x 4 accumulation = global batch 32" in proc.stdout
    return run, [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(RANKS)]


def test_epoch_figures_are_recomputed_from_the_steps_with_two_ranks_and_accumulation(two_ranks):
    """Each epoch row from steps.jsonl (the loss, the gradient norms, the rate), the images every rank trained,
    FlopCounterMode's FLOPs of the same model and the given peak of each of the 2 devices."""
    run, _ = two_ranks
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [m["epoch"] for m in rows] == [1, 2]
    flops = counted_flops(run_config(run).model, backward=True)  # forward + backward of one image
    for m in rows:
        epoch = [s for s in steps(run) if s["epoch"] == m["epoch"]]
        assert len(epoch) == STEPS_PER_EPOCH and m["step"] == epoch[-1]["step"] == STEPS_PER_EPOCH * m["epoch"]
        losses, norms = [s["loss"] for s in epoch], [s["grad_norm"] for s in epoch]
        assert m["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=LOSS_REL, abs=0)
        assert m["grad_norm_mean"] == pytest.approx(sum(norms) / len(norms), rel=1e-12)
        assert m["grad_norm_max"] == max(norms) and m["skipped_steps"] == 0 and m["lr"] == epoch[-1]["lr"]
        assert 0 < m["train_time_s"] < m["epoch_time_s"]
        images = STEPS_PER_EPOCH * GLOBAL_BATCH  # both ranks' shares, every micro-batch
        assert m["images_per_s"] == pytest.approx(images / m["train_time_s"], rel=1e-12)
        assert m["achieved_tflops"] == pytest.approx(m["images_per_s"] * flops / 1e12, rel=1e-12)
        assert m["mfu"] == pytest.approx(m["achieved_tflops"] / (PEAK * RANKS), rel=1e-12)


def test_the_average_on_two_ranks_with_accumulation_is_the_reference_ema(two_ranks):
    """Every optimizer step's weights (the same on both ranks under DDP) replayed through torch's AveragedModel
    with the warmup decay: each rank's average is that reference, updated once per optimizer step (16), not per
    micro-batch (64), and both ranks hold the same one, which the checkpoint saved."""
    run, ranks = two_ranks
    assert [len(r["steps"]) for r in ranks] == [2 * STEPS_PER_EPOCH] * RANKS
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert all(torch.equal(a[k], b[k]) for k in a)
    last = load_file(run / "checkpoints" / "epoch_0002" / "model.safetensors")  # the run's own final weights
    assert all(torch.equal(last[k], ranks[0]["steps"][-1][k]) for k in last)

    reference = reference_average(run_config(run).model, ranks[0]["steps"], DECAY, warmup=True)
    for r in ranks:
        for k, v in reference.items():
            torch.testing.assert_close(r["average"][k], v, rtol=0, atol=1e-7, msg=k)
    saved = averaged(run, 2)
    assert all(torch.equal(saved[k], r["average"][k]) for r in ranks for k in saved)
    assert not torch.equal(saved["head.weight"], last["head.weight"])  # an average, not the last weights


def test_eval_scores_are_scikit_learns_on_the_models_own_logits(two_ranks):
    """`vitdist eval` on the 10-class validation split against scikit-learn's confusion matrix, top-5 accuracy and
    per-class recall, computed from the logits of the run's model on the split's images, exactly."""
    run, _ = two_ranks
    assert evaluate.main([str(run), "--split", "val", "--no-plot"]) == 0
    scores = json.loads((run / "eval-val.json").read_text())
    model, info = vitdist.load_run(run)
    val = load_data(info.config.data, info.img_size, info.config.seed).val
    with torch.no_grad():
        logits = model(info.normalize(val.images))
    y, scores_np, pred = val.labels.numpy(), logits.numpy(), logits.argmax(-1).numpy()
    classes = list(range(10))
    matrix = confusion_matrix(y, pred, labels=classes)
    recall = recall_score(y, pred, labels=classes, average=None)
    # What the comparison can tell apart on this model: a transposed matrix, precision for recall, top-1 for top-5.
    assert (matrix != matrix.T).any()
    assert (precision_score(y, pred, labels=classes, average=None, zero_division=0) != recall).any()
    top5 = top_k_accuracy_score(y, scores_np, k=5, labels=classes)
    assert top5 != accuracy_score(y, pred)

    assert scores["num_samples"] == len(y) == 64
    assert scores["confusion"] == matrix.tolist()
    assert scores["accuracy"] == accuracy_score(y, pred)
    assert scores["top5_accuracy"] == top5
    assert scores["per_class_accuracy"] == recall.tolist()
    assert scores["per_class_count"] == np.bincount(y, minlength=10).tolist()
    assert math.isclose(scores["loss"], F.cross_entropy(logits, val.labels).item(), rel_tol=1e-6)
