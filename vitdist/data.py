"""Data sets, splits, the epoch sampler and batched augmentation.

Every source ends as a Dataset of (uint8 image (C, H, W), label). CIFAR-sized sets are decoded once into one
uint8 tensor; augmentation runs on whole batches on the training device (BatchAugment), so the input pipeline
is a few tensor ops per step rather than PIL work per image.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from .augment import BatchRandAugment, BatchTrivialAugmentWide, RandomErasing
from .config import DataConfig, UserError

DEFAULT_ROOT = Path(os.environ.get("VITDIST_CACHE", "~/.cache/vitdist")).expanduser()
# Decoded image tensors up to this size (GiB, $VITDIST_IN_MEMORY_GB) stay in memory; larger ImageFolder sets
# are decoded per batch.
IN_MEMORY_MAX_BYTES = int(float(os.environ.get("VITDIST_IN_MEMORY_GB", "4")) * 2**30)
UNREADABLE = -1  # the label FileImages gives a file it cannot decode, when asked to mark rather than raise
# Part of the decode cache's key: raise it whenever decode() turns the same file into different pixels, so that
# a warm cache of the earlier decoder's images is decoded afresh. 2: 16-bit grey scaled to 8 bits, not clipped.
DECODER_VERSION = 2
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's 16-bit grey ("I": older Pillow's, 32-bit)


@functools.cache
def image_extensions() -> frozenset[str]:
    """The file extensions (lower case, with the dot) of every format Pillow can open: what "an image file" means
    to vitdist, for ImageFolder training and for `vitdist predict`'s folders alike."""
    from PIL import Image

    # registered_extensions() also lists formats Pillow only writes (PDF, Palm); MPO files open as JPEG.
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN or fmt == "MPO")


def is_image_file(path: str | os.PathLike) -> bool:
    return os.path.splitext(path)[1].lower() in image_extensions()


class TensorImages(Dataset):
    """Images held as one uint8 tensor (N, C, H, W) with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(labels)
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def subset(self, idx: torch.Tensor) -> "TensorImages":
        return TensorImages(self.images[idx], self.labels[idx])


def decode(image, img_size: int) -> torch.Tensor:
    """A PIL image of any size and mode -> (3, img_size, img_size) uint8: RGB, resized with antialiasing. The one
    way vitdist turns an image file into pixels: ImageFolder runs, and `vitdist predict` / RunInfo.preprocess.
    Raise DECODER_VERSION when what it returns for a file changes."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = _grey_to_8_bits(image)
    return v2.Resize((img_size, img_size), antialias=True)(v2.functional.pil_to_tensor(image.convert("RGB")))


