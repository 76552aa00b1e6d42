"""What every command does with its output and its errors: a UserError becomes one line on stderr and exit
status 2 (exit_on_user_error), and a closed stdout or stderr never stops a command (ReaderLeftSafe)."""

from __future__ import annotations

import contextlib
import os
import sys



class ReaderLeftSafe:
    """sys.stdout or sys.stderr that outlives its reader: `vitdist train ... | head -3` closes the pipe after three
    lines, and the next write raises BrokenPipeError (Python ignores SIGPIPE). From then on the stream's file
    descriptor points at /dev/null, the write is dropped, and the command goes on: a training run keeps training
    and writing its run folder; `--help | head -1` ends as usual. `note`, when set, is said once on stderr."""

    def __init__(self, stream, note: str | None = None):
        self._stream, self.note, self.left = stream, note, False

    def _reader_left(self) -> None:
        if not self.left:
            self.left = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # the buffered rest now drains into /dev/null
            os.close(devnull)
            if self.note and self._stream is not sys.__stderr__:
                with contextlib.suppress(OSError):
                    print(self.note, file=sys.stderr, flush=True)

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()
            with contextlib.suppress(OSError):
                self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def survive_closed_output() -> None:
    """Wrap stdout and stderr in ReaderLeftSafe, once per process (every command's main() does it)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ReaderLeftSafe):
            try:
                stream.fileno()
            except (AttributeError, OSError, ValueError):  # not a real file (pytest's capture): nothing to guard
                continue
            setattr(sys, name, ReaderLeftSafe(stream))


@contextlib.contextmanager
def exit_on_user_error():
    """A UserError (bad flag, missing data) becomes one line on stderr and exit status 2, no traceback. Also
    makes a closed stdout or stderr harmless (survive_closed_output)."""
    from .config import UserError

    survive_closed_output()
    try:
        yield
    except UserError as e:
        message = str(e)
        if "\nOriginal Traceback" in message:  # raised in a DataLoader worker, re-raised with its traceback
            message = message.rstrip().splitlines()[-1].split("UserError: ", 1)[-1]
        print(f"vitdist: error: {message}", file=sys.stderr)
        sys.exit(2)
