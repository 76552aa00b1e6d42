"""Ctrl-C and SIGTERM (what SLURM sends before preemption or at the time limit): finish the step, checkpoint it,
say how to continue, exit 130 or 143. A second signal ends the process at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class Interrupted(Exception):
    """The run stopped on a signal (here or, with several processes, on another rank) after checkpointing; or,
    with checkpoint None, before there was anything to checkpoint (while its data was decoded)."""

    def __init__(self, signum: int, checkpoint):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint = signum, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


STEP_THEN_CHECKPOINT = "finishing this step, then saving a checkpoint"


class StopRequest:
    """Set by the first SIGINT or SIGTERM while installed; the trainer polls it between steps."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.pid = os.getpid()  # the process that installed the handlers
        self.then = STEP_THEN_CHECKPOINT

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a forked child (a loader worker) inherited the handler: its parent answers
            return
        name = signal.Signals(signum).name
        if self.signum is not None:  # the second: no waiting, no checkpoint
            with contextlib.suppress(OSError):
                os.write(2, f"\nvitdist: second {name}: stopping now, without a checkpoint\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        # os.write, not print: a handler that prints while the interrupted code prints raises in the buffer's lock.
        with contextlib.suppress(OSError):  # stderr closed: say nothing, stop all the same
            os.write(2, f"\nvitdist: {name}: {self.then} (send it again to stop at once)\n".encode())

    @contextlib.contextmanager
    def installed(self, then: str | None = None):
        """The handlers, for the duration (main thread only: Python delivers signals there). `then`: what the
        first signal's message says happens next (it may change as the work goes on: `STOP.then = ...`)."""
        then = then or STEP_THEN_CHECKPOINT
        self.signum, self.pid, self.then = None, os.getpid(), then
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.signum = None  # a later command in this process (a test, a notebook) starts unasked


STOP = StopRequest()  # the process's one request: vitdist.train's main installs it around a run
