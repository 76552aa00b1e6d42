"""Issue 17: the wiring between pieces, each held against a reference computed apart from the code under test.

- A run's reported test accuracy is the score of exactly the weights it exports, with the moving average off, on
  and winning, on and losing: `vitdist eval` of model.safetensors, and a plain argmax over the test split of the
  `vitdist export --format safetensors` file, preprocessed by its own metadata alone.
- The exports' preprocessing metadata holds each channel's mean and std in its place (values that all differ),
  and the model card says which weights it holds.
- No trial of `tune`, `sweep lr`, `sweep grid` or `sweep range` reads the test split: a spy on the split records
  every image read and who asked; only tune's final scoring reads it, once.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import tiny_config
from vitdist.data import sources as data_mod
from vitdist.after import evaluate, export
from vitdist import train as train_mod
from vitdist.train import epoch as epoch_mod
from vitdist.train import run as run_mod
from vitdist.config import DataConfig
from vitdist.data.images import TensorImages
from vitdist.data.sources import load_data
from vitdist.model import VisionTransformer
from vitdist.after.load import EMA_FILE, load_run

# CIFAR-10's statistics: every channel differs, and no mean equals its std, so a swap or a shift shows.
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
VAL, TRAIN_EVAL = 64, 32  # sizes that tell the validation loader from the clean training one
DIGITS = dict(name="digits", train_subset=256, val_subset=VAL, train_eval_size=TRAIN_EVAL, mean=MEAN, std=STD)
WEIGHTS = {"off": "raw", "wins": "ema", "loses": "raw"}  # results.json's "weights", known before each run


def planted_run(folder, kind: str):
    """Two epochs on digits (it has a test split). kind "off": no average; "wins" / "loses": an average with decay
    0.9, and the raw weights' (or the average's) validation accuracy planted as 0 in every epoch, so which
    weights the run selects is known by construction; the weights themselves are trained for real."""
    from timm.utils.model_ema import ModelEmaV3

    averages = []
    real_init, real_evaluate = ModelEmaV3.__init__, epoch_mod.evaluate

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        averages.append(self)

    def evaluate_planted(model, loader, augment, accelerator):
        loss, acc = real_evaluate(model, loader, augment, accelerator)
        if len(loader.dataset) != VAL:  # the clean training subset: as measured
            return loss, acc
        average = bool(averages) and model is averages[-1].module
        return (loss, 0.0) if average == (kind == "loses") else (loss, acc)

    ema = {} if kind == "off" else {"ema": {"decay": 0.9, "warmup": False}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # conftest.one_thread: the tiny model runs faster on one thread here
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ModelEmaV3, "__init__", init)
            mp.setattr(epoch_mod, "evaluate", evaluate_planted)
            results = train_mod.train(tiny_config(folder, epochs=2, data=DIGITS, **ema))
    finally:
        torch.set_num_threads(threads)
    return folder, results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """kind -> (run folder, results): each run made once, when a test first asks for it."""
    made = {}

    def get(kind: str):
        if kind not in made:
            made[kind] = planted_run(tmp_path_factory.mktemp(kind) / "run", kind)
        return made[kind]

    return get


@pytest.fixture(scope="module")
def test_split():
    """The digits test split as uint8 images and labels (the data, not the code under test)."""
    test = load_data(DataConfig(**DIGITS), 32, 0).test
    return test.images, test.labels


def from_the_file(path):
    """(model, normalize) of a `vitdist export --format safetensors` file, from the file alone: the model from its
    model_config metadata, and (x / 255 - mean) / std with its preprocessing metadata's mean and std."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    model = VisionTransformer(**json.loads(meta["model_config"])).eval()
    model.load_state_dict(load_file(str(path)), strict=True)
    pre = json.loads(meta["preprocessing"])
    mean, std = (torch.tensor(pre[k], dtype=torch.float32).view(1, 3, 1, 1) for k in ("mean", "std"))
    return model, lambda x: (x.float() / 255 - mean) / std


