"""Issue 10: every fault answered. Bad data, a run folder that cannot hold the run, messages that said less than
they knew, fp16 overflow read as overflow."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, tiny_config
from test_diagnose import config as diagnose_config
from test_diagnose import make_rows
from vitdist.checklist import diagnose as dg
from vitdist import train as train_mod
from vitdist.train import run as run_mod
from vitdist.train import folder as folder_mod
from vitdist.config import DataConfig, UserError
from vitdist.data.sources import load_data
from vitdist.train.run import train
from vitdist.train.step import grad_norm_stats


def image_folder(root, classes=("cat", "dog"), splits=(("train", 12), ("val", 4)), size=24):
    for split, n in splits:
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (size, size), (40 * k + i, 255 - 30 * k, 7 * i)).save(root / split / c / f"{i}.png")
    return root


def folder_config(root, **data) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), train_eval_size=8, **data)


# --- the decode cache follows the files

def test_a_changed_added_or_removed_file_decodes_afresh(tmp_path):
    root = image_folder(tmp_path / "data")
    first = load_data(folder_config(root), 16, 0)
    again = load_data(folder_config(root), 16, 0)  # from the cache
    assert torch.equal(first.train.images, again.train.images)
    # The same name, size and class: only the pixels and the modification time differ.
    path = root / "train" / "dog" / "3.png"
    Image.new("RGB", (24, 24), (0, 0, 0)).save(path)
    changed = load_data(folder_config(root), 16, 0)
    assert not torch.equal(first.train.images, changed.train.images)
    assert changed.train.images.sum() < first.train.images.sum()  # a black image came in
    Image.new("RGB", (24, 24), (9, 9, 9)).save(root / "train" / "dog" / "12.png")
    assert len(load_data(folder_config(root), 16, 0).train) == len(first.train) + 1
    (root / "train" / "cat" / "0.png").unlink()
    (root / "train" / "dog" / "12.png").unlink()
    assert len(load_data(folder_config(root), 16, 0).train) == len(first.train) - 1


def bmp_folder(root, n: int = 4, size: int = 16):
    """train/ and val/ of classes cat and dog, as BMP files: uncompressed, so every file has the same size
    whatever its pixels. Every file gets the same modification time (set_mtimes)."""
    for split in ("train", "val"):
        for k, c in enumerate(("cat", "dog")):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (size, size), (60 * k + 9 * i, 200 - 40 * k, 5 + 11 * i)).save(
                    root / split / c / f"{i}.bmp")
    set_mtimes(root, 1_700_000_000)
    return root


def set_mtimes(root, seconds: int) -> None:
    for path in root.rglob("*.bmp"):
        os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def listed(split_dir):
    """(classes, images, labels) of an ImageFolder split, decoded here with PIL alone (the files are already
    img_size): class folders sorted, then files sorted, as torchvision's ImageFolder lists them."""
    classes = sorted(p.name for p in split_dir.iterdir())
    files = [(p, k) for k, c in enumerate(classes) for p in sorted((split_dir / c).iterdir())]
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1) for p, _ in files]
    return classes, torch.stack(images), torch.tensor([k for _, k in files])


def decodes_as_listed(root) -> None:
    data = load_data(folder_config(root), 16, 0)
    for split, got in (("train", data.train), ("val", data.val)):
        classes, images, labels = listed(root / split)
        assert data.classes == classes
        assert torch.equal(got.labels, labels), split
        assert torch.equal(got.images, images), split


def test_the_decode_cache_follows_pixels_times_and_renamed_class_folders(tmp_path):
    """The decode cache's key is each file's path, label, size and modification time: a rewrite of the same
    size (only the pixels and the time differ) decodes afresh; a touched file gives its own pixels (the same);
    a renamed class folder (every file's path and label change, their sizes and times do not) gives the new
    listing, not the cached one. Each load against the files decoded here with PIL."""
    root = bmp_folder(tmp_path / "data")
    decodes_as_listed(root)
    decodes_as_listed(root)  # warm
    path = root / "train" / "dog" / "2.bmp"
    size = path.stat().st_size
    Image.new("RGB", (16, 16), (250, 3, 128)).save(path)  # new pixels, the same size
    assert path.stat().st_size == size
    os.utime(path, ns=(1_700_000_100 * 10**9,) * 2)
    decodes_as_listed(root)
    os.utime(path, ns=(1_700_000_200 * 10**9,) * 2)  # touched: the same pixels, another time
    decodes_as_listed(root)
    set_mtimes(root, 1_700_000_300)  # every file one time again: sizes and times say nothing of which is which
    decodes_as_listed(root)  # warm with cat = 0, dog = 1
    for split in ("train", "val"):
        (root / split / "dog").rename(root / split / "ant")  # now ant = 0 (the dog files), cat = 1
    decodes_as_listed(root)


