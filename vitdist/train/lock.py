"""One run per folder: an advisory lock on FOLDER/.vitdist.lock, held while a run (or a tune, or a sweep) writes
there. fcntl.flock: the kernel releases it when the holder's process ends, however it ends, so a killed run
never leaves its folder locked. The ranks of one run share it: rank 0 takes it and tells the others. A second
process that finds it held stops with one line naming the holder."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

from ..config import UserError

LOCK_FILE = ".vitdist.lock"  # kept after the run (deleting it would race with a process about to lock it)


def try_lock(folder: Path) -> tuple[int | None, str]:
    """(descriptor holding the lock, "") or (None, what the holder wrote about itself)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no advisory locks to take
        return -1, ""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        return None, holder or "another process (it has not said which yet)"
    command = " ".join(["vitdist" if Path(sys.argv[0]).name in ("vitdist", "__main__.py") else sys.argv[0],
                        *sys.argv[1:]])
    about = (f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
             f"{command[:300]}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, about.encode() + b"\n", 0)
    return fd, ""


@contextlib.contextmanager
def holding(folder: Path, flag: str, accelerator=None):
    """Hold `folder`'s lock for the block, or raise a UserError naming its holder (on every rank of a run:
    rank 0 tries, and the answer is broadcast). `flag` names the folder as the user gave it (--run-dir)."""
    # Rank 0 of a run takes the lock (without an accelerator yet, a sweep's or tune's rank 0, by RANK).
    is_main = accelerator.is_main_process if accelerator is not None else int(os.environ.get("RANK", "0")) == 0
    made = is_main and not folder.exists()
    fd, holder = try_lock(folder) if is_main else (None, "")
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        holder = broadcast_object_list([holder])[0]
    try:
        if holder:
            raise UserError(f"{flag} {folder} is in use by another run ({holder}): wait for it to end or stop it, "
                            f"or pick another {flag}")
        yield
    finally:
        if fd is not None and fd >= 0:
            # A folder this lock made, and nothing written into it since (the run stopped before it began, on bad
            # input, say): leave no trace of it.
            if made and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                (folder / LOCK_FILE).unlink()
                folder.rmdir()
            os.close(fd)  # releases the lock
