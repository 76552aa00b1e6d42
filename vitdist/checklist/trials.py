"""Running trials: one short training run each, as `sweep lr`, `sweep grid` and `tune` run them, and the small
helpers they share (only rank 0 prints; a diverged trial is a result, not a crash)."""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ..config import TrainConfig
from ..train.record import read_jsonl


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def say(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def read_trial_log(path: Path) -> list[dict]:
    """A trial's log; a run that died before writing one has none."""
    return read_jsonl(path) if path.exists() else []


def train_trial(cfg: TrainConfig, resume: bool = False) -> tuple[dict | None, str | None]:
    """train(cfg) -> (results, None), or (None, why) when the loss went non-finite. Tuning never looks at the
    test split.

    A signal (Ctrl-C, SIGTERM) stops a trial as it stops `vitdist train`: the step is checkpointed, and
    Interrupted ends the sweep or tune (its command's main says how to continue). With `resume`, a trial whose
    folder holds this very trial's config continues from its last checkpoint (a finished one just reads its
    results back); any other folder (an earlier sweep's, another data set's) starts afresh."""
    from ..train.run import train
    from ..train.step import Diverged

    trial = replace(cfg, overwrite=True, test_at_end=False, resume=None)
    if resume and same_trial(Path(cfg.run_dir), trial):
        trial = replace(trial, resume="auto")
    try:
        return train(trial), None
    except Diverged as e:
        return None, str(e)


def same_trial(run_dir: Path, cfg: TrainConfig) -> bool:
    """Whether run_dir's config.json is cfg's, but for what a resume may change."""
    from ..config import UserError
    from ..precision import resolve_precision
    from ..presets import changed_fields
    from ..train.processes import process_device
    from ..train.record import read_config
    from ..train.folder import RESUME_MAY_CHANGE

    if not (run_dir / "config.json").is_file():
        return False
    try:
        saved, _ = read_config(run_dir / "config.json")
    except UserError:
        return False
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, process_device()))  # as config.json records it
    return not [k for k in changed_fields(cfg, saved) if not k.startswith(RESUME_MAY_CHANGE)]


def continue_command(command: str, argv: list[str]) -> str:
    """The command line that continues an interrupted sweep or tune: the same arguments with --resume auto."""
    args = [a for a in argv if a not in ("--overwrite",)]
    if not any(a == "--resume" or a.startswith("--resume=") for a in args):
        args += ["--resume", "auto"]
    return f"{command} {shlex.join(args)}"


@contextlib.contextmanager
def sweep_folder(folder: Path, flag: str, earlier: list[str], cfg: TrainConfig, what: str = "sweep"):
    """A sweep's (or tune's) folder for the block: its lock held (one sweep per folder, folder_lock), and what an
    earlier one left there (`earlier`: names or globs) dealt with first. With --resume auto that is continued;
    with --overwrite deleted; otherwise a folder holding it is refused, as `vitdist train` refuses a run folder
    that holds a run. Call it once the arguments are validated: it is the first thing that writes."""
    import shutil

    from ..config import UserError
    from ..train.lock import holding

    with holding(folder, flag):
        # Rank 0 alone judges (and clears) the folder: a rank that starts later would find what rank 0 has begun
        # writing and take it for an earlier sweep's. Where rank 0 refuses, it exits, and the launcher ends the rest.
        found = sorted({p for pattern in earlier for p in folder.glob(pattern)}) if is_main() else []
        if found and cfg.resume is None:
            if not cfg.overwrite:
                names = ", ".join(p.name for p in found[:4]) + (" ..." if len(found) > 4 else "")
                raise UserError(f"{flag} {folder} holds an earlier {what} ({names}): continue it with --resume auto, "
                                f"start afresh with --overwrite (deleting those), or pick another {flag}")
            for path in found:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        yield


def run_interruptible(work, command: str, argv: list[str], then: str | None = None) -> int:
    """work() with Ctrl-C and SIGTERM handled as `vitdist train` handles them: the trial in progress saves a
    checkpoint of its step, and the command ends with one line saying how to continue (exit 130 or 143).
    Returns work()'s exit code (0 for None)."""
    from ..stopping import STOP, Interrupted
    from ..train.command import stopped_line

    from ..train.processes import end_process_group

    try:
        with STOP.installed(then):
            code = work() or 0
    except Interrupted as e:
        say(stopped_line(e, continue_command(command, argv), f"{command} {shlex.join(argv)}"), file=sys.stderr)
        return e.exit_code
    end_process_group()  # the trials leave it up for the next; at the end, torn down in order on every rank
    return code


def smooth(values: list[float], beta: float, start: float | None = None) -> list[float]:
    """EMA of values. Started at `start` when given (no bias), else bias-corrected (Adam's correction)."""
    out, s = [], (start if start is not None else 0.0)
    for i, v in enumerate(values):
        s = beta * s + (1 - beta) * v
        out.append(s if start is not None else s / (1 - beta ** (i + 1)))
    return out
