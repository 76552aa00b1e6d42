import itertools
import json
import math
import tarfile

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from conftest import SHARED_DATA, tiny_config
from vitdist.config import DataConfig
from vitdist.data.augment import BatchAugment, color_jitter, jitter_colors, random_crop
from vitdist.data.batches import EpochSampler
from vitdist.data.sources import load_data, stratified_order, stratified_split
from vitdist.train.run import train


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


def test_random_erasing_fills_with_the_mean_colour_after_normalization():
    """--data.random-erasing 1.0 with a mean and std that differ per channel: as torchvision's Normalize then
    RandomErasing(value=0), each image's erased pixels are 0 in normalized units in every channel (the mean
    colour, not black's -mean/std), one rectangle, and every other pixel is Normalize's, computed here."""
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    cfg = DataConfig(name="synthetic", augment=False, random_erasing=1.0, mean=mean, std=std)
    x = torch.randint(0, 256, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    torch.manual_seed(0)
    out, _ = BatchAugment(cfg, 10)(x, torch.zeros(64, dtype=torch.long))
    normalized = v2.Normalize(mean, std)(x.float() / 255)  # torchvision's
    erased = ~torch.isclose(out, normalized, rtol=0, atol=1e-6).all(1)  # (B, H, W): changed in some channel
    assert erased.flatten(1).any(1).float().mean() >= 0.9  # p = 1: all but the rare image with no fitting box
    assert (out.permute(1, 0, 2, 3)[:, erased] == 0).all()  # every channel of every erased pixel: the mean colour
    rows, cols = erased.any(2), erased.any(1)
    assert torch.equal(erased, rows[:, :, None] & cols[:, None, :])  # one rectangle per image


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


def test_batched_color_jitter_is_torchvisions_per_image(one_thread):
    """jitter_colors with factors and an order per image: each image equals torchvision's adjust_brightness,
    adjust_contrast, adjust_saturation and adjust_hue applied to it alone, in its order, with its factors. All 24
    orders; the ends of ColorJitter(0.2, 0.2, 0.2, 0.1)'s ranges and of the functional ops' (0 and 2, hue +-0.5);
    random pixels (hue shifts wrapping past red both ways) and the HSV edge cases: two equal channels, grey, black,
    white."""
    orders = torch.tensor(list(itertools.permutations(range(4))))  # (24, 4)
    n = len(orders)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    x[:, 1, 0] = x[:, 0, 0]  # row 0: g == r
    x[:, 2, 1] = x[:, 1, 1]  # row 1: b == g
    x[:, 2, 2] = x[:, 0, 2]  # row 2: b == r
    x[:, :, 3] = x[:, :1, 3]  # row 3: grey
    x[:, :, 4, :4], x[:, :, 4, 4:] = 0, 255  # row 4: black, white
    x = x.float() / 255
    factors = torch.cat([torch.empty(n, 3).uniform_(0.8, 1.2), torch.empty(n, 1).uniform_(-0.1, 0.1)], 1)
    factors[:4] = torch.tensor([[0.8, 1.2, 0.8, -0.1], [1.2, 0.8, 1.2, 0.1], [0.0, 2.0, 0.0, 0.5],
                                [2.0, 0.0, 2.0, -0.5]])
    out = jitter_colors(x, factors, orders)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(n):
        expected = x[i]
        for op in orders[i].tolist():
            expected = ops[op](expected, factors[i, op].item())
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-5, msg=lambda m: f"image {i}: {m}")


