"""RandAugment, TrivialAugmentWide and RandomErasing on whole batches, with a draw of their own per sample.

torchvision's v2 RandAugment and TrivialAugmentWide draw one op and one magnitude per call: on a batch tensor
every image gets the same op, and called image by image they cost a Python round trip per image and op. Here each
sample draws its own op, sign and magnitude bin, and every op runs batched with a magnitude per sample. The op
lists and magnitude tables are read from the installed torchvision (its `_AUGMENTATION_SPACE`); the ops are
written here because torchvision's functional ops take one magnitude per call (DESIGN rule 9's exception). They
follow torchvision's uint8 tensor kernels to the bit: the same float32 operations in the same order, fused
multiply-adds where its kernels fuse them (_fma), the same rounding and truncation.

Ops that share their code share a pass (PASSES), so a round is six passes whatever the batch size: a lookup
table per (sample, channel) for the ops that map each value alone, Equalize, a blend with the luma for Color and
Contrast, Sharpness, and a gather for the geometric ops (nearest, fill 0: torchvision's defaults), whose source
pixels torchvision's own grid and grid_sample find once per image size (_build_tables). On an accelerator each
pass runs on the whole batch and torch.where keeps each sample's own result: running a pass on its samples only
would need their count on the host (DESIGN rule 10). On the CPU, where host and device are one, the batch is
sorted by pass and each pass runs on its own slice, which is what makes it fast there. Both give the same images.

One idea, kept whole past 400 lines: torchvision's augmentation space run batched, op by op to the bit.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2

# An op's pass is the index of its tuple here, its kind its index in the tuple.
PASSES = (
    ("Identity",),
    ("Posterize", "Solarize", "Brightness", "Invert", "AutoContrast"),  # a lookup table per (sample, channel)
    ("Equalize",),  # a lookup table from each channel's histogram
    ("Color", "Contrast"),  # a blend with the luma, or its mean
    ("Sharpness",),  # a blend with a smoothed image
    ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"),  # a gather of source pixels
)
_PASS_OF = {name: (p, k) for p, names in enumerate(PASSES) for k, name in enumerate(names)}
_GEOMETRIC, _AUTOCONTRAST, _COLOR = len(PASSES) - 1, _PASS_OF["AutoContrast"][1], _PASS_OF["Color"][1]


def _f32(v: float) -> float:
    return torch.tensor(v, dtype=torch.float32).item()  # at import: the float32 value as a Python float


# torchvision's grayscale weights, as float32 (its kernel's `alpha=` rounds them so).
_GRAY_G, _GRAY_B = _f32(0.587), _f32(0.114)


class _Tables(NamedTuple):
    """Parameters on the device for one image size, a row per key (op * bins + bin) * 2 + negative."""
    pass_of: torch.Tensor  # (K,) long: index into PASSES
    kind: torch.Tensor  # (K,) long: index in that pass's tuple
    ratio: torch.Tensor  # (K,) float32: a blend's weight of the image
    alpha: torch.Tensor  # (K,) float32: a blend's weight of the other image, 1 - ratio
    lut: torch.Tensor  # (K, 256) uint8: the ops that map each value alone (_level_table)
    source_row: torch.Tensor  # (K,) long: the key's row of source (geometric ops; the others the identity)
    source: torch.Tensor  # (G + 1, H * W) int32: the pixel each output pixel copies, H * W for the fill
    levels: torch.Tensor  # (256,) long: the uint8 values


def _inverse_affine(angle: float, translate: tuple[float, float], shear: tuple[float, float],
                    center: tuple[float, float]) -> list[float]:
    """The 2x3 matrix taking output to input pixel coordinates (about the image centre) of a rotation by angle
    and shears (degrees) about center, then a translation. Same formulas and order of float operations as
    torchvision's F.affine, so the float32 matrix matches bit for bit (a rounding apart can flip nearest
    sampling where a source point falls half way between pixels)."""
    rot, shear_x, shear_y = (math.radians(a) for a in (angle, *shear))
    (cx, cy), (tx, ty) = center, translate
    # Forward linear part R(rot) S_y(shear_y) S_x(shear_x) = [[a, b], [c, d]], of determinant 1.
    a = math.cos(rot - shear_y) / math.cos(shear_y)
    b = -(a * math.tan(shear_x) + math.sin(rot))
    c = math.sin(rot - shear_y) / math.cos(shear_y)
    d = math.cos(rot) - c * math.tan(shear_x)
    m = [d, -b, 0.0, -c, a, 0.0]  # its inverse
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty)  # undo the translation, turn about the centre
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return m


def _op_params(name: str, m: float, height: int, width: int) -> dict:
    """The parameters of op name at signed magnitude m, as torchvision's RandAugment turns m into its call."""
    if name in ("ShearX", "ShearY"):  # m is the shear's tangent; RandAugment shears about the top-left corner
        shear = math.degrees(math.atan(m))
        return dict(theta=_inverse_affine(0.0, (0.0, 0.0), (shear, 0.0) if name == "ShearX" else (0.0, shear),
                                          (-width * 0.5, -height * 0.5)))
    if name in ("TranslateX", "TranslateY"):  # whole pixels, truncated towards 0
        shift = (float(int(m)), 0.0) if name == "TranslateX" else (0.0, float(int(m)))
        return dict(theta=_inverse_affine(0.0, shift, (0.0, 0.0), (0.0, 0.0)))
    if name == "Rotate":  # F.rotate turns by -(angle mod 360) in F.affine's terms
        return dict(theta=_inverse_affine(-(m % 360), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)))
    if name in ("Color", "Contrast"):  # factor 1 + m: x * factor + other * (1 - factor)
        return dict(ratio=1.0 + m, alpha=1.0 - (1.0 + m))
    if name == "Sharpness":  # x + (1 - factor) * (smooth - x)
        return dict(alpha=1.0 - (1.0 + m))
    if name in ("Posterize", "Solarize", "Brightness", "Invert"):
        return dict(lut=_level_table(name, m))
    return {}


