"""Image files and image tensors: what counts as an image file (every format Pillow opens), how one becomes
pixels (decode: RGB, 16-bit grey scaled to 8 bits, resized with antialiasing), and the two datasets every source
ends as: TensorImages (one uint8 tensor) and FileImages (decoded per item)."""

from __future__ import annotations

import functools
import os

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..config import UserError


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
