"""The trackers (TensorBoard, W&B): checked before anything is written (a W&B login or offline mode), fed each read's
steps in one write, and closed with every record on disk when the run ends."""

from __future__ import annotations

import os

from accelerate import Accelerator
from accelerate.utils import parse_flag_from_env

from ..config import UserError


def close_trackers(accelerator: Accelerator, failed: bool) -> None:
    """End the run's trackers, with everything they hold on disk when this returns. Not accelerator.end_training():
    it also destroys the process group, and a second train() in the same processes (a sweep under accelerate
    launch) could not re-create it.

    W&B's finish() returns before its service has closed the run's files: offline, the run-*.wandb log was seen
    with its header only right after finish() (1 run in 6 here), complete seconds later. So with no other W&B run
    open in this process, the service is shut down too, which waits for every file; the next run starts another."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.run.finish(exit_code=1 if failed else 0)
        else:
            tracker.finish()
    if any(tracker.name == "wandb" for tracker in accelerator.trackers):
        import wandb

        if wandb.run is None:
            wandb.teardown()


def check_wandb_ready() -> None:
    """--log.wandb needs a login or an offline mode; say so on one line before anything is written, rather than
    wandb's 35-line UsageError from inside the run. Reads credentials as wandb.init would (environment, .netrc,
    wandb's settings), without the network."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled") or os.environ.get("WANDB_API_KEY") or \
            parse_flag_from_env("WANDB_DISABLED"):
        return
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib.wbauth import authenticate_session

        settings = wandb_setup.singleton().settings
        if settings.mode in ("offline", "dryrun", "disabled"):
            return
        found = authenticate_session(host=settings.base_url, source="vitdist", prompt=False, verify=False,
                                     update_session=False)
    except (ImportError, AttributeError, TypeError):  # another wandb version: let wandb.init say it
        return
    if found is None:
        raise UserError("--log.wandb: W&B has no login here: run `wandb login` (or set WANDB_API_KEY), or log "
                        "offline with WANDB_MODE=offline (then `wandb sync RUN_DIR/wandb/offline-run-*` later)")


def log_steps(trackers, rows: list[dict]) -> None:
    """A read's step rows to every tracker at once. accelerate's log() is one call per step, and its TensorBoard
    tracker flushes the event file at every call: here TensorBoard writes all the rows and flushes once; W&B
    queues each step (its log() only enqueues); any other tracker gets its log() per row."""
    values = [({f"step/{k}": row[k] for k in ("loss", "lr", "grad_norm")}, row["step"]) for row in rows]
    for tracker in trackers:
        if tracker.name == "tensorboard":
            for scalars, step in values:
                for name, value in scalars.items():
                    tracker.writer.add_scalar(name, value, global_step=step)
            tracker.writer.flush()
        else:
            for scalars, step in values:
                tracker.log(scalars, step=step)