# --- unreadable images

def test_an_unreadable_image_is_one_line_naming_it(tmp_path):
    root = image_folder(tmp_path / "data")
    bad = root / "train" / "dog" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(UserError, match=rf"^{bad}: not a readable image \(1 such in .*--data.skip-corrupt"):
        load_data(folder_config(root), 16, 0)
    proc = subprocess.run([sys.executable, "-m", "vitdist", "train", "--data.name", "imagefolder", "--data.root",
                           str(root), "--epochs", "1", "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and str(bad) in proc.stderr


def test_skip_corrupt_leaves_them_out_and_lists_them(tmp_path, capsys):
    root = image_folder(tmp_path / "data")
    bad = [root / "train" / "dog" / "3.png", root / "val" / "cat" / "1.png"]
    for path in bad:
        path.write_bytes(b"garbage")
    data = load_data(folder_config(root, skip_corrupt=True), 16, 0)
    assert sorted(data.skipped) == sorted(map(str, bad))
    assert len(data.train) + len(data.val) == 2 * 12 + 2 * 4 - 2
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1, batch={"global_batch_size": 8},
                      data={"name": "imagefolder", "root": str(root), "skip_corrupt": True, "train_eval_size": 8}))
    assert f"skipped 2 unreadable images ({run / 'skipped_images.txt'})" in capsys.readouterr().out
    assert sorted((run / "skipped_images.txt").read_text().splitlines()) == sorted(map(str, bad))


