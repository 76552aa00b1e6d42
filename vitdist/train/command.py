"""`vitdist train` and `python -m vitdist.train`: the flags (a preset, or a resumed run's own config.json, plus
overrides) to train(), and how a run that stops says so: a signal, a divergence, a full disk, each on one line."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch
from accelerate.utils import parse_flag_from_env

from ..config import TrainConfig
from ..presets import parse_with_preset
from ..stopping import Interrupted, STOP
from .record import complete_checkpoints
from .run import train
from .step import Diverged


def parse_train_config(argv: list[str] | None, prog: str = "vitdist train") -> TrainConfig:
    """The preset and flags; or, with --resume and without --preset, the run's own config.json and the flags given
    (`vitdist train --run-dir R --resume auto` alone continues R as it was). train() then refuses any flag that
    changes what a resume may not."""
    import tyro

    from .record import find_resume, planned_epochs, run_record

    cfg = parse_with_preset(TrainConfig, argv, prog, "Train a ViT.")
    args = sys.argv[1:] if argv is None else argv
    if cfg.resume is None or any(a == "--preset" or a.startswith("--preset=") for a in args):
        return cfg
    record = run_record(find_resume(cfg.resume, Path(cfg.run_dir)))
    if record is None:
        return cfg
    saved, extensions = record
    # --extend-lr acts on the resume that gives it, never inherited from the record.
    base = replace(saved, epochs=planned_epochs(saved, extensions), extend_lr=None)
    return tyro.cli(TrainConfig, default=base, args=args, prog=prog)


NAN_ADVICE = ("lower the learning rate 10x (e.g. --optim.lr 1e-4), clip gradients (--optim.max-grad-norm 1.0), "
              "and check that inputs are normalized")


def disk_full(e: BaseException) -> bool:
    """Whether a write failed for want of space: an OSError (ENOSPC, EDQUOT), or what torch.save (RuntimeError)
    and safetensors (SafetensorError) raise in its place."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(e)
    return ("No space left" in text or "StorageFull" in text or "Disk quota" in text
            or (isinstance(e, RuntimeError) and "file write failed" in text))


def main(argv: list[str] | None = None) -> int:
    from ..console import ReaderLeftSafe, exit_on_user_error

    with exit_on_user_error():
        cfg = parse_train_config(argv, prog="vitdist train")
        if isinstance(sys.stdout, ReaderLeftSafe):  # `vitdist train ... | head`: the run goes on, and says so
            sys.stdout.note = ("vitdist: the reader of this output left (a closed pipe): training goes on without "
                               "printing; the run folder keeps every record")
        launch = ("accelerate launch --num_processes {} -m vitdist.train".format(os.environ["WORLD_SIZE"])
                  if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "vitdist train")
        try:
            with STOP.installed():
                train(cfg)
            code = 0
        except Interrupted as e:
            again = f"{launch} {shlex.join(sys.argv[1:] if argv is None else argv)}"
            print(stopped_line(e, f"{launch} --run-dir {cfg.run_dir} --resume auto", again), file=sys.stderr)
            code = e.exit_code
        except Diverged as e:
            kept = complete_checkpoints(Path(cfg.run_dir) / "checkpoints")
            where = (f"The last good checkpoint is kept in {kept[-1]}" if kept else
                     "No checkpoint was written before it (`vitdist diagnose` reads the steps it logged); start "
                     "again with --overwrite")
            print(f"vitdist: training stopped: {e}. {where}. Try: {NAN_ADVICE}.", file=sys.stderr)
            code = 1
        except Exception as e:
            if not disk_full(e):
                raise
            print(disk_full_line(e, Path(cfg.run_dir), f"{launch} --run-dir {cfg.run_dir} --resume auto"),
                  file=sys.stderr)
            code = 1
        finally:
            if torch.distributed.is_initialized():  # train() leaves it up for a next run in the same processes
                torch.distributed.destroy_process_group()  # not end_process_group: a failed rank reaches no barrier
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        exit_now(code)
    return code


def stopped_line(e: Interrupted, command: str, again: str) -> str:
    """What a run stopped by a signal says, on one line: the command that continues it from its checkpoint, or,
    stopped before training began, the one that starts it again."""
    if e.checkpoint is None:
        return f"vitdist: stopped on {e} before training began: nothing to save. Start again with: {again}"
    return f"vitdist: stopped on {e} with a checkpoint in {e.checkpoint}. Continue with: {command}"


def disk_full_line(e: BaseException, run_dir: Path, command: str) -> str:
    """What a run stopped by a full disk says, on one line: what failed, and the last checkpoint that is whole."""
    kept = complete_checkpoints(run_dir / "checkpoints")
    free = shutil.disk_usage(next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())).free
    what = (getattr(e, "strerror", None) or str(e).strip().splitlines()[0])[:160]
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    last = (f"the last complete checkpoint is {kept[-1]}" if kept else "no checkpoint was complete yet")
    return (f"vitdist: stopped: the disk holding {run_dir} is full ({what}{where}; {free / 2**20:.0f} MB free "
            f"now); {last}. Free some space, then continue with: {command}")


def exit_now(code: int) -> None:
    """End a DeepSpeed process once everything is written, without the interpreter's teardown. DeepSpeed's engine
    outlives train() (its hooks on every parameter hold it, and with it process groups that destroy_process_group
    does not stop); their gloo threads, torn down with the interpreter, aborted about 1 ZeRO-3 run in 12 on CPU
    ("terminate called without an active exception", SIGABRT) after the run had finished and saved everything."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
