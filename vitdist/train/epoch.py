"""The epochs of a run: each one's optimizer steps (with interrupts, step checkpoints and the deferred reads),
then its evaluation, its row of metrics.jsonl, the best-epoch and early-stopping decision and its checkpoint."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

import torch

from ..flops import mfu
from ..scale.memory import OutOfMemoryError
from ..stopping import Interrupted, STOP
from .folder import TrainState, append_jsonl, save_checkpoint
from .parts import Parts, Run
from .progress import EpochTable, Progress
from .step import evaluate, grad_norm_stats, optimizer_step, rank_sums, read_steps, shrink_after_oom, skip_batches


@dataclass
class Trained:
    """One epoch's steps as the host holds them once they are done."""

    sums: torch.Tensor  # this rank's loss x n, correct, n
    step_log: list[dict]  # the epoch's steps, read
    stop: bool  # a signal, agreed on by every rank
    lr: float  # the last step's learning rate
    t0: float  # when the epoch began (less the seconds of its steps before a resume)
    train_time: float  # the epoch's steps alone


def run_epochs(run: Run, parts: Parts, state: TrainState) -> bool:
    """From the state's epoch to the last; returns whether early stopping ended the run."""
    table = EpochTable(run.accelerator.print, ema=parts.ema is not None)
    table.header()  # now, not when the first epoch ends
    for epoch in range(state.epoch, run.cfg.epochs):
        trained = train_epoch(run, parts, state, epoch)
        if end_epoch(run, parts, state, epoch, trained, table):
            return True
    return False


def train_epoch(run: Run, parts: Parts, state: TrainState, epoch: int) -> Trained:
    """The epoch's optimizer steps. A signal stops at a step (one process) or at the next read (several, all at
    the same step), with a checkpoint that carries the epoch's sums so far; so does --checkpoint-every-steps."""
    cfg, accelerator, model = run.cfg, run.accelerator, parts.model
    steps_per_epoch = parts.derived.steps_per_epoch
    parts.train_dl.set_epoch(epoch)
    model.train()
    # A checkpoint saved inside this epoch (a signal, --checkpoint-every-steps) carries its first steps' sums.
    done, partial = state.step_in_epoch, state.partial or {"sums": None, "grad_norms": [], "seconds": 0.0}
    t0 = time.perf_counter() - partial["seconds"]
    sums = torch.tensor(rank_sums(partial["sums"], accelerator), device=accelerator.device)  # loss x n, correct, n
    pending = []  # (step, lr, [loss, grad norm, stop] on the device) of the steps not read yet
    step_log = [{"grad_norm": g} for g in partial["grad_norms"]]  # this epoch's steps, read
    stop = False  # a signal: here (one process), or seen in a read (every rank at the same step)
    lr = parts.schedule(state.step)
    bar = Progress(steps_per_epoch, cfg.batch.global_batch_size, f"epoch {epoch + 1}/{cfg.epochs}",
                   run.is_main and cfg.log.progress, cfg.log.progress_every_s, accelerator.print, done)
    for x, y in skip_batches(parts.train_dl, done, accelerator):  # this rank's share of one step's global batch
        lr = parts.schedule(state.step)
        for group in parts.optimizer.param_groups:  # set before backward: DeepSpeed steps inside it
            group["lr"] = lr
        while True:
            try:
                step_sums, stats = optimizer_step(accelerator, model, parts.optimizer, parts.augment, x, y,
                                                  run.micro_batch, cfg, parts.input_dtype, STOP.requested)
                break
            except OutOfMemoryError:
                pass  # shrink after the except block: until it ends, its traceback holds the step's tensors
            run.micro_batch = shrink_after_oom(accelerator, model, cfg, run.micro_batch, run.zero_stage)
        sums += step_sums
        state.step += 1
        if parts.ema is not None:  # foreach lerps on the device; the decay is a function of the host's step count
            parts.ema.update(parts.averaged, step=state.step)
        done += 1
        pending.append((state.step, lr, stats))
        bar.step()
        # One process stops at the step it is in; several agree at a read, where every rank sees every flag.
        stop = STOP.requested if run.world_size == 1 else stop
        every = cfg.checkpoint_every_steps
        checkpoint_due = every > 0 and state.step % every == 0
        if len(pending) == cfg.log.every_steps or stop or checkpoint_due:
            rows, seen = read_steps(accelerator, run.run_dir, pending, epoch, cfg.precision, bar)
            step_log, stop = step_log + rows, stop or seen
        if done < steps_per_epoch and (stop or checkpoint_due):
            state.step_in_epoch = done
            state.partial = {"sums": accelerator.gather(sums[None]).tolist(),  # each rank's, as they were
                             "grad_norms": [row["grad_norm"] for row in step_log],
                             "seconds": time.perf_counter() - t0}
            saved_to = save_checkpoint(accelerator, run.run_dir, state)
            if stop:
                bar.close()
                raise Interrupted(STOP.signum or signal.SIGTERM, saved_to)  # SIGTERM: another rank's
    rows, seen = read_steps(accelerator, run.run_dir, pending, epoch, cfg.precision, bar)  # before any checkpoint
    step_log, stop = step_log + rows, stop or seen or (run.world_size == 1 and STOP.requested)
    bar.close()
    state.step_in_epoch, state.partial = 0, None
    return Trained(sums=sums, step_log=step_log, stop=stop, lr=lr, t0=t0, train_time=time.perf_counter() - t0)


