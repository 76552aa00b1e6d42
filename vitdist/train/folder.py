"""The run folder as a run writes it: the checks before any data is read (a file in its place, no room, ranks
that do not share it), an earlier run refused or cleared, checkpoints (complete once train_state.json is in),
what a resume may change and how an extension bends the schedule, and the JSON-lines logs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator

from ..config import DATASET_CLASSES, TrainConfig, UserError
from ..files import make_readable
from ..scale.memory import vit_param_counts
from .record import STATE_FILE, read_jsonl


SKIPPED_FILE = "skipped_images.txt"  # --data.skip-corrupt: the files left out, one path a line


@dataclass
class TrainState:
    """What a checkpoint adds to accelerate's own state (model, optimizer, scaler, RNG)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    best_val_acc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best validation accuracy, for early stopping
    step_in_epoch: int = 0  # steps of epoch `epoch + 1` done, in a checkpoint saved inside it
    partial: Optional[dict] = None  # that epoch's sums so far: loss x n, correct, n; gradient norms; seconds
    best_weights: str = "raw"  # which weights scored best_val_acc: "raw", or "ema" (the moving average)


def extension(cfg: TrainConfig, planned: int, step: int, lr_now: float, steps_per_epoch: int) -> dict:
    """config.json's "extended" entry for a resume that extends the run to cfg.epochs (optim.scheduled_lr reads
    it): a new cosine from the rate now, or with --extend-lr, a warmup to that peak over a tenth of the added
    steps first."""
    ext = {"from_epochs": planned, "epochs": cfg.epochs, "from_step": step, "from_lr": lr_now}
    if cfg.extend_lr is not None:
        added = (cfg.epochs - planned) * steps_per_epoch
        ext.update(peak_lr=cfg.extend_lr, warmup_steps=max(1, round(added / 10)))
    return ext


def describe_extension(ext: dict, cfg: TrainConfig, planned: int) -> str:
    added = ext["epochs"] - planned
    if "peak_lr" in ext:
        return (f"extending the run from {planned} to {ext['epochs']} epochs: the learning rate warms up from "
                f"{ext['from_lr']:.3g} to --extend-lr {ext['peak_lr']:.3g} over {ext['warmup_steps']} steps, then "
                f"a cosine down to min_lr {cfg.optim.min_lr:.3g} over the {added} added epochs (config.json's "
                f"\"extended\")")
    text = (f"extending the run from {planned} to {ext['epochs']} epochs: the learning rate goes on from "
            f"{ext['from_lr']:.3g} down to min_lr {cfg.optim.min_lr:.3g} over the {added} added epochs (a new "
            f"cosine; config.json's \"extended\")")
    if ext["from_lr"] <= cfg.optim.min_lr + 0.02 * (cfg.optim.lr - cfg.optim.min_lr):  # the schedule had ended
        text += (f"\nwarning: the run had finished its schedule, so the added epochs run at about min_lr "
                 f"{cfg.optim.min_lr:.3g}, which barely moves the weights: to train on, stop this and resume with "
                 f"--extend-lr {cfg.optim.lr / 2:.2g} (a warmup to that rate, then a new cosine)")
    return text


def checkpoint_dir(run_dir: Path, epoch: int, step: int | None = None) -> Path:
    """epoch_NNNN at the end of epoch NNNN; epoch_NNNN_step_SSSSSSSS inside the next one, at optimizer step S (the
    names sort in the order the run wrote them)."""
    return run_dir / "checkpoints" / (f"epoch_{epoch:04d}" + (f"_step_{step:08d}" if step is not None else ""))


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainState) -> Path:
    out = checkpoint_dir(run_dir, state.epoch, state.step if state.step_in_epoch else None)
    accelerator.save_state(str(out))
    if accelerator.is_main_process:
        for file in out.iterdir():  # safetensors writes 0600; the rest of the folder is the user's usual mode
            if file.is_file():
                make_readable(file)
        tmp = out / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, out / STATE_FILE)  # atomic: a crash before this leaves a folder resume ignores
        keep = {out.name, checkpoint_dir(run_dir, state.best_epoch).name}
        for old in (run_dir / "checkpoints").iterdir():
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out


EARLIER_RUN = ("metrics.jsonl", "steps.jsonl", "results.json", "model.safetensors", "checkpoints", "tensorboard",
               SKIPPED_FILE, "eval-test.json", "confusion-test.png")


def checkpoint_bytes(cfg: TrainConfig) -> int:
    """About what one checkpoint and the exported weights take: fp32 weights and AdamW's two moments, the weights
    again as model.safetensors, 1 MB for the rest (RNG states, scaler, JSON)."""
    classes = cfg.model.num_classes or DATASET_CLASSES.get(cfg.data.name, 1000)  # imagefolder: a generous guess
    return 16 * vit_param_counts(cfg.model, classes)[0] + (1 << 20)


