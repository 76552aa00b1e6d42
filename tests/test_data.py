import json
import math
import tarfile

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import SHARED_DATA, tiny_config
from vitdist.config import DataConfig
from vitdist.data import (BatchAugment, EpochSampler, load_data, random_crop, stratified_order,
                          stratified_split)
from vitdist.train import train


def test_stratified_split_keeps_class_shares():
    labels = torch.arange(1000) % 10
    train, val = stratified_split(labels, 100, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert torch.bincount(labels[val]).tolist() == [10] * 10
    assert torch.equal(stratified_split(labels, 100, seed=0)[1], val)  # seeded
    assert not torch.equal(stratified_split(labels, 100, seed=1)[1], val)


def test_stratified_prefix_of_32():
    labels = torch.arange(500) % 10
    first = labels[stratified_order(labels, seed=3)[:32]]
    counts = torch.bincount(first, minlength=10)
    assert counts.min() == 3 and counts.max() == 4


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    s = EpochSampler(100, 32, seed=5)
    s.set_epoch(2)
    order = list(s)
    assert len(order) == 96 and len(set(order)) == 96  # whole global batches only
    s.set_epoch(3)
    assert list(s) != order
    fresh = EpochSampler(100, 32, seed=5)
    fresh.set_epoch(2)
    assert list(fresh) == order


def test_random_crop_is_a_per_sample_shifted_window():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    torch.manual_seed(0)
    out = random_crop(x, padding=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output is some 8x8 window of its own padded image
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    # over many samples, offsets differ per sample (not one crop for the whole batch)
    many = random_crop(torch.full((64, 1, 4, 4), 255, dtype=torch.uint8), padding=2)
    assert len({tuple(m.flatten().tolist()) for m in many}) > 1


def mixed_lam(targets: torch.Tensor, y: torch.Tensor) -> float:
    """The one lam of a mixed batch, checking that each target row is lam x onehot(y_i) + (1 - lam) x
    onehot(y_{i-1}) (torchvision v2 pairs each sample with the batch rolled by one), with 0 < lam < 1."""
    lam = targets[0, y[0]].item()
    assert 0 < lam < 1, lam
    one_hot = F.one_hot(y, targets.shape[1]).float()
    assert torch.allclose(targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
    return lam


def batch_of_8(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight random uint8 images with eight distinct labels (of 10 classes), seeded."""
    torch.manual_seed(seed)
    return torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8)


def test_augment_normalizes_and_mixes():
    """Crop, flip, then MixUp or CutMix (one, at random): normalized to [-1, 1], targets mixed, not one-hot."""
    x, y = batch_of_8()
    aug = BatchAugment(DataConfig(name="synthetic", mixup_alpha=0.8, cutmix_alpha=1.0), num_classes=10)
    out, targets = aug(x, y)
    assert out.dtype == torch.float32 and out.min() >= -1.0 and out.max() <= 1.0
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
    mixed_lam(targets, y)
    assert torch.allclose(aug.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)), torch.ones(1, 3, 2, 2))


def test_mixup_blends_each_image_with_its_neighbour():
    """MixUp alone: image i is lam x_i + (1 - lam) x_{i-1} with the targets' lam."""
    x, y = batch_of_8()
    out, targets = BatchAugment(DataConfig(name="synthetic", augment=False, mixup_alpha=0.8), 10)(x, y)
    lam = mixed_lam(targets, y)
    clean = (x.float() / 255 - 0.5) / 0.5
    assert torch.allclose(out, lam * clean + (1 - lam) * clean.roll(1, 0), atol=1e-6)


def test_cutmix_pastes_one_box_from_the_neighbour():
    """CutMix alone: one box, the same for the whole batch, of image i - 1 pasted into image i; the rest of image
    i unchanged; lam is the share of pixels left."""
    x, y = batch_of_8()
    out, targets = BatchAugment(DataConfig(name="synthetic", augment=False, cutmix_alpha=1.0), 10)(x, y)
    lam = mixed_lam(targets, y)
    clean = (x.float() / 255 - 0.5) / 0.5
    pasted = torch.isclose(out, clean.roll(1, 0)).all(1)  # (B, H, W)
    assert (pasted | torch.isclose(out, clean).all(1)).all()
    box = pasted[0]
    assert (pasted == box).all()
    rows, cols = box.any(1), box.any(0)
    assert torch.equal(box, rows[:, None] & cols[None, :])  # a rectangle
    assert rows.nonzero().squeeze(1).diff().eq(1).all() and cols.nonzero().squeeze(1).diff().eq(1).all()
    assert lam == pytest.approx(1 - box.float().mean().item())


def test_color_jitter_draws_factors_per_image_and_keeps_the_normalized_range():
    """One image eight times through ColorJitter(0.2, 0.2, 0.2, 0.1): eight different results (factors drawn per
    image), recoloured but not moved (equal pixels stay equal), and undone by the configured mean and std, an
    image in [0, 1] where black stays at most 0.2 and white at least 0.64 (brightness and contrast 0.8-1.2;
    saturation and hue leave greys alone)."""
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    cfg = DataConfig(name="synthetic", augment=False, color_jitter=True, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    torch.manual_seed(0)
    palette = torch.cat([torch.zeros(3, 1), torch.full((3, 1), 255), torch.randint(0, 256, (3, 2))], 1)
    where = torch.randint(0, 4, (32, 32))
    x = palette.to(torch.uint8)[:, where].expand(8, -1, -1, -1)  # (8, 3, 32, 32): black, white and 2 colours
    out, y = BatchAugment(cfg, 10)(x, torch.arange(8))
    assert torch.equal(y, torch.arange(8))
    assert len({tuple(img.flatten().tolist()) for img in out}) == 8
    for img in out:
        for c in range(4):
            colours = img[:, where == c]
            assert torch.allclose(colours, colours[:, :1])
    pixels = out * std + mean
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert pixels[:, :, where == 0].max() <= 0.2 + 1e-5 and pixels[:, :, where == 1].min() >= 0.64 - 1e-5


def test_color_jitter_off_is_the_plain_path_and_on_only_recolours_it():
    """Off, without crop and flip: exactly the normalized input. With crop and flip, seed by seed, jitter on
    recolours the very batch that jitter off gives: the same crops and flips, each colour of the image (and the
    crop's black border) mapped to one colour per image."""
    x, y = batch_of_8()
    plain = BatchAugment(DataConfig(name="synthetic", augment=False, color_jitter=False), 10)(x, y)[0]
    assert torch.allclose(plain, (x.float() / 255 - 0.5) / 0.5, atol=1e-6)
    palette = torch.randint(1, 256, (3, 4))  # no black: black is the border
    x = palette.to(torch.uint8)[:, torch.randint(0, 4, (32, 32))].expand(8, -1, -1, -1).contiguous()
    for seed in (0, 1):
        torch.manual_seed(seed)
        plain = BatchAugment(DataConfig(name="synthetic", color_jitter=False), 10)(x, y)[0]
        torch.manual_seed(seed)
        jittered = BatchAugment(DataConfig(name="synthetic", color_jitter=True), 10)(x, y)[0]
        assert not torch.allclose(plain, jittered, atol=1e-3)
        masks = [(plain == -1).all(1)] + [torch.isclose(plain, (palette[:, c, None, None] / 255 - 0.5) / 0.5).all(1)
                                          for c in range(4)]  # (B, H, W) each
        assert torch.stack(masks).any(0).all()
        for img in range(8):
            for mask in masks:
                colours = jittered[img][:, mask[img]]
                assert torch.allclose(colours, colours[:, :1]), (seed, img)


def test_train_with_color_jitter_runs(tmp_path, one_thread):
    """A short run with --data.color-jitter: finite losses, and not the run without it."""
    on = train(tiny_config(tmp_path / "on", epochs=1, data={"color_jitter": True}))
    off = train(tiny_config(tmp_path / "off", epochs=1))
    loss = {run: json.loads((tmp_path / run / "metrics.jsonl").read_text())["train_loss"] for run in ("on", "off")}
    assert on["epochs_run"] == off["epochs_run"] == 1 and all(math.isfinite(v) for v in loss.values())
    assert loss["on"] != loss["off"]


def test_digits_is_offline_real_images():
    data = load_data(DataConfig(name="digits"), img_size=32, seed=0)
    assert data.num_classes == 10
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


def test_imagefolder_with_train_and_test(tmp_path):
    """A small ImageFolder root: train/ and test/ (val held out of train), images resized to img_size."""
    for split, n in (("train", 20), ("test", 5)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                color = (255, 0, 0) if c == "cat" else (0, 0, 255)
                Image.new("RGB", (40, 40), color).save(tmp_path / split / c / f"{i}.jpg")
    data = load_data(DataConfig(name="imagefolder", root=str(tmp_path), val_fraction=0.2), img_size=32, seed=0)
    assert data.classes == ["cat", "dog"]
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 10)
    x, y = data.test[0]
    assert x.shape == (3, 32, 32) and x[0].float().mean() > 200  # red cat, resized from 40px


@pytest.mark.data
def test_the_shared_cifar10_copy_loads_as_an_imagefolder(tmp_path):
    """A slice of ../shared/data's CIFAR-10 JPEGs (8 per class and split) through the real imagefolder path."""
    if not SHARED_DATA.exists():
        pytest.skip(f"needs {SHARED_DATA} (the shared CIFAR-10 copy), absent here")
    taken = {}
    with tarfile.open(SHARED_DATA) as tar:
        for member in tar:
            parts = member.name.split("/")  # cifar10/<split>/<class>/<file>.jpg
            if member.isfile() and len(parts) == 4 and taken.get(tuple(parts[1:3]), 0) < 8:
                taken[tuple(parts[1:3])] = taken.get(tuple(parts[1:3]), 0) + 1
                tar.extract(member, tmp_path, filter="data")
    data = load_data(DataConfig(name="imagefolder", root=str(tmp_path / "cifar10"), val_fraction=0.25),
                     img_size=32, seed=0)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck"]
    assert (len(data.train), len(data.val), len(data.test)) == (60, 20, 80)
    x, _ = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and 20 < x.float().mean() < 235