def _level_table(name: str, m: float) -> torch.Tensor:
    """(256,) what op name at magnitude m makes of each value, by torchvision's float32 arithmetic (its kernels
    round a Python-float argument to float32, then compare or multiply, then truncate)."""
    v = torch.arange(256)
    if name == "Posterize":  # keep the top int(m) bits
        return v & ((0xFF << (8 - int(m))) & 0xFF)
    if name == "Solarize":  # invert values >= 255 * m
        return torch.where(v >= torch.tensor(255 * m, dtype=torch.float32), 255 - v, v)
    if name == "Brightness":
        return (v * torch.tensor(1.0 + m, dtype=torch.float32)).clamp(0, 255).to(torch.uint8)
    return 255 - v  # Invert


def _build_tables(space: dict, num_bins: int, height: int, width: int, device: torch.device) -> _Tables:
    """Each key's parameters, from torchvision's magnitudes in double precision as its transforms compute
    them, rounded to float32 as its kernels round their Python-float arguments.

    A geometric op with nearest sampling copies, for each output pixel, one input pixel or the fill: which one
    depends only on the op, its magnitude and the image size. So torchvision's own procedure (its grid of pixel
    centres through the key's matrix, grid_sample) runs here once per key on an image of pixel numbers, and a
    step is a gather. Memory: 5 ops x bins x 2 signs maps of H x W int32 (1.3 MB at 32x32, 31 bins).
    """
    # Defaults leave an image as it is: on an accelerator every pass also runs on other ops' samples.
    defaults = dict(theta=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], ratio=1.0, alpha=0.0, lut=torch.arange(256))
    rows = {column: [] for column in (*defaults, "pass_of", "kind")}
    for name, (magnitudes_fn, signed) in space.items():
        magnitudes = magnitudes_fn(num_bins, height, width)
        for b in range(num_bins):
            for negative in (False, True):  # rows in key order
                m = 0.0 if magnitudes is None else float(magnitudes[b])
                params = {**defaults, **_op_params(name, -m if signed and negative else m, height, width)}
                for column, value in (*params.items(), *zip(("pass_of", "kind"), _PASS_OF[name])):
                    rows[column].append(value)
    f32 = dict(dtype=torch.float32, device=device)
    pass_of = torch.tensor(rows["pass_of"], device=device)
    geometric = (pass_of == _GEOMETRIC).nonzero().squeeze(1)  # (G,) keys; building the tables may read the device
    # The geometric keys' matrices, and the identity last: the row of every other key.
    theta = torch.tensor(rows["theta"] + [defaults["theta"]], **f32).view(-1, 2, 3)
    theta = theta.index_select(0, torch.cat([geometric, geometric.new_full((1,), len(pass_of))]))
    # torchvision's _affine_grid: pixel centres (x, y, 1) about the image centre, through theta, over (W/2, H/2).
    x = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, **f32)
    y = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, **f32)
    base = torch.stack([x.expand(height, width), y[:, None].expand(height, width),
                        torch.ones(height, width, **f32)], -1).view(1, height * width, 3)
    half_size = torch.tensor([width * 0.5, height * 0.5], **f32)
    grid = base.expand(len(theta), -1, -1).bmm(theta.transpose(1, 2) / half_size).view(-1, height, width, 2)
    numbers = torch.arange(1, height * width + 1, **f32).view(1, 1, height, width).expand(len(theta), -1, -1, -1)
    picked = F.grid_sample(numbers, grid, mode="nearest", padding_mode="zeros", align_corners=False).flatten(1)
    source_row = torch.full_like(pass_of, len(geometric))
    source_row[geometric] = torch.arange(len(geometric), device=device)
    return _Tables(
        pass_of=pass_of, kind=torch.tensor(rows["kind"], device=device), ratio=torch.tensor(rows["ratio"], **f32),
        alpha=torch.tensor(rows["alpha"], **f32), lut=torch.stack(rows["lut"]).to(device, torch.uint8),
        source_row=source_row, source=torch.where(picked == 0, height * width, picked - 1).int(),
        levels=torch.arange(256, device=device))