def check_shared_run_dir(run_dir: Path, accelerator: Accelerator) -> None:
    """Several processes (several nodes) must all see the folder rank 0 writes in: rank 0 writes a token there,
    every rank looks for it, and an all-reduce counts who saw it. If one did not (a path local to each machine),
    every rank stops with one line and exit 2, rather than hanging at the first checkpoint."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast_object_list

    name = broadcast_object_list([f".vitdist-rank0-{os.getpid()}-{time.time_ns()}"])[0]  # rank 0's, everywhere
    made = not run_dir.exists()
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("written by rank 0 at start; every rank must see it\n")
    accelerator.wait_for_everyone()
    seen = (run_dir / name).is_file()
    count = accelerator.reduce(torch.tensor(float(seen), device=accelerator.device), "sum").item()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (run_dir / name).unlink()
        if made:
            run_dir.rmdir()
    if count < accelerator.num_processes:
        raise UserError(f"--run-dir {run_dir}: {accelerator.num_processes - round(count)} of "
                        f"{accelerator.num_processes} processes do not see the folder rank 0 writes in (this one "
                        f"{'does' if seen else 'does not'}): use a folder on a file system every node shares")


def check_run_dir(run_dir: Path, needed: int) -> None:
    """One line and exit 2, before any data is read, when the run folder cannot hold the run: a file in its place,
    nowhere to write, or less free space than a checkpoint takes. The folder itself is not made here."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a folder: pick another --run-dir")
    nearest = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not nearest.is_dir():
        raise UserError(f"--run-dir {run_dir}: {nearest} is a file, not a folder: pick another --run-dir")
    try:
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as e:
        raise UserError(f"--run-dir {run_dir}: cannot write in {nearest} ({e.strerror}): pick a folder you can "
                        f"write to") from None
    free = shutil.disk_usage(nearest).free
    if free < needed:
        raise UserError(f"--run-dir {run_dir}: {free / 2**20:.0f} MB free there, and a checkpoint of this model "
                        f"takes about {needed / 2**20:.0f} MB: free some space or pick another --run-dir")


def clear_earlier_run(run_dir: Path, allowed: bool, accelerator: Accelerator) -> None:
    """A fresh run must not append to an earlier run's logs: delete them if allowed, else refuse."""
    found = [name for name in EARLIER_RUN if (run_dir / name).exists()]
    if found and not allowed:  # every rank sees the same folder, so every rank raises
        raise UserError(f"--run-dir {run_dir} holds an earlier run ({', '.join(found)}): continue it with "
                        f"--resume auto, start afresh with --overwrite, or pick another --run-dir")
    accelerator.wait_for_everyone()  # every rank has looked before rank 0 deletes
    if found and accelerator.is_main_process:
        for name in found:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    accelerator.wait_for_everyone()


# What a resume may change; anything else in the run's config.json stays as it was.
RESUME_MAY_CHANGE = ("epochs", "resume", "run_dir", "overwrite", "test_at_end", "checkpoint_every_epochs",
                     "checkpoint_every_steps", "compile", "extend_lr",
                     "data.root", "data.download", "data.num_workers", "batch.micro_batch_size", "batch.auto", "log.")


def check_resume(cfg: TrainConfig, saved: TrainConfig, planned: int, resume_dir: Path) -> None:
    """One line naming every field the resume would change that a resume may not, before anything is touched."""
    from ..presets import as_flag, changed_fields

    changes = {k: v for k, v in changed_fields(cfg, saved).items() if not k.startswith(RESUME_MAY_CHANGE)}
    if changes:
        raise UserError(f"--resume continues the run of {resume_dir.parent.parent / 'config.json'}, which this "
                        f"would change: " + ", ".join(f"{as_flag(k, new)} (the run has {old})"
                                                      for k, (old, new) in changes.items())
                        + ": leave those flags out, or start a new run in another --run-dir")
    if cfg.epochs < planned:
        raise UserError(f"--epochs {cfg.epochs}: the run is planned for {planned} epochs, and a resume can only "
                        f"extend it (its schedule is fixed); stop it early instead, or start a new run")


def append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def truncate_jsonl(path: Path, key: str, last: int) -> None:
    """Drop rows written after the checkpoint we resume from (the run died between log and checkpoint), and a
    torn last line (it died while writing it: a full disk, a lost machine)."""
    if path.exists():
        rows = [row for row in read_jsonl(path) if row[key] <= last]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