def by_hand(model, normalize, images: torch.Tensor, labels: torch.Tensor) -> tuple[int, float]:
    """(correct, mean cross-entropy) on (images, labels): a plain argmax, nothing of vitdist's scoring."""
    with torch.no_grad():
        logits = model(normalize(images))
    return int((logits.argmax(1) == labels).sum()), F.cross_entropy(logits, labels).item()


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def best_weights(run, results, which: str) -> dict:
    """The best epoch's raw weights or its average, from its checkpoint."""
    folder = run / "checkpoints" / f"epoch_{results['best_epoch']:04d}"
    if which == "ema":
        return {k.removeprefix("module."): v for k, v in torch.load(folder / EMA_FILE, weights_only=True).items()}
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("kind", WEIGHTS)
def test_the_reported_test_accuracy_is_vitdist_eval_of_the_exported_weights(runs, kind, test_split, tmp_path,
                                                                            capsys, one_thread):
    """No average; an average that won; one that lost. results.json's test figures are `vitdist eval`'s of
    model.safetensors (the best epoch's chosen weights, bit for bit) and those of a plain argmax over the test
    split with the `export --format safetensors` file, preprocessed by its metadata alone. The weights not
    chosen score otherwise, so a mix-up of the two would show."""
    run, results = runs(kind)
    assert results["weights"] == WEIGHTS[kind]
    # model.safetensors is the best epoch's chosen weights, bit for bit
    exported = load_file(str(run / "model.safetensors"))
    assert same_tensors(exported, best_weights(run, results, results["weights"]))
    # vitdist eval of it, written apart from train's own eval-test.json
    assert evaluate.main([str(run), "--split", "test", "--out", str(tmp_path / "eval.json"), "--no-plot"]) == 0
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert scored["accuracy"] == results["test_acc"]
    assert scored["loss"] == pytest.approx(results["test_loss"], rel=1e-6)
    # vitdist export --format safetensors holds the same tensors, and scored from the file alone gives the figures
    out = tmp_path / "model.safetensors"
    assert export.main([str(run), "--format", "safetensors", "--out", str(out)]) == 0
    assert same_tensors(load_file(str(out)), exported)
    images, labels = test_split
    model, normalize = from_the_file(out)
    correct, loss = by_hand(model, normalize, images, labels)
    assert (correct, len(labels)) == (round(results["test_acc"] * scored["num_samples"]), scored["num_samples"])
    assert loss == pytest.approx(results["test_loss"], rel=1e-5)
    if kind != "off":  # the weights not chosen score otherwise: a mix-up of the two would show above
        model.load_state_dict(best_weights(run, results, "raw" if results["weights"] == "ema" else "ema"))
        assert by_hand(model, normalize, images, labels)[1] != pytest.approx(results["test_loss"], rel=1e-4)


def test_the_exports_metadata_holds_each_channels_mean_and_std_and_preprocesses_to_the_runs_logits(
        runs, tmp_path, capsys, one_thread):
    """safetensors, timm and hub exports of a run normalized with per-channel values that all differ: each
    value in its place, and an image normalized from the metadata alone gives the run's logits."""
    run, _ = runs("off")
    model, info = load_run(run)
    x = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(info.normalize(x))  # the run's own model and normalization

    def normalized(pre: dict) -> torch.Tensor:
        mean, std = (torch.tensor(pre[k], dtype=torch.float32).view(1, 3, 1, 1) for k in ("mean", "std"))
        return (x.float() / 255 - mean) / std

    path = tmp_path / "model.safetensors"
    assert export.main([str(run), "--format", "safetensors", "--out", str(path)]) == 0
    with safe_open(str(path), "pt") as f:
        pre = json.loads(f.metadata()["preprocessing"])
    assert (pre["mean"], pre["std"]) == (list(MEAN), list(STD))
    fresh, _ = from_the_file(path)
    with torch.no_grad():
        assert torch.equal(fresh(normalized(pre)), expected)

    hub = tmp_path / "hub"
    assert export.main([str(run), "--format", "hub", "--out", str(hub)]) == 0
    pre = json.loads((hub / "config.json").read_text())["preprocessing"]
    assert (pre["mean"], pre["std"]) == (list(MEAN), list(STD))
    with torch.no_grad():
        assert torch.equal(VisionTransformer.from_pretrained(str(hub)).eval()(normalized(pre)), expected)
    assert f"with mean {MEAN} and std {STD}" in (hub / "README.md").read_text()

    pytest.importorskip("timm")
    timm_dir = tmp_path / "timm"
    assert export.main([str(run), "--format", "timm", "--out", str(timm_dir)]) == 0
    pre = json.loads((timm_dir / "timm_config.json").read_text())["pretrained_cfg"]
    assert (pre["mean"], pre["std"]) == (list(MEAN), list(STD))
    with torch.no_grad():
        assert (export.timm_model(timm_dir)(normalized(pre)) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["wins", "loses"])