def test_sets_decoded_per_batch_report_and_skip_unreadable_images_too(tmp_path):
    """Sets too large to hold decoded ($VITDIST_IN_MEMORY_GB, 0 here) are decoded by loader workers: the file a
    worker cannot read is still one line (not the worker's traceback), and --data.skip-corrupt finds such files
    in one pass at start."""
    root = image_folder(tmp_path / "data")
    bad = root / "train" / "dog" / "3.png"
    bad.write_bytes(b"garbage")
    run = lambda *flags: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "vitdist", "train", "--data.name", "imagefolder", "--data.root", str(root),
         "--data.num-workers", "1", "--data.train-eval-size", "8", "--model.embed-dim", "32", "--model.num-layers",
         "1", "--model.num-heads", "2", "--model.dim-feedforward", "64", "--batch.global-batch-size", "8",
         "--epochs", "1", "--log.no-tensorboard", *flags],
        capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, "VITDIST_IN_MEMORY_GB": "0"})
    proc = run("--run-dir", str(tmp_path / "a"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"vitdist: error: {bad}: not a readable image (cannot identify "
                                                f"image file '{bad}'): replace or remove it"], proc.stderr[-2000:]
    proc = run("--run-dir", str(tmp_path / "b"), "--data.skip-corrupt")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipped 1 unreadable images ({tmp_path / 'b' / 'skipped_images.txt'})" in proc.stdout
    assert (tmp_path / "b" / "skipped_images.txt").read_text().splitlines() == [str(bad)]


# --- the run folder, checked before any data is read

def test_a_run_folder_that_cannot_hold_the_run_is_one_line(tmp_path, monkeypatch):
    def refused(run_dir, match):
        reads = []
        monkeypatch.setattr(run_mod, "load_data", lambda *a: reads.append(a))
        with pytest.raises(UserError, match=match):
            train(tiny_config(run_dir))
        assert not reads  # before any data was read

    (tmp_path / "a_file").write_text("x")
    refused(tmp_path / "a_file", "is a file, not a folder")
    refused(tmp_path / "a_file" / "run", "a_file is a file, not a folder")
    refused("/sys/vitdist-run", r"cannot write in /sys \(")  # read-only here, even to root
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(folder_mod.shutil, "disk_usage", lambda path: Usage(10 << 20, 10 << 20, 100 << 10))
    refused(tmp_path / "run", r"0 MB free there, and a checkpoint of this model takes about 1 MB")


# --- messages that said less than they knew

def test_a_class_mismatch_names_what_is_missing_and_what_is_extra(tmp_path):
    root = image_folder(tmp_path / "data", classes=("cat", "dog", "truck"), splits=(("train", 2),))
    image_folder(root, classes=("ant", "cat", "dog"), splits=(("val", 2),))
    with pytest.raises(UserError, match=r"missing from val/ truck; only in val/ ant: every split"):
        load_data(folder_config(root), 16, 0)


def test_a_subset_larger_than_the_split_is_refused():
    with pytest.raises(UserError, match=r"--data.train-subset 100000 is more than the 256 train images"):
        load_data(DataConfig(name="synthetic", synthetic_size=320, val_fraction=0.2, train_subset=100_000), 16, 0)


@pytest.mark.parametrize("command", [["vitdist", "train"], ["vitdist.train"]], ids=["vitdist train",
                                                                                    "python -m vitdist.train"])
def test_help_into_a_closed_pipe_ends_quietly(command):
    """`vitdist train --help | head` and `python -m vitdist.train --help | head`: the reader leaves early; no
    BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", *command, "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # before vitdist has written a byte
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and err == "", err[-2000:]


def test_no_deepspeed_line_in_a_single_process_run(tmp_path):
    pytest.importorskip("deepspeed", reason="the line comes from importing DeepSpeed")
    proc = subprocess.run([sys.executable, "-m", "vitdist", "train", "--data.name", "synthetic", "--epochs", "1",
                           "--model.num-layers", "1", "--model.embed-dim", "32", "--model.num-heads", "2",
                           "--model.dim-feedforward", "64", "--log.no-tensorboard", "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Setting accelerator" not in proc.stdout + proc.stderr


def test_a_run_that_diverges_in_its_first_epoch_says_so_and_diagnose_reads_it(tmp_path, monkeypatch, capsys):
    real_forward = run_mod.VisionTransformer.forward

    def forward(self, x):
        out = real_forward(self, x)
        return out * float("nan") if self.training else out

    monkeypatch.setattr(run_mod.VisionTransformer, "forward", forward)
    run = tmp_path / "run"
    code = train_mod.main(["--data.name", "synthetic", "--data.synthetic-size", "320", "--epochs", "2",
                           "--model.num-layers", "1", "--log.no-tensorboard", "--log.no-progress", "--run-dir",
                           str(run)])
    err = capsys.readouterr().err
    assert code == 1 and "non-finite loss at epoch 1, step 1" in err
    assert "No checkpoint was written before it" in err and "kept in" not in err
    assert dg.main([str(run), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["verdict"] == dg.DIVERGED and "first epoch" in verdict["lines"][0]


# --- fp16: an overflow step is the scaler's, not a divergence

def test_fp16_overflow_steps_are_counted_not_averaged():
    log = [{"grad_norm": g} for g in (math.inf, math.inf, 2.0, 4.0)]
    assert grad_norm_stats(log) == (3.0, 4.0, 2)
    assert grad_norm_stats([{"grad_norm": math.inf}]) == (None, None, 1)


def test_diagnose_reads_fp16_overflow_as_overflow():
    steps = [{"step": i, "epoch": 1, "loss": 2.3 - 0.01 * i, "lr": 1e-3,
              "grad_norm": math.inf if i < 5 else 1.0} for i in range(1, 60)]
    rows = make_rows()
    rows[0]["skipped_steps"] = 4
    healthy = dg.diagnose(rows, diagnose_config(precision="fp16"), steps)
    assert healthy.verdict != dg.DIVERGED and healthy.evidence["fp16_skipped_steps"] == 4
    assert any("4 fp16 overflow steps skipped" in line for line in healthy.lines)
    # The same infinite norms in a bf16 run are a divergence.
    assert dg.diagnose(rows, diagnose_config(precision="bf16"), steps).verdict == dg.DIVERGED


# --- short runs

def test_a_warmup_longer_than_the_run_is_said_at_start(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", epochs=2, optim={"warmup_epochs": 5.0}))
    out = capsys.readouterr().out
    steps = [json.loads(line) for line in open(tmp_path / "run" / "steps.jsonl")]
    top = max(s["lr"] for s in steps)
    assert top < 1e-3 * 0.5  # 16 of 40 warmup steps: it never got near 1e-3
    assert (f"warning: --optim.warmup-epochs 5 of a 2-epoch run: the rate never reaches --optim.lr 0.001 "
            f"(it ends at {top:.3g}); a tenth of the run is usual: --optim.warmup-epochs 0.2") in out
    train(tiny_config(tmp_path / "ok", epochs=2, optim={"warmup_epochs": 0.5}))
    assert "warning" not in capsys.readouterr().out


def test_sweep_lr_without_epochs_runs_a_few_epochs_a_rate(tmp_path, capsys):
    from test_sweep import TINY_FLAGS as SWEEP_FLAGS
    from vitdist.checklist.sweep import SWEEP_EPOCHS
    from vitdist.checklist.sweep import main as sweep_main

    flags = [f for i, f in enumerate(SWEEP_FLAGS) if f != "--epochs" and SWEEP_FLAGS[i - 1] != "--epochs"]
    assert sweep_main(["lr", *flags, "--lrs", "1e-3", "--sweep-dir", str(tmp_path)]) == 0
    assert f"sweep lr: {SWEEP_EPOCHS} epochs a rate" in capsys.readouterr().out
    metrics = [json.loads(line) for line in open(tmp_path / "lr_0.001" / "metrics.jsonl")]
    assert len(metrics) == SWEEP_EPOCHS == 5