def end_epoch(run: Run, parts: Parts, state: TrainState, epoch: int, trained: Trained, table: EpochTable) -> bool:
    """Evaluate, log the epoch's row, judge it (the best so far, early stopping) and checkpoint it. Returns
    whether early stopping ends the run; raises Interrupted for a signal seen in the epoch's last step."""
    cfg, accelerator, model, ema, derived = run.cfg, run.accelerator, parts.model, parts.ema, parts.derived
    loss_sum, correct, count = accelerator.reduce(trained.sums, "sum").tolist()
    norm_mean, norm_max, skipped_steps = grad_norm_stats(trained.step_log)
    achieved_tflops = derived.train_flops_per_image * count / trained.train_time / 1e12  # all ranks' images
    val_loss, val_acc = evaluate(model, parts.val_dl, parts.augment, accelerator)
    clean_loss, clean_acc = evaluate(model, parts.train_eval_dl, parts.augment, accelerator)
    if ema is not None:
        with accelerator.autocast():  # the raw model's forward has it from prepare(); the average's not
            val_loss_ema, val_acc_ema = evaluate(ema.module, parts.val_dl, parts.augment, accelerator)
    metrics = {
        "epoch": epoch + 1, "step": state.step,
        "train_loss": loss_sum / count,
        # Under Mixup/CutMix the batch accuracy compares against mixed images: not meaningful.
        "train_acc": None if cfg.data.mixes else correct / count,
        "train_clean_loss": clean_loss, "train_clean_acc": clean_acc,
        "val_loss": val_loss, "val_acc": val_acc, "lr": trained.lr,
        "grad_norm_mean": norm_mean, "grad_norm_max": norm_max, "skipped_steps": skipped_steps,
        # train_time_s: the epoch's steps alone, what images_per_s and achieved_tflops divide by
        "epoch_time_s": time.perf_counter() - trained.t0, "train_time_s": trained.train_time,
        "images_per_s": count / trained.train_time,
        "achieved_tflops": achieved_tflops,
        "mfu": mfu(achieved_tflops, derived.peak_tflops, run.world_size),  # None where the peak is unknown
    }
    weights, score = "raw", val_acc  # what the epoch is judged by: the raw weights, or the better average
    if ema is not None:
        metrics.update(val_loss_ema=val_loss_ema, val_acc_ema=val_acc_ema)
        if cfg.ema.select_best and val_acc_ema > val_acc:
            weights, score = "ema", val_acc_ema
    improved = score > state.best_val_acc
    if improved:
        state.best_val_acc, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
        state.best_weights = weights
    else:
        state.bad_epochs += 1
    state.epoch = epoch + 1
    # Every rank reduced the same numbers, so every rank takes the same decision here.
    early = cfg.early_stop_patience > 0 and state.bad_epochs >= cfg.early_stop_patience
    if run.is_main:
        append_jsonl(run.run_dir / "metrics.jsonl", [metrics])
    table.row(metrics, best=improved)
    accelerator.log({k: v for k, v in metrics.items() if v is not None}, step=state.step)
    if (improved or early or trained.stop or state.epoch == cfg.epochs
            or state.epoch % cfg.checkpoint_every_epochs == 0):
        saved_to = save_checkpoint(accelerator, run.run_dir, state)
    if trained.stop and state.epoch < cfg.epochs and not early:  # a signal in the epoch's last step or evaluation
        raise Interrupted(STOP.signum or signal.SIGTERM, saved_to)
    if early:
        accelerator.print(f"early stopping: no better validation accuracy in {cfg.early_stop_patience} epochs "
                          f"(best {state.best_val_acc:.4f} at epoch {state.best_epoch})")
    return early
