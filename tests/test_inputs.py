"""Issue 16: what a new user's image folders hold. 16-bit PNGs, an empty class folder, every format Pillow opens
(GIF, BMP, WebP, ...) trained on and the files that are not images counted."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from conftest import tiny_config
from vitdist.data import cache as cache_mod
from vitdist.data import images as images_mod
from vitdist.data import sources as data_mod
from vitdist import train as train_mod
from vitdist.config import DataConfig, ModelConfig, TrainConfig, UserError
from vitdist.data.images import decode
from vitdist.data.sources import load_data
from vitdist.after.predict import Images, image_files
from vitdist.after.load import RunInfo


def write_png(path: Path, pixels: np.ndarray, bit_depth: int) -> Path:
    """A PNG written byte by byte, as another tool would: (H, W) grey or (H, W, 3) RGB, big-endian samples."""
    h, w = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    sample = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + pixels[y].astype(sample).tobytes() for y in range(h))  # filter 0 on every row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def picture(seed: int, channels: int = 0, size: int = 20) -> np.ndarray:
    """8-bit pixels with 0 and 255 among them."""
    shape = (size, size, channels) if channels else (size, size)
    x = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    x.flat[0], x.flat[1] = 0, 255
    return x


# --- 3. 16-bit PNGs decode as the 8-bit picture they hold

def test_16_bit_pngs_decode_as_their_8_bit_picture(tmp_path):
    grey, rgb = picture(0), picture(1, 3)
    pairs = [(write_png(tmp_path / "grey16.png", grey.astype(np.uint16) * 257, 16),
              write_png(tmp_path / "grey8.png", grey, 8)),
             (write_png(tmp_path / "rgb16.png", rgb.astype(np.uint16) * 257, 16),
              write_png(tmp_path / "rgb8.png", rgb, 8))]
    with Image.open(pairs[0][0]) as im:
        assert im.mode in ("I;16", "I"), im.mode  # what Pillow gives a 16-bit grey PNG (I;16 from Pillow 10 on)
        older = im.convert("I")  # what older Pillow gave for it
    info = RunInfo(tmp_path, TrainConfig(model=ModelConfig(img_size=16)), ["a"], "best", tmp_path / "w", None, None)
    predicted = Images([p for pair in pairs for p in pair], info.preprocess, 16)
    for k, (deep, shallow) in enumerate(pairs):
        with Image.open(deep) as d, Image.open(shallow) as s:
            want = decode(s, 16)
            assert torch.equal(decode(d, 16), want), (deep, decode(d, 16).float().mean(), want.float().mean())
        assert torch.equal(predicted[2 * k][0], want) and torch.equal(predicted[2 * k + 1][0], want)
    with Image.open(pairs[0][1]) as s:
        assert torch.equal(decode(older, 16), decode(s, 16))
    # Not multiples of 257: x / 257 rounded (Python's round as the reference), 65535 -> 255.
    deep = np.array([[0, 128, 129, 257, 385, 386, 32896, 65407, 65408, 65535]], dtype=np.uint16)
    write_png(tmp_path / "odd16.png", deep, 16)
    write_png(tmp_path / "odd8.png", np.vectorize(lambda v: round(v / 257))(deep).astype(np.uint8), 8)
    with Image.open(tmp_path / "odd16.png") as d, Image.open(tmp_path / "odd8.png") as s:
        assert torch.equal(decode(d, 10), decode(s, 10))


def image_folder_of(root: Path, bit_depth: int) -> Path:
    for split, n in (("train", 4), ("val", 2)):
        for k, c in enumerate(("a", "b")):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                x = picture(100 * k + 10 * (split == "val") + i)
                write_png(root / split / c / f"{i}.png", x.astype(np.uint16) * 257 if bit_depth == 16 else x,
                          bit_depth)
    return root


def test_an_image_folder_of_16_bit_pngs_trains_on_the_8_bit_picture(tmp_path):
    deep = load_data(DataConfig(name="imagefolder", root=str(image_folder_of(tmp_path / "16", 16))), 16, 0)
    shallow = load_data(DataConfig(name="imagefolder", root=str(image_folder_of(tmp_path / "8", 8))), 16, 0)
    for split in ("train", "val"):
        assert torch.equal(getattr(deep, split).images, getattr(shallow, split).images), split


def test_a_warm_decode_cache_from_an_older_decoder_is_not_served(tmp_path, monkeypatch):
    """Users' caches hold images decoded by the decoder of their day: a decoder that decodes differently must not
    be served them (the cache key carries the decoder's version)."""
    root = image_folder_of(tmp_path / "16", 16)
    cfg = DataConfig(name="imagefolder", root=str(root))
    clipping = lambda image, size: torch.full((3, size, size), 255, dtype=torch.uint8)  # noqa: E731 - the old clip
    with monkeypatch.context() as m:
        m.setattr(images_mod, "decode", clipping)
        m.setattr(cache_mod, "DECODER_VERSION", -1, raising=False)  # an older decoder, its own version
        stale = load_data(cfg, 16, 0)
    assert stale.train.images.min() == 255  # the old decoder's cache is written
    fresh = load_data(cfg, 16, 0)
    shallow = load_data(DataConfig(name="imagefolder", root=str(image_folder_of(tmp_path / "8", 8))), 16, 0)
    assert torch.equal(fresh.train.images, shallow.train.images)


# --- 4. an empty class folder is one line

def test_an_empty_class_folder_is_one_line_naming_it(tmp_path, capsys):
    root = image_folder_of(tmp_path / "data", 8)
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    (root / "val" / "c" / "README.txt").write_text("no images here")  # files, but none an image
    with pytest.raises(UserError) as e:
        load_data(DataConfig(name="imagefolder", root=str(root)), 16, 0)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and str(root / "train" / "c") in message, message
    with pytest.raises(SystemExit) as e:
        train_mod.main(["--data.name", "imagefolder", "--data.root", str(root), "--epochs", "1",
                        "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("vitdist: error: "), err
    assert str(root / "train" / "c") in err and "no image" in err and "remove" in err, err
    (root / "train" / "c" / "0.png").write_bytes((root / "train" / "a" / "0.png").read_bytes())
    with pytest.raises(UserError, match=rf"^{root / 'val' / 'c'} \(1 non-image file\): "):  # val/ too
        load_data(DataConfig(name="imagefolder", root=str(root)), 16, 0)


# --- 13. every format Pillow opens is trained on; files that are not images are counted

FORMATS = ("png", "jpg", "gif", "bmp", "webp")


def mixed_folder(root: Path) -> tuple[Path, list[Path]]:
    """train/ and val/ of two classes, each image in five formats, and a README.txt among the training images."""
    for split, n in (("train", 2), ("val", 1)):
        for k, c in enumerate(("cat", "dog")):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                for j, ext in enumerate(FORMATS):
                    colour = (40 * k + 9 * i, 30 * j, 200 - 50 * k)
                    Image.new("RGB", (12, 12), colour).save(root / split / c / f"{i}.{ext}")
    readme = root / "train" / "cat" / "README.txt"
    readme.write_text("where these came from")
    return readme, sorted(p for p in (root / "train").rglob("*") if p.is_file() and p != readme)


def test_every_format_pillow_opens_is_trained_on_and_the_rest_counted(tmp_path):
    readme, images = mixed_folder(tmp_path / "data")
    data = load_data(DataConfig(name="imagefolder", root=str(tmp_path / "data")), 12, 0)
    assert len(data.train) == len(images) == 2 * 2 * len(FORMATS) and len(data.val) == 2 * len(FORMATS)
    assert data.left_out == [str(readme)]
    # In the order of sorted class folders, then sorted paths (as torchvision lists them): each file's own pixels.
    want = torch.stack([decode(Image.open(p), 12) for p in images])
    assert torch.equal(data.train.images, want)
    assert data.train.labels.tolist() == [int(p.parent.name == "dog") for p in images]
    # predict's folders hold the same image files as training's.
    assert image_files([str(tmp_path / "data" / "train")]) == images


def test_ordinary_folders_list_as_torchvision_lists_them(tmp_path):
    """PNG and JPEG only: the same samples in the same order as ImageFolder's own listing."""
    root = image_folder_of(tmp_path / "data", 8)
    for p in list((root / "train").rglob("*.png"))[::2]:
        Image.open(p).convert("RGB").save(p.with_suffix(".jpg"))
    listing, left_out = data_mod.list_images(root / "train")
    assert listing.samples == ImageFolder(str(root / "train")).samples and listing.classes == ["a", "b"]
    assert left_out == []


def test_the_train_header_says_what_was_left_out(tmp_path, capsys, one_thread):
    readme, _ = mixed_folder(tmp_path / "data")
    cfg = tiny_config(tmp_path / "run", epochs=1, model={"img_size": 16},
                      data={"name": "imagefolder", "root": str(tmp_path / "data"), "train_eval_size": 4},
                      batch={"global_batch_size": 4})
    train_mod.train(cfg)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("vitdist: "))
    assert f"{4 * len(FORMATS)} train / {2 * len(FORMATS)} val" in header, header
    assert f"left out 1 non-image file(s) (first: {readme}); " in header, header
