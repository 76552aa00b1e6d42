"""Data sets and splits: CIFAR-10/100, ImageFolder, the digits demo and synthetic data, each as train / val / test
splits with a seeded, stratified validation hold-out where the source has none, and the subsets the config asks
for (load_data -> DataBundle)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import DataConfig, UserError
from .cache import DEFAULT_ROOT, _decode_cached, _decode_labels
from .images import FileImages, TensorImages, UNREADABLE, is_image_file


# Decoded image tensors up to this size (GiB, $VITDIST_IN_MEMORY_GB) stay in memory; larger ImageFolder sets
# are decoded per batch.
IN_MEMORY_MAX_BYTES = int(float(os.environ.get("VITDIST_IN_MEMORY_GB", "4")) * 2**30)


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Optional[Dataset]
    train_eval: Dataset
    """A fixed subset of train, evaluated clean each epoch (no augmentation, no dropout)."""
    num_classes: int
    classes: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)
    """Image files left out as unreadable (--data.skip-corrupt)."""
    left_out: list[str] = field(default_factory=list)
    """Files in class folders left out as not images (is_image_file), every split's."""


def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation whose every prefix has the classes in proportion to their counts.

    Shuffle, then sort by (rank within its class + 0.5) / class count: the first n are a stratified sample.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    shuffled = labels[perm]
    counts = torch.bincount(shuffled)
    rank = torch.zeros_like(shuffled)
    for c in range(len(counts)):
        where = (shuffled == c).nonzero().squeeze(1)
        rank[where] = torch.arange(len(where))
    key = (rank.double() + 0.5) / counts[shuffled].double()
    return perm[torch.argsort(key, stable=True)]