def test_the_model_card_says_which_weights_it_holds(runs, kind, tmp_path, capsys, one_thread):
    run, results = runs(kind)
    assert export.main([str(run), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    average = "They are the moving average of the weights (EMA, decay 0.9)" in card
    raw = "They are the raw weights" in card
    assert (average, raw) == ((True, False) if results["weights"] == "ema" else (False, True)), card
    assert f"| test | {results['test_acc']:.4f} |" in card
    with torch.no_grad():  # and it holds them: the hub weights are model.safetensors'
        assert same_tensors(VisionTransformer.from_pretrained(str(tmp_path / "hub")).state_dict(),
                            load_file(str(run / "model.safetensors")))


# --- the test split, spied on

def asking() -> tuple[str, ...]:
    """The vitdist functions on the stack, innermost first: who asked."""
    frame, names = sys._getframe(2), []
    while frame is not None:
        if "vitdist" in frame.f_code.co_filename.split(os.sep):
            names.append(frame.f_code.co_name)
        frame = frame.f_back
    return tuple(names)


class SpiedSplit(TensorImages):
    """A test split that records each image read (by index, or its whole tensor) with who asked. A split held
    in memory is read in this process (no loader workers: data.loader_workers), so every read is seen."""

    def __init__(self, split: TensorImages, reads: list):
        self._split, self._reads = split, reads

    def __len__(self):
        return len(self._split)

    def __getitem__(self, i):
        self._reads.append(asking())
        return self._split[i]

    @property
    def images(self):
        self._reads.append(asking())
        return self._split.images

    @property
    def labels(self):
        self._reads.append(asking())
        return self._split.labels

    def subset(self, idx):
        self._reads.append(asking())
        return self._split.subset(idx)


FLAGS = ["--data.name", "digits", "--data.train-subset", "128", "--data.val-subset", "64", "--data.train-eval-size",
         "32", "--model.embed-dim", "32", "--model.num-layers", "2", "--model.num-heads", "2",
         "--model.dim-feedforward", "64", "--batch.global-batch-size", "32", "--epochs", "1",
         "--optim.warmup-epochs", "0", "--early-stop-patience", "0", "--log.no-tensorboard", "--log.no-progress"]


def test_no_trial_of_tune_or_a_sweep_reads_the_test_split_only_tunes_final_scoring_once(tmp_path, monkeypatch,
                                                                                         one_thread):
    """Every load of the data, wherever it happens (train, evaluate, the checks, the range test), hands out a
    spied test split. tune (the checks, a 2-rate sweep, the template trial) reads it once, image by image, in
    its final scoring; sweep lr, sweep grid and sweep range never."""
    from vitdist.checklist import sweep
    from vitdist.checklist import tune as tune_mod

    reads, built = [], []
    real_load = data_mod.load_data

    def spied_load(*args, **kwargs):
        bundle = real_load(*args, **kwargs)
        built.append(asking())
        if bundle.test is not None:
            bundle.test = SpiedSplit(bundle.test, reads)
        return bundle

    monkeypatch.setattr(data_mod, "load_data", spied_load)
    monkeypatch.setattr(run_mod, "load_data", spied_load)
    n_test = len(real_load(DataConfig(name="digits"), 32, 0).test)

    assert tune_mod.main([*FLAGS, "--tune-dir", str(tmp_path / "tune"), "--budget-trials", "3", "--sweep-epochs",
                          "1", "--lrs", "1e-2", "1e-3", "--seeds", "1", "--confirm-seeds", "0"]) == 0
    trained = [who for who in built if "train_trial" in who]
    assert len(trained) == 3  # the spy was there: 2 sweep rates and the template, each with a test split at hand
    assert all("score_test_once" in who and "train_trial" not in who for who in reads), set(reads)
    assert len(reads) == n_test  # once: each image read one time, by the final scoring
    summary = json.loads((tmp_path / "tune" / "tune.json").read_text())["summary"]
    assert summary["test"]["num_samples"] == n_test

    for mode, flags in (("lr", ["--lrs", "1e-3"]), ("grid", ["--set", "optim.weight_decay=1e-3"]),
                        ("range", ["--num-steps", "10"])):
        reads.clear()
        built.clear()
        assert sweep.main([mode, *FLAGS, *flags, "--sweep-dir", str(tmp_path / mode)]) == 0
        assert built and not reads, (mode, set(reads))
