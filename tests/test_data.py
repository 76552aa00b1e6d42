import tarfile

import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA
from vitdist.config import DataConfig
from vitdist.data import (BatchAugment, EpochSampler, load_data, random_crop, stratified_order,
                          stratified_split)


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


def test_augment_normalizes_and_mixes():
    cfg = DataConfig(name="synthetic", mixup_alpha=0.8, cutmix_alpha=1.0)
    aug = BatchAugment(cfg, num_classes=10)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out, targets = aug(x, torch.arange(8))
    assert out.dtype == torch.float32 and out.min() >= -1.0 and out.max() <= 1.0
    assert targets.shape == (8, 10) and torch.allclose(targets.sum(1), torch.ones(8))
    assert torch.allclose(aug.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)), torch.ones(1, 3, 2, 2))


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