def stratified_split(labels: torch.Tensor, n_second: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (first, second) with len(second) == n_second, both stratified; each sorted."""
    order = stratified_order(labels, seed)
    return order[n_second:].sort().values, order[:n_second].sort().values


def _labels(ds: Dataset) -> torch.Tensor:
    return ds.labels


def load_data(cfg: DataConfig, img_size: int, seed: int) -> DataBundle:
    """Build train / val / test splits of cfg.name at img_size."""
    cfg.check_root()  # here, where data is read: a config (a run's config.json) is valid without its data
    skipped: list[str] = []
    left_out: list[str] = []
    if cfg.name in ("cifar10", "cifar100"):
        train, test, classes = _cifar(cfg)
        val = None
    elif cfg.name == "imagefolder":
        train, val, test, classes, skipped, left_out = _imagefolder(cfg, img_size)
    elif cfg.name == "digits":
        train, test, classes = _digits(img_size, seed)
        val = None
    elif cfg.name == "synthetic":
        train, classes = _synthetic(cfg.synthetic_size, img_size), [str(c) for c in range(10)]
        test, val = None, None
    else:  # pragma: no cover - Literal already restricts it
        raise UserError(f"--data.name {cfg.name!r} is unknown")

    train, test = _resize(train, img_size), (_resize(test, img_size) if test is not None else None)
    if val is None:
        n_val = round(len(train) * cfg.val_fraction)
        if n_val == 0:
            raise UserError(f"--data.val-fraction {cfg.val_fraction} leaves no validation samples out of "
                            f"{len(train)}: raise it")
        train_idx, val_idx = stratified_split(_labels(train), n_val, seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    for flag, n, split in (("train", cfg.train_subset, train), ("val", cfg.val_subset, val)):
        if n is not None and n > len(split):
            raise UserError(f"--data.{flag}-subset {n} is more than the {len(split)} {flag} images of {cfg.name}: "
                            f"pass at most {len(split)}, or leave it out to use them all")
    if cfg.train_subset is not None and cfg.train_subset < len(train):
        train = train.subset(stratified_order(_labels(train), seed + 1)[: cfg.train_subset].sort().values)
    if cfg.val_subset is not None and cfg.val_subset < len(val):
        val = val.subset(stratified_order(_labels(val), seed + 2)[: cfg.val_subset].sort().values)
    n_eval = min(cfg.train_eval_size, len(train))
    train_eval = train.subset(stratified_order(_labels(train), seed + 3)[:n_eval].sort().values)
    return DataBundle(train, val, test, train_eval, len(classes), classes, cfg.name, skipped, left_out)


def _resize(ds: Dataset, img_size: int) -> Dataset:
    if isinstance(ds, TensorImages) and ds.images.shape[-1] != img_size:
        images = F.interpolate(ds.images.float(), size=(img_size, img_size), mode="bilinear", antialias=True,
                               align_corners=False)
        return TensorImages(images.round().clamp(0, 255).to(torch.uint8), ds.labels)
    return ds


def _cifar(cfg: DataConfig):
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    root = Path(cfg.root).expanduser() if cfg.root else DEFAULT_ROOT / "data"
    try:
        splits = [cls(str(root), train=train, download=cfg.download) for train in (True, False)]
    except Exception as e:  # offline, or a broken copy: torchvision raises RuntimeError or URLError
        raise UserError(f"{cfg.name} not found in {root} and could not be downloaded ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]}); pass --data.root DIR holding an existing copy "
                        f"(the folder with {'cifar-10-batches-py' if cfg.name == 'cifar10' else 'cifar-100-python'}), "
                        f"or use --data.name imagefolder --data.root DIR") from None
    out = []
    for ds in splits:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
        out.append(TensorImages(images, torch.tensor(ds.targets, dtype=torch.int64)))
    return out[0], out[1], list(splits[0].classes)


def list_images(folder: Path):
    """torchvision's ImageFolder listing of folder (class folders sorted, then paths sorted) taking every file
    is_image_file calls an image, and the paths of the files it left out. An empty class folder is a UserError."""
    from torchvision.datasets import ImageFolder

    left_out: list[str] = []

    def is_valid_file(path: str) -> bool:
        if is_image_file(path):
            return True
        left_out.append(path)
        return False

    try:
        listing = ImageFolder(str(folder), is_valid_file=is_valid_file, allow_empty=True)
    except FileNotFoundError:  # torchvision's word for a folder without class folders
        raise UserError(f"{folder} holds no class folders: put each class's images in a folder of its own "
                        f"({folder / 'CLASS'}/*.jpg)") from None
    counts = torch.bincount(torch.tensor(listing.targets, dtype=torch.int64), minlength=len(listing.classes))
    empty = [folder / c for c, n in zip(listing.classes, counts.tolist()) if n == 0]
    if empty:
        def holds(path: Path) -> str:  # what an empty class folder holds instead
            n = sum(Path(p).is_relative_to(path) for p in left_out)
            return f" ({n} non-image file{'s' * (n > 1)})" if n else ""

        many = len(empty) > 1
        raise UserError(", ".join(f"{path}{holds(path)}" for path in empty[:10]) + " ..." * (len(empty) > 10)
                        + f": {'class folders' if many else 'a class folder'} with no image files: add images, or "
                        f"remove {'them' if many else 'it'} from every split to train without "
                        f"{'those classes' if many else 'that class'}")
    return listing, left_out


def _imagefolder(cfg: DataConfig, img_size: int):
    root = Path(cfg.root).expanduser()
    train_listing, left_out = list_images(root / "train")
    classes = train_listing.classes
    splits, skipped = {}, []
    for split in ("train", "val", "test"):
        if not (root / split).is_dir():
            splits[split] = None
            continue
        if split != "train":
            listing, more = list_images(root / split)
            left_out += more
        else:
            listing = train_listing
        if listing.classes != classes:
            missing, extra = sorted(set(classes) - set(listing.classes)), sorted(set(listing.classes) - set(classes))
            raise UserError(f"--data.root {root}: {split}/ and train/ differ in their class folders: "
                            + "; ".join(f"{what} {', '.join(names[:10])}{' ...' * (len(names) > 10)}"
                                        for what, names in ((f"missing from {split}/", missing),
                                                            (f"only in {split}/", extra)) if names)
                            + ": every split needs the same class folders")
        files = FileImages(listing.samples, img_size)
        if len(files) * 3 * img_size * img_size <= IN_MEMORY_MAX_BYTES:
            files = _decode_cached(files, root / split)
            labels = files.labels
        elif cfg.skip_corrupt:  # decoded per batch: finding the unreadable ones first costs one pass over the files
            labels = _decode_labels(files, f"checking {root / split}")
        else:  # an unreadable file stops the run when a loader worker reaches it
            labels = files.labels
        bad = (labels == UNREADABLE).nonzero().flatten().tolist()
        if bad:
            names = [listing.samples[i][0] for i in bad]
            if not cfg.skip_corrupt:
                raise UserError(f"{names[0]}: not a readable image ({len(bad)} such in {root / split}): "
                                f"replace or remove it, or pass --data.skip-corrupt to train without them")
            skipped += names
            files = files.subset((labels != UNREADABLE).nonzero().flatten())
        splits[split] = files
    return splits["train"], splits["val"], splits["test"], classes, skipped, left_out


def _digits(img_size: int, seed: int):
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), as RGB; 20% held out as the test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images).float().mul(255.0 / 16.0).round().to(torch.uint8)  # (N, 8, 8)
    images = images[:, None].expand(-1, 3, -1, -1).contiguous()  # (N, 3, 8, 8)
    full = TensorImages(images, torch.from_numpy(d.target).long())
    train_idx, test_idx = stratified_split(full.labels, round(0.2 * len(full)), seed=12345)  # fixed test set
    return full.subset(train_idx), full.subset(test_idx), [str(c) for c in range(10)]


def _synthetic(n: int, img_size: int, num_classes: int = 10) -> TensorImages:
    """Learnable noise: each class is a fixed smooth random pattern, each image that pattern plus noise."""
    g = torch.Generator().manual_seed(1234)  # the same data set whatever the run's seed
    templates = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=(img_size, img_size),
                              mode="bilinear", align_corners=False)
    labels = torch.arange(n) % num_classes
    images = templates[labels] + 0.25 * torch.randn(n, 3, img_size, img_size, generator=g)
    return TensorImages(images.clamp(0, 1).mul(255).round().to(torch.uint8), labels)