def _grey_to_8_bits(image):
    """16-bit grey (0..65535) -> 8-bit grey "L": x / 257 rounded, so 257 k -> k and 65535 -> 255. PIL's own
    convert clips at 255 (a 16-bit PNG turns near-white) and neither PIL nor torchvision rounds (to_dtype shifts
    right by 8), so written here."""
    import numpy as np
    from PIL import Image

    x = np.asarray(image).astype(np.int64).clip(0, 65535)  # "I" is 32-bit signed: clipped to the 16-bit range
    return Image.fromarray(((x + 128) // 257).astype(np.uint8))  # floor((x + 128) / 257) = round(x / 257)


class FileImages(Dataset):
    """Image files decoded with PIL per item and resized to img_size: for sets too large to hold decoded."""

    def __init__(self, samples: list[tuple[str, int]], img_size: int, mark_unreadable: bool = False):
        self.samples, self.img_size, self.mark_unreadable = samples, img_size, mark_unreadable
        self.labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                return decode(im, self.img_size), torch.tensor(label)
        except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            if self.mark_unreadable:  # decoding into memory: the main process reports or skips it
                return torch.zeros(3, self.img_size, self.img_size, dtype=torch.uint8), torch.tensor(UNREADABLE)
            raise UserError(f"{path}: not a readable image ({e}): replace or remove it") from None

    def subset(self, idx: torch.Tensor) -> "FileImages":
        return FileImages([self.samples[i] for i in idx.tolist()], self.img_size)


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


def _decode_cached(files: FileImages, where: Path) -> TensorImages:
    """Decode every file once into a uint8 tensor, cached under $VITDIST_CACHE/decoded (~/.cache/vitdist). The key
    covers every file's path, label, size and modification time: a changed, added or removed file decodes afresh.
    An unreadable file is kept in it marked UNREADABLE, for the caller to report or skip."""
    h = hashlib.sha1(f"{files.img_size}|decoder {DECODER_VERSION}".encode())
    for path, label in files.samples:
        st = os.stat(path)
        h.update(f"|{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    folder = f"{where.name}-{hashlib.sha1(str(where.resolve()).encode()).hexdigest()[:8]}"
    cache = DEFAULT_ROOT / "decoded" / f"{folder}-{h.hexdigest()[:16]}.pt"
    if cache.exists():
        d = torch.load(cache, weights_only=True)  # tensors only: the default from torch 2.6, explicit for 2.4-2.5
        return TensorImages(d["images"], d["labels"])
    parts = list(_decode_all(files, f"decoding {where}"))
    out = TensorImages(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save({"images": out.images, "labels": out.labels}, tmp)
    os.replace(tmp, cache)  # atomic: ranks decoding at once never read half a file
    for old in cache.parent.glob(f"{folder}-*.pt"):  # this folder's earlier contents
        if old != cache:
            old.unlink(missing_ok=True)
    return out


def _decode_all(files: FileImages, desc: str):
    """(images, labels) batches of every file in order, decoded by loader workers; an unreadable file is marked
    UNREADABLE in the labels."""
    from tqdm.auto import tqdm

    from .stopping import STOP, Interrupted

    marking = FileImages(files.samples, files.img_size, mark_unreadable=True)
    # Batches of 128: a signal is seen within one of them, and the workers wind down as quickly.
    loader = DataLoader(marking, batch_size=128, num_workers=min(4, os.cpu_count() or 1), generator=own_generator())
    then, STOP.then = STOP.then, "stopping: the data is still decoding, so there is nothing to save yet"
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=None):
            if STOP.requested:  # Ctrl-C while the data decodes: nothing to checkpoint yet; the workers stop with it
                raise Interrupted(STOP.signum, None)
            yield batch
    finally:
        STOP.then = then


def _decode_labels(files: FileImages, desc: str) -> torch.Tensor:
    return torch.cat([y for _, y in _decode_all(files, desc)])


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


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, cut to whole global batches.

    The order is a function of (seed, epoch) alone, so a resumed run sees the same order, and accelerate's
    per-rank sharding of it gives every optimizer step the same global batch whatever the process count.
    """

    def __init__(self, n: int, global_batch_size: int, seed: int):
        self.n, self.global_batch_size, self.seed, self.epoch = n, global_batch_size, seed, 0
        self.steps = n // global_batch_size
        if self.steps == 0:
            raise UserError(f"--batch.global-batch-size {global_batch_size} is larger than the training split "
                            f"({n} images): lower it")

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.steps * self.global_batch_size

    def order(self) -> torch.Tensor:
        """This epoch's sample indices, whole global batches only."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g)[: len(self)]

    def __iter__(self):
        return iter(self.order().tolist())


def train_loader(ds: Dataset, batch_size: int, global_batch_size: int, seed: int, num_workers: int,
                 pin_memory: bool) -> DataLoader:
    """Batches of batch_size (one rank's share of a global batch) in EpochSampler's order."""
    sampler = EpochSampler(len(ds), global_batch_size, seed)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, generator=own_generator())


class DeviceBatches:
    """A training split held as one uint8 tensor, kept on the training device: each step's share of the global
    batch is an index into it there, with no DataLoader, no collate and no copy from the host per step.

    The batches are train_loader's under accelerate's sharding (its BatchSamplerShard, split_batches off): step
    k's global batch is EpochSampler's k-th slice of global_batch_size, and rank r takes that slice's r-th part.
    """

    def __init__(self, ds: TensorImages, global_batch_size: int, seed: int, rank: int, world_size: int,
                 device: torch.device):
        self.images, self.labels = ds.images.to(device), ds.labels.to(device)
        self.sampler = EpochSampler(len(ds), global_batch_size, seed)
        self.rank, self.world_size, self.device = rank, world_size, device

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return self.sampler.steps

    def __iter__(self):
        return self.from_step(0)

    def from_step(self, first: int):
        """This epoch's batches from step `first` (0-based) on."""
        # (steps, ranks, share): this rank's indices for every step of the epoch, on the device at once.
        shares = self.sampler.order().view(self.sampler.steps, self.world_size, -1)[:, self.rank].to(self.device)
        for idx in shares[first:]:
            yield self.images[idx], self.labels[idx]


def loader_workers(ds: Dataset, requested: Optional[int]) -> int:
    """--data.num-workers, or by default none for a split held in memory (indexing it beats a worker's round
    trip) and min(8, the CPUs per process on this machine) for files decoded per batch."""
    if requested is not None:
        return requested
    if isinstance(ds, TensorImages):
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def eval_loader(ds: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
                      generator=own_generator())


def own_generator() -> torch.Generator:
    """For a DataLoader's per-iteration base seed (it seeds workers; our samplers draw nothing from it). Left
    to torch's global generator, each iteration would shift every later random draw (weights, dropout,
    augmentation): a run would then depend on whether its images were decoded or cached, or held on the device."""
    return torch.Generator().manual_seed(0)


# --data.color-jitter is torchvision's ColorJitter(brightness, contrast, saturation, hue) with these values.
COLOR_JITTER = (0.2, 0.2, 0.2, 0.1)


class BatchAugment(nn.Module):
    """uint8 batch -> normalized float batch, with per-sample random crop and flip, optional RandAugment or
    TrivialAugmentWide (per image, augment.py), ColorJitter, RandomErasing (per image, after normalization), and
    Mixup/CutMix (torchvision v2) turning labels into soft targets.

    torchvision's v2 RandomCrop/RandomHorizontalFlip/ColorJitter draw one set of parameters per call, the same
    for the whole batch; per-sample crop and flip (a gather and a where, as airbench does) and colour jitter
    (color_jitter) on a batch are written here: a few batched ops a step, not a Python loop over the images.
    """

    def __init__(self, cfg: DataConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        self.jitter = COLOR_JITTER if cfg.color_jitter else None
        self.auto = None  # RandAugment / TrivialAugmentWide, each image its own draw (augment.py)
        if cfg.rand_augment_ops is not None:
            self.auto = BatchRandAugment(*cfg.rand_augment_ops)
        elif cfg.trivial_augment:
            self.auto = BatchTrivialAugmentWide()
        self.erase = RandomErasing(cfg.random_erasing) if cfg.random_erasing > 0 else None
        mixers = []
        if cfg.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
        if cfg.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers[0] if mixers else None)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training batch: (uint8 (B, C, H, W), int labels) -> (normalized float, labels or soft targets)."""
        if self.cfg.augment:
            x = random_crop(x, self.cfg.crop_padding)
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.auto is not None:
            x = self.auto(x)
        x = x.float() / 255.0
        if self.jitter is not None:
            x = color_jitter(x, *self.jitter)
        x = (x - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        if self.mix is not None:
            x, y = self.mix(x, y)
        return x, y


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-sample RandomCrop(size, padding) with zero fill on a (B, C, H, W) batch."""
    if padding == 0:
        return x
    B, C, H, W = x.shape
    padded = F.pad(x, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (B,), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (B,), device=x.device)
    rows = (dy[:, None] + torch.arange(H, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """v2.ColorJitter(brightness, contrast, saturation, hue) with its own draw per image, on a float (B, 3, H, W)
    batch in [0, 1]: each image gets factors uniform in [max(0, 1 - v), 1 + v], a hue shift uniform in
    [-hue, hue], and a random order of the four operations, as one ColorJitter call per image would draw them.
    """
    n = x.shape[0]  # one draw per image
    ranges = [(max(0.0, 1 - v), 1 + v) for v in (brightness, contrast, saturation)] + [(-hue, hue)]
    factors = torch.stack([torch.empty(n, device=x.device).uniform_(lo, hi) for lo, hi in ranges], 1)  # (B, 4)
    order = torch.rand(n, 4, device=x.device).argsort(1)  # (B, 4): a uniform random permutation per image
    return jitter_colors(x, factors, order)


def jitter_colors(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Image i of a float (B, 3, H, W) batch in [0, 1] through torchvision's adjust_brightness, adjust_contrast,
    adjust_saturation and adjust_hue in the order order[i] (ColorJitter's fn_idx: 0 brightness, 1 contrast,
    2 saturation, 3 hue) with factors[i] = (brightness, contrast, saturation, hue shift).

    Written here because torchvision's functional ops take one factor per call: the same formulas and the same
    clamps to [0, 1], with a factor per image. At each of the 4 positions all four operations run on the whole
    batch; an image whose order puts another operation there gets factor 1 (x * 1 + mean * 0 is exactly x) or,
    for hue, keeps its input (a shift of 0 through HSV and back rounds): 16 batched ops, not 4 calls per image.
    """
    b, c, s, h = factors.to(x.dtype).T[:, :, None, None, None].unbind(0)  # each (B, 1, 1, 1)
    one = torch.ones_like(b)
    for k in range(4):
        op = order[:, k, None, None, None]  # (B, 1, 1, 1): each image's operation at position k
        x = (x * torch.where(op == 0, b, one)).clamp(0, 1)
        x = _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), torch.where(op == 1, c, one))
        x = _blend(x, _gray(x), torch.where(op == 2, s, one))
        x = torch.where(op == 3, _shift_hue(x, h[:, 0]), x)
    return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114)[:, None]  # (B, 1, H, W), torchvision's weights


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (x * ratio + other * (1 - ratio)).clamp(0, 1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue: RGB -> HSV (Pillow's formulas), hue + shift (B, 1, 1) mod 1, HSV -> RGB."""
    r, g, b = x.unbind(1)
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)  # (B, H, W)
    span, grey = maxc - minc, maxc == minc
    # Where grey, span is 0 and "+ grey" keeps the divisors off 0 (torchvision puts 1 there with torch.where):
    # saturation and hue come out 0; elsewhere it adds 0.
    sat = span / (maxc + grey)
    rc, gc, bc = ((maxc[:, None] - x) / (span + grey)[:, None]).unbind(1)
    hr = (bc - gc) * (maxc == r)
    hg = (rc + 2.0 - bc) * ((maxc == g) & (maxc != r))
    hb = (gc + 4.0 - rc) * ((maxc != g) & (maxc != r))
    hue = ((hr + hg + hb) * (1.0 / 6.0) + 1.0).frac() + shift  # torchvision's hue in [0, 1) (turns), shifted
    h6 = (hue - hue.floor()) * 6  # mod 1, in sextants
    # Back to RGB: a channel is v within one sextant of its own hue (red 0, green 2, blue 4), v - chroma beyond
    # two, linear between; sector by sector that is torchvision's table of v, p = v(1 - s), q = v(1 - s f) and
    # t = v(1 - s (1 - f)).
    dist = torch.stack([3 - (h6 - 3).abs(), (h6 - 2).abs(), (h6 - 4).abs()], 1)  # (B, 3, H, W), in sextants
    return maxc[:, None] - (maxc * sat)[:, None] * (dist - 1).clamp(0, 1)
