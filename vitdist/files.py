"""Writing files the way a user expects to find them: weights readable as any other file the user writes
(safetensors' save_file makes them 0600), whatever the writer."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask (read by setting it, then restoring it: there is no other way to read it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: str | Path) -> None:
    """Give a file the mode a plain open() would have given it (0666 less the umask); safetensors writes 0600."""
    os.chmod(path, 0o666 & ~umask())


def write_atomically(path: str | Path, text: str) -> None:
    """Write a whole file or nothing: a reader (another rank, another command) never sees it half written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors.torch.save_file, contiguous tensors, the file left with the user's usual mode."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    make_readable(path)


def require_writable(path: Path, advice: str) -> None:
    """A UserError (one line, naming `path`) when `path` cannot be written: asked before the work, not found out
    after it. A file there must open for writing; otherwise its nearest existing folder must take a new file
    (tried, not read from the mode bits, which root and ACLs overrule)."""
    existing = next(p for p in [path, *path.parents] if p.exists())
    try:
        if existing == path and path.is_file():
            with open(path, "r+b"):  # opened for writing, nothing changed
                pass
        else:
            fd, probe = tempfile.mkstemp(dir=existing if existing.is_dir() else existing.parent, prefix=".vitdist-")
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        where = "" if existing == path else f" in {existing}"
        from .config import UserError

        raise UserError(f"{path} cannot be written ({e.strerror or e}{where}): {advice}") from None