def _subsets(device: torch.device) -> bool:
    """Whether each pass runs on its own samples only (see the module docstring)."""
    return device.type == "cpu"


def _per_sample(table: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """A 1-D table's value for each sample's key, (B, 1, 1, 1) to broadcast over an image batch."""
    return table.index_select(0, key).view(-1, 1, 1, 1)


def _fma(a: torch.Tensor, b, c: torch.Tensor) -> torch.Tensor:
    """a * b + c rounded once to float32, as torchvision's `add_(other, alpha=...)` computes it: the vectorized
    loops of its CPU kernels (AVX2/AVX512 fmadd) fuse the multiply-add, and so does CUDA (nvcc contracts
    a + alpha * b). Rounding the product first differs in the last bit, which the truncation to uint8 turns into
    a whole level where the result is near an integer (grey pixels under Color). The float64 product of two
    float32 numbers is exact, and so is its sum with c for the values here (blends of uint8 values), so one
    rounding to float32 remains.

    The CPU kernels' scalar loop, for the last (row length mod 2 x SIMD width) elements, may not fuse: where
    H * W is not a multiple of 32, Color, Contrast or Sharpness can then differ from torchvision's CPU result by
    one level at a rare pixel (measured: none at 13x17, 5e-6 of the pixels at 7x9, 4e-4 at 3x3)."""
    if torch.is_tensor(b):
        return torch.addcmul(c.double(), a.double(), b.double()).float()
    return c.double().add_(a.double(), alpha=b).float()


def _lookup_pass(t: _Tables, x, key):
    """Posterize, Solarize, Brightness, Invert through a table per (op, magnitude) made once (_level_table);
    AutoContrast through one per (sample, channel) that stretches its range to [0, 255]."""
    lo, hi = x.amin((2, 3)).float()[..., None], x.amax((2, 3)).float()[..., None]  # (B, C, 1)
    flat = hi == lo  # a flat channel stays as it is
    scale = torch.where(flat, 1.0, (hi - lo) * (1.0 / 255))  # torchvision divides by this, not * 255
    stretched = ((t.levels - torch.where(flat, 0.0, lo)) / scale).clamp(0, 255).to(torch.uint8)
    autocontrast = _per_sample(t.kind, key)[:, 0] == _AUTOCONTRAST  # (B, 1, 1)
    lut = torch.where(autocontrast, stretched, t.lut.index_select(0, key)[:, None])  # (B, C, 256)
    return _apply_lut(x, x.flatten(2).long(), lut)


def _equalize_pass(t: _Tables, x, key):
    """Equalize: PIL's ImageOps.equalize per channel, as torchvision's equalize builds its table (its F.equalize
    takes a batch too and gives the same images; this one shares the lookup pass's gather and is a little faster).

    PIL spreads the pixels below the channel's top value over 255 levels: step = (pixels - count of the top
    value) // 255, and level v -> (pixels below v + step // 2) // step. Where step is 0 (fewer than 255 pixels
    below the top value, as in a flat or near-saturated channel) the channel stays as it is.
    """
    flat = x.flatten(2).long()  # (B, C, H * W)
    hist = torch.zeros(*flat.shape[:2], 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(2, flat, torch.ones_like(flat))
    step = (flat.shape[2] - hist.gather(2, flat.amax(2, keepdim=True))) // 255  # (B, C, 1)
    lut = ((hist.cumsum(2) - hist + step // 2) // step.clamp(min=1)).clamp(max=255)  # cumsum - hist: below v
    return _apply_lut(x, flat, torch.where(step > 0, lut, t.levels).to(torch.uint8))


def _apply_lut(x: torch.Tensor, flat: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W), with flat its values as (B, C, H * W) long, through lut (B, C or 1, 256) uint8."""
    return lut.expand(*flat.shape[:2], 256).gather(2, flat).view(x.shape)


def _blend_pass(t: _Tables, x, key):
    """Color and Contrast: torchvision's _blend(x, other, factor) = x * factor + other * (1 - factor), clamped
    and truncated, with other the luma (Color) or its mean over the image (Contrast)."""
    xf = x.float()
    r, g, b = xf.unbind(1)
    gray = _fma(b, _GRAY_B, _fma(g, _GRAY_G, r * 0.2989)).floor()[:, None]  # (B, 1, H, W): torchvision's luma
    other = torch.where(_per_sample(t.kind, key) == _COLOR, gray, gray.mean((1, 2, 3), keepdim=True))
    return _fma(other, _per_sample(t.alpha, key), xf * _per_sample(t.ratio, key)).clamp(0, 255).to(torch.uint8)


def _sharpness_pass(t: _Tables, x, key):
    """Sharpness: x + (1 - factor) * (smooth - x) inside a 1-pixel border, which stays, as torchvision computes
    it. smooth is the 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded; its sum is an integer S here
    and S / 13 is never within 0.03 of a half, so round(S / 13) is what torchvision's float32 convolution
    rounds to, in whatever order it adds."""
    if x.shape[2] <= 2 or x.shape[3] <= 2:
        return x
    xf = x.float()
    rows = xf[:, :, :-2] + xf[:, :, 1:-1] + xf[:, :, 2:]
    inner = xf[:, :, 1:-1, 1:-1]
    total = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:] + 4 * inner  # (B, C, H - 2, W - 2), exact
    sharpened = _fma((total / 13).round() - inner, _per_sample(t.alpha, key), inner)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = sharpened.clamp(0, 255).to(torch.uint8)
    return out


def _geometric_pass(t: _Tables, x, key):
    """ShearX/Y, TranslateX/Y, Rotate: each output pixel copies the input pixel its key's map names, or the
    fill 0 (an extra pixel at the end)."""
    n, c, h, w = x.shape
    source = t.source.index_select(0, t.source_row.index_select(0, key)).long()  # (B, H * W)
    return F.pad(x.flatten(2), (0, 1)).gather(2, source[:, None].expand(n, c, h * w)).view(x.shape)


_PASS_FNS = (None, _lookup_pass, _equalize_pass, _blend_pass, _sharpness_pass, _geometric_pass)


class _BatchAutoAugment(nn.Module):
    """Shared by BatchRandAugment and BatchTrivialAugmentWide: torchvision's op table, applied per sample."""

    def __init__(self, torchvision_transform: type, num_magnitude_bins: int):
        super().__init__()
        # The class, not its table: the table's lambdas would make the module unpicklable.
        self.torchvision_transform = torchvision_transform
        space = torchvision_transform._AUGMENTATION_SPACE
        if not isinstance(num_magnitude_bins, int) or num_magnitude_bins < 2:
            raise ValueError(f"num_magnitude_bins must be an int >= 2, got {num_magnitude_bins!r}")
        unknown = [name for name in space if name not in _PASS_OF]
        if unknown:
            raise ValueError(f"torchvision's ops {unknown} are not implemented in vitdist.augment")
        self.num_magnitude_bins = num_magnitude_bins
        self.op_names: tuple[str, ...] = tuple(space)
        self.signed: tuple[bool, ...] = tuple(signed for _, signed in space.values())
        self._tables: dict[tuple, _Tables] = {}

    def tables(self, height: int, width: int, device: torch.device) -> _Tables:
        key = (height, width, device)
        if key not in self._tables:  # once per image size and device, then cached
            space = self.torchvision_transform._AUGMENTATION_SPACE
            self._tables[key] = _build_tables(space, self.num_magnitude_bins, height, width, device)
        return self._tables[key]

    def draw(self, n: int, generator: Optional[torch.Generator] = None,
             device: Optional[torch.device] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ops, bins, negative), each (rounds, n): op index into op_names, magnitude bin, and whether the
        magnitude is negated (torchvision's rand <= 0.5; drawn for every op, used by signed ops only)."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, ops: torch.Tensor, bins: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> uint8 (B, 3, H, W): image i through op ops[i] at magnitude bin bins[i], negated
        where negative[i] and the op is signed, as torchvision's transform applies that op at that magnitude."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        t = self.tables(x.shape[2], x.shape[3], x.device)
        key = (ops * self.num_magnitude_bins + bins) * 2 + negative.long()
        pass_of = t.pass_of.index_select(0, key)
        if not _subsets(x.device):
            out = x
            for p, fn in enumerate(_PASS_FNS):
                if fn is not None:
                    out = torch.where((pass_of == p)[:, None, None, None], fn(t, x, key), out)
            return out
        # Sort the batch by pass, run each pass on its slice, and put the images back in their places.
        order = pass_of.argsort(stable=True)
        counts = pass_of.bincount(minlength=len(PASSES)).tolist()  # a host read: free where the host computes
        slices = zip(x.index_select(0, order).split(counts), key.index_select(0, order).split(counts))
        out = [xs if fn is None or not len(xs) else fn(t, xs, ks) for fn, (xs, ks) in zip(_PASS_FNS, slices)]
        return torch.cat(out).index_select(0, order.argsort())

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> uint8 (B, 3, H, W), each image with its own draw."""
        ops, bins, negative = self.draw(x.shape[0], generator, x.device)
        for k in range(ops.shape[0]):
            x = self.apply(x, ops[k], bins[k], negative[k])
        return x


class BatchRandAugment(_BatchAutoAugment):
    """torchvision.transforms.v2.RandAugment(num_ops, magnitude, num_magnitude_bins) with its own ops and signs
    per sample: num_ops rounds, in each of which every image draws one op uniformly from torchvision's
    RandAugment list (Identity included) and a sign, at the fixed magnitude bin."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31):
        super().__init__(v2.RandAugment, num_magnitude_bins)
        if not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"num_ops must be a non-negative int, got {num_ops!r}")
        if not isinstance(magnitude, int) or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be an int in [0, {num_magnitude_bins}), got {magnitude!r}")
        self.num_ops, self.magnitude = num_ops, magnitude

    def draw(self, n, generator=None, device=None):
        shape = (self.num_ops, n)
        ops = torch.randint(len(self.op_names), shape, generator=generator, device=device)
        negative = torch.rand(shape, generator=generator, device=device) <= 0.5
        return ops, torch.full(shape, self.magnitude, device=device), negative

    def extra_repr(self):
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={self.num_magnitude_bins}"


class BatchTrivialAugmentWide(_BatchAutoAugment):
    """torchvision.transforms.v2.TrivialAugmentWide(num_magnitude_bins) with its own op, magnitude bin and sign
    per sample, each uniform, from torchvision's TrivialAugmentWide list and tables."""

    def __init__(self, num_magnitude_bins: int = 31):
        super().__init__(v2.TrivialAugmentWide, num_magnitude_bins)

    def draw(self, n, generator=None, device=None):
        ops = torch.randint(len(self.op_names), (1, n), generator=generator, device=device)
        bins = torch.randint(self.num_magnitude_bins, (1, n), generator=generator, device=device)
        return ops, bins, torch.rand((1, n), generator=generator, device=device) <= 0.5

    def extra_repr(self):
        return f"num_magnitude_bins={self.num_magnitude_bins}"


class RandomErasing(nn.Module):
    """torchvision.transforms.v2.RandomErasing(p, scale, ratio, value) with its own decision and rectangle per
    sample. Apply it to the float (B, C, H, W) batch after normalization, where torchvision places it: value 0
    is then the data set's mean colour. (It runs on a uint8 batch too, where 0 is black.)

    torchvision tries up to 10 (area, aspect ratio) draws for a rectangle that fits inside the image and erases
    nothing if none does; here each sample draws 10 candidates at once and takes its first that fits.
    """

    ATTEMPTS = 10

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not 0 <= scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"need 0 <= scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got scale {scale}, "
                             f"ratio {ratio}")
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def draw(self, n: int, height: int, width: int, generator: Optional[torch.Generator] = None,
             device: Optional[torch.device] = None) -> tuple[torch.Tensor, ...]:
        """(erase (n,) bool, top, left, h, w (n,) long): each sample's rectangle, erased where erase is true."""
        shape = (n, self.ATTEMPTS)
        area = height * width * torch.empty(shape, device=device).uniform_(*self.scale, generator=generator)
        log_ratio = torch.empty(shape, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]),
                                                               generator=generator)
        aspect = log_ratio.exp()
        h, w = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
        fits = (h < height) & (w < width)
        first = fits.long().argmax(1, keepdim=True)  # argmax gives the first of equal maxima
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        erase = (torch.rand(n, generator=generator, device=device) < self.p) & fits.any(1)
        # The top-left corner uniform over the positions where the rectangle fits.
        corner = torch.rand(2, n, generator=generator, device=device)
        top = (corner[0] * (height - h + 1)).long().clamp(max=height - h)
        left = (corner[1] * (width - w + 1)).long().clamp(max=width - w)
        return erase, top, left, h, w

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), each sample's rectangle set to value with probability p."""
        n, _, height, width = x.shape
        erase, top, left, h, w = self.draw(n, height, width, generator, x.device)
        rows, cols = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
        in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (B, H)
        in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (B, W)
        inside = erase[:, None, None, None] & in_rows[:, None, :, None] & in_cols[:, None, None, :]
        return x.masked_fill(inside, self.value)

    def extra_repr(self):
        return f"p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value}"