def test_color_jitter_draws_torchvisions_ranges_and_every_order(monkeypatch):
    """What color_jitter draws for 24,000 images: factors uniform in [0.8, 1.2] (hue shift [-0.1, 0.1]), each
    image its own; each image's order a permutation of the four operations, all 24 about equally often (as
    torchvision's randperm(4) per call). Counts of 1000 expected: 5 standard deviations (5 sqrt(1000 x 23/24))
    is 155."""
    drawn = {}
    monkeypatch.setattr("vitdist.data.augment.jitter_colors",
                        lambda x, factors, order: drawn.update(f=factors, o=order))
    torch.manual_seed(0)
    color_jitter(torch.zeros(24_000, 3, 1, 1), 0.2, 0.2, 0.2, 0.1)
    f, o = drawn["f"], drawn["o"]
    lo, hi = torch.tensor([0.8, 0.8, 0.8, -0.1]), torch.tensor([1.2, 1.2, 1.2, 0.1])
    assert (f >= lo).all() and (f <= hi).all()
    assert torch.allclose(f.amin(0), lo, atol=1e-3) and torch.allclose(f.amax(0), hi, atol=1e-3)
    # uniform: mean at the centre, sd (hi - lo) / sqrt(12); standard errors at most 0.0008 and 0.0003
    assert torch.allclose(f.mean(0), (lo + hi) / 2, atol=0.004)
    assert torch.allclose(f.std(0), (hi - lo) / 12**0.5, atol=0.002)
    assert torch.equal(o.sort(1).values, torch.arange(4).expand(24_000, 4))
    counts = torch.unique(o, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and (counts - 1000).abs().max() < 155, counts


def jitter_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per image (B, 3, H, W) -> (B, 8): each channel's mean and std; the grey level's std / mean (contrast);
    mean (max - min) / mean max over the channels (saturation)."""
    grey, top, bottom = images.mean(1), images.amax(1), images.amin(1)
    return torch.cat([images.mean((2, 3)), images.std((2, 3)), (grey.std((1, 2)) / grey.mean((1, 2)))[:, None],
                      ((top - bottom).mean((1, 2)) / top.mean((1, 2)))[:, None]], 1)


def z_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two independent samples (n, ...) -> z of the difference in their means and in their variances, each over
    its standard error estimated from the samples: sqrt((var_a + var_b) / n) and sqrt((m4_a - var_a^2 + m4_b -
    var_b^2) / n), m4 the fourth central moment. A statistic constant in both (the grey image's saturation) gives 0.
    """
    n = a.shape[0]
    (ma, va, qa), (mb, vb, qb) = [(s.mean(0), (s - s.mean(0)).pow(2).mean(0), (s - s.mean(0)).pow(4).mean(0))
                                  for s in (a, b)]
    se_mean, se_var = ((va + vb) / n).sqrt(), ((qa - va**2 + qb - vb**2) / n).sqrt()
    return torch.stack([(ma - mb) / se_mean.clamp_min(1e-9), (va - vb) / se_var.clamp_min(1e-12)])


def test_batched_color_jitter_has_torchvisions_distribution(one_thread):
    """Two 4x4 images, a grey ramp and one of four colours, each 256 times through torchvision's per-image
    v2.ColorJitter(0.2, 0.2, 0.2, 0.1) and through color_jitter: per image 8 statistics (channel means and stds,
    contrast, saturation); over the 256 copies their means and variances agree within 5 standard errors (z below).

    Each z is nearly N(0, 1) if the distributions match (bounded statistics, n = 256 each side), so the largest of
    the 32 passes 5 with probability under 32 x 6e-7 = 2e-5 (here 3.1). The same rule rejects a brightness or
    contrast range of 0.3 (z 10.3, 9.5) and a hue range of 0.2 (9.9)."""
    ramp = torch.linspace(0.3, 0.65, 16).view(4, 4).expand(3, -1, -1)  # mid-greys: little clamping
    colours = torch.tensor([[0.7, 0.3, 0.2], [0.2, 0.6, 0.3], [0.3, 0.3, 0.7], [0.6, 0.6, 0.2]]).T  # (3, 4)
    base = torch.stack([ramp, colours[:, torch.arange(16).view(4, 4) % 4]])  # (2, 3, 4, 4)
    x = base.repeat_interleave(256, 0)  # (512, 3, 4, 4)
    torch.manual_seed(0)
    jitter = v2.ColorJitter(0.2, 0.2, 0.2, 0.1)
    expected = jitter_statistics(torch.stack([jitter(img) for img in x])).view(2, 256, 8).transpose(0, 1)

    def worst_z(*ranges):
        return z_scores(jitter_statistics(color_jitter(x, *ranges)).view(2, 256, 8).transpose(0, 1),
                        expected).abs().max().item()

    assert worst_z(0.2, 0.2, 0.2, 0.1) < 5
    assert worst_z(0.3, 0.2, 0.2, 0.1) > 5 and worst_z(0.2, 0.3, 0.2, 0.1) > 5 and worst_z(0.2, 0.2, 0.2, 0.2) > 5


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


@pytest.mark.parametrize("world", [1, 2])
def test_device_batches_are_the_sharded_loaders_batches(world):
    """The split on the device, indexed per step, gives every rank exactly the batches train_loader gives it under
    accelerate's sharding (BatchSamplerShard, as accelerator.prepare wraps it), epoch after epoch."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import DataLoader

    from vitdist.data.batches import DeviceBatches, train_loader
    from vitdist.data.images import TensorImages

    torch.manual_seed(0)
    ds = TensorImages(torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8), torch.arange(100) % 10)
    for rank in range(world):
        loader = train_loader(ds, 32 // world, 32, seed=3, num_workers=0, pin_memory=False)
        shard = BatchSamplerShard(loader.batch_sampler, num_processes=world, process_index=rank,
                                  split_batches=False, even_batches=True)
        sharded = DataLoader(ds, batch_sampler=shard)
        device = DeviceBatches(ds, 32, seed=3, rank=rank, world_size=world, device=torch.device("cpu"))
        assert len(device) == 3
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            device.set_epoch(epoch)
            pairs = list(zip(sharded, device, strict=True))
            assert len(pairs) == 3
            for (x, y), (dx, dy) in pairs:
                assert torch.equal(x, dx) and torch.equal(y, dy)


def test_training_from_files_and_from_the_device_take_the_same_steps(tmp_path, monkeypatch, one_thread):
    """An ImageFolder too large to hold (here: any) trains through loader workers' file decoding; held in memory
    it trains from the device, decoded on the first run and read from the cache on the next. Same images, same
    order, same seeds: the same steps and weights, bit for bit."""
    from conftest import tiny_config
    from safetensors.torch import load_file

    import vitdist.data.sources as data_mod
    from vitdist.train.run import train

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 40), ("val", 8)):
        for c in ("cat", "dog"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (36, 36, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    flags = dict(epochs=2, batch={"global_batch_size": 16},
                 data={"name": "imagefolder", "root": str(tmp_path / "data"), "num_workers": 2})
    train(tiny_config(tmp_path / "device", **flags))  # decodes the files into the cache
    train(tiny_config(tmp_path / "cached", **flags))  # reads the cache: the decode must not have moved any seed
    monkeypatch.setattr(data_mod, "IN_MEMORY_MAX_BYTES", 0)  # every split stays files, decoded per batch
    train(tiny_config(tmp_path / "files", **flags))
    steps = {run: (tmp_path / run / "steps.jsonl").read_text() for run in ("device", "cached", "files")}
    assert steps["device"] == steps["cached"] == steps["files"] and len(steps["files"].splitlines()) == 2 * 5
    a = load_file(tmp_path / "device" / "model.safetensors")
    for run in ("cached", "files"):
        b = load_file(tmp_path / run / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), run
