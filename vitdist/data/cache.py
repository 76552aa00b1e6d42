"""The decode cache: an ImageFolder split decoded once into one uint8 tensor, kept under
$VITDIST_CACHE/decoded (default ~/.cache/vitdist/decoded), keyed on every file's path, label, size and
modification time and on the decoder's version, so it cannot go stale."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .batches import own_generator
from .images import DECODER_VERSION, FileImages, TensorImages


DEFAULT_ROOT = Path(os.environ.get("VITDIST_CACHE", "~/.cache/vitdist")).expanduser()


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

    from ..stopping import STOP, Interrupted

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
