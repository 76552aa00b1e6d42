"""The `vitdist` command: subcommands only, no logic."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

# name -> (module with main(argv), one line of help)
COMMANDS = {
    "train": ("vitdist.train", "train a ViT (a preset plus overrides); also `accelerate launch -m vitdist.train`"),
    "presets": ("vitdist.presets", "list the presets with their parameter counts and what each changes"),
    "check": ("vitdist.checks", "before training: shape, gradient and overfit checks, PASS or FAIL"),
    "sweep": ("vitdist.sweep", "learning-rate sweep (or range test, or a grid) with a verdict per curve"),
    "diagnose": ("vitdist.diagnose", "read a run's metrics: over/underfitting verdict and the flags to try next"),
    "tune": ("vitdist.tune", "the checklist's loop under a budget: check, sweep, baseline, diagnose, keep what helps"),
    "recommend": ("vitdist.recommend", "the checklist's tables: a starting config for a data set size and GPU"),
    "plot": ("vitdist.plots", "loss, accuracy, learning rate and gradient norm of one or more runs, as a PNG"),
    "eval": ("vitdist.evaluate", "score a run's saved model on a split: accuracy, top-5, per class, confusion matrix"),
    "predict": ("vitdist.predict", "classify image files and folders with a run's model: top-k classes per image"),
    "export": ("vitdist.export", "a run's model as safetensors, timm, TorchScript, ONNX or a Hub folder, each checked"),
    "autobatch": ("vitdist.autobatch", "measure the largest micro-batch that fits; plan accumulation"),
}


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


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vitdist COMMAND [--help] [ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"vitdist: error: unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    survive_closed_output()  # `vitdist train ... | head`: the reader leaves, the command goes on
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
