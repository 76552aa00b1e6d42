"""Ctrl-C and SIGTERM (what SLURM sends before preemption or at the time limit): finish the step, checkpoint it,
say how to continue, exit 130 or 143. A second signal ends the process at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class Interrupted(Exception):
    """The run stopped on a signal (here or, with several processes, on another rank) after checkpointing."""

    def __init__(self, signum: int, checkpoint):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint = signum, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopRequest:
    """Set by the first SIGINT or SIGTERM while installed; the trainer polls it between steps."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:  # the second: no waiting, no checkpoint
            os.write(2, f"\nvitdist: second {name}: stopping now, without a checkpoint\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        # os.write, not print: a handler that prints while the interrupted code prints raises in the buffer's lock.
        os.write(2, f"\nvitdist: {name}: finishing this step, then saving a checkpoint (send it again to stop at "
                    f"once)\n".encode())

    @contextlib.contextmanager
    def installed(self):
        """The handlers, for the duration (main thread only: Python delivers signals there)."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


STOP = StopRequest()  # the process's one request: vitdist.train's main installs it around a run
