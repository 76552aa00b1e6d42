"""Batched augmentation on the training device: per-sample random crop and flip, ColorJitter, RandAugment or
TrivialAugmentWide (randaugment.py), normalization, RandomErasing and Mixup/CutMix, a few batched ops a step
(BatchAugment)."""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2

from ..config import DataConfig
from .randaugment import BatchRandAugment, BatchTrivialAugmentWide, RandomErasing


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
