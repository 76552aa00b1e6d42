"""One optimizer step and what the host reads of it: optimizer_step runs a rank's share of the global batch in
micro-batches with nothing read on the host; read_steps reads the pending steps' loss and gradient norm in one
wait, logs them and stops every rank at a non-finite one (Diverged); the per-epoch evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from ..config import TrainConfig, UserError
from ..data.augment import BatchAugment
from ..data.batches import DeviceBatches
from ..scale.autobatch import note_oom
from ..scale.plan import next_plan_after_oom
from .folder import append_jsonl
from .trackers import log_steps


class Diverged(Exception):
    """The loss or the gradient norm became NaN or infinite."""


def optimizer_step(accelerator, model, optimizer, augment, x, y, micro_batch: int, cfg: TrainConfig,
                   input_dtype, stop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on this rank's share (x, y) of the global batch, accumulated in micro-batches.

    Returns, on the device (nothing here waits for the host): (loss x n, correct, n) summed over the share, and
    [mean loss, pre-clip gradient norm, share of ranks asked to stop] over all ranks (`stop`: this rank got a
    signal; it rides the all-reduce the step makes anyway, and every rank reads it at the next read). A
    non-finite step is not applied where the optimizer can skip on the device (fused AdamW, outside fp16, whose
    scaler skips overflows itself); elsewhere (DeepSpeed steps inside backward) it is, and the run stops at the
    next read, before any checkpoint.
    """
    chunks = list(zip(x.split(micro_batch), y.split(micro_batch)))
    accelerator.gradient_accumulation_steps = len(chunks)
    accelerator.step = 0  # a step replayed after an out-of-memory error starts its count afresh
    sums = torch.zeros(3, device=accelerator.device)
    step_loss = torch.zeros((), device=accelerator.device)
    inner = getattr(optimizer, "optimizer", optimizer)  # under accelerate's wrapper
    skip_on_device = cfg.precision != "fp16" and getattr(inner, "_step_supports_amp_scaling", False)
    for xc, yc in chunks:
        with accelerator.accumulate(model):
            inputs, targets = augment(xc, yc)
            logits = model(inputs.to(input_dtype))
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
            accelerator.backward(loss)
            step_loss += loss.detach() / len(chunks)
            if accelerator.sync_gradients:
                # Under DeepSpeed the engine clipped inside backward; this is the norm it measured.
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm or math.inf)
                grad_norm = torch.as_tensor(grad_norm, dtype=torch.float32, device=accelerator.device)
                # One small all-reduce: every rank holds the same numbers, so every rank reads the same verdict.
                flag = torch.full((), float(stop), device=accelerator.device)  # a kernel argument, no copy
                stats = accelerator.reduce(torch.stack([step_loss, grad_norm, flag]), "mean")
                if skip_on_device:  # GradScaler's flag: the fused kernel leaves weights and moments untouched
                    inner.found_inf = (~torch.isfinite(stats).all()).float()
            optimizer.step()  # fp16: the scaler skips a step whose gradients overflowed
            optimizer.zero_grad(set_to_none=True)
        sums[0] += loss.detach() * len(yc)  # a Python number into a device tensor: a kernel argument, no copy
        sums[1] += (logits.argmax(-1) == yc).sum()
        sums[2] += len(yc)
    return sums, stats


def read_steps(accelerator: Accelerator, run_dir: Path, pending: list, epoch: int, precision: str,
               bar) -> tuple[list[dict], bool]:
    """Read the pending steps' loss and gradient norm, one wait for the device for all of them; append them to
    steps.jsonl and the trackers; empty `pending`. Returns the rows, and whether some rank was asked to stop in
    one of those steps. At the first non-finite step (the loss, or outside fp16, whose scaler skips overflowed
    steps itself, the gradient norm) log up to it and raise Diverged, on every rank."""
    if not pending:
        return [], False
    values = torch.stack([stats for _, _, stats in pending]).tolist()  # the host waits here, once per read
    rows = [{"step": step, "epoch": epoch + 1, "loss": loss, "lr": lr, "grad_norm": norm}
            for (step, lr, _), (loss, norm, _) in zip(pending, values)]
    pending.clear()
    bad = next((row for row in rows if not math.isfinite(row["loss"])
                or (precision != "fp16" and not math.isfinite(row["grad_norm"]))), None)
    if bad is not None:
        rows = rows[:rows.index(bad) + 1]  # the bad step too, so the logs show where it went
    if accelerator.is_main_process:
        append_jsonl(run_dir / "steps.jsonl", rows)
        log_steps(accelerator.trackers, rows)
    if bad is not None:  # every rank sees the same bad step (the stats are all-reduced) and stops here
        accelerator.wait_for_everyone()  # once rank 0 has logged it: a sweep reads the curve on every rank next
        bar.close()
        raise Diverged(f"non-finite {'loss' if not math.isfinite(bad['loss']) else 'gradient norm'} "
                       f"at epoch {epoch + 1}, step {bad['step']} (lr {bad['lr']:.3g})")
    bar.show(rows[-1])
    return rows, any(stop > 0 for _, _, stop in values)  # a signal on some rank


def grad_norm_stats(step_log: list[dict]) -> tuple[float | None, float | None, int]:
    """(mean, max, skipped) of an epoch's pre-clip gradient norms. A non-finite norm that got this far is an fp16
    overflow (any other stops the run at its read): the scaler skipped that step, routinely while its scale
    settles; it is counted, not averaged in."""
    finite = [row["grad_norm"] for row in step_log if math.isfinite(row["grad_norm"])]
    return (sum(finite) / len(finite) if finite else None, max(finite) if finite else None,
            len(step_log) - len(finite))


def rank_sums(saved: list | None, accelerator: Accelerator) -> list[float]:
    """This rank's (loss x n, correct, n) of its epoch so far, from a checkpoint inside the epoch: its own sums
    when the process count is the same (so the resumed float32 additions are the uninterrupted run's); after a
    change of process count, rank 0 takes all of them."""
    if not saved:
        return [0.0] * 3
    if len(saved) == accelerator.num_processes:
        return saved[accelerator.process_index]
    return [sum(col) for col in zip(*saved)] if accelerator.is_main_process else [0.0] * 3


def skip_batches(train_dl, done: int, accelerator: Accelerator):
    """This epoch's batches after the first `done` (a resume inside an epoch): the same order, the rest of it."""
    if not done:
        return train_dl
    if isinstance(train_dl, DeviceBatches):
        return train_dl.from_step(done)
    return accelerator.skip_first_batches(train_dl, done)


def shrink_after_oom(accelerator: Accelerator, model, cfg: TrainConfig, micro_batch: int, zero_stage: int) -> int:
    """A step ran out of memory: the next smaller micro-batch (more accumulation, same global batch), or stop.

    Only a single process can retry in place: under DDP the other ranks already wait in an all-reduce, and
    DeepSpeed fixed its accumulation count at start. There the run stops, and a restart with --resume auto
    --batch.auto begins below the size that failed.
    """
    note_oom(cfg, accelerator.device, micro_batch, zero_stage)
    if accelerator.num_processes > 1 or accelerator.state.deepspeed_plugin is not None:
        raise UserError(f"out of memory at micro-batch {micro_batch}: rerun with --resume auto --batch.auto "
                        f"(it now starts below {micro_batch}), or a smaller --batch.micro-batch-size")
    model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    smaller, accum = next_plan_after_oom(micro_batch, cfg.batch.global_batch_size // micro_batch)  # one process
    accelerator.print(f"out of memory at micro-batch {micro_batch}: now micro-batch {smaller} x {accum} "
                      f"accumulation = global batch {cfg.batch.global_batch_size}; replaying the step")
    return smaller


@torch.no_grad()
def evaluate(model, loader, augment: BatchAugment, accelerator: Accelerator) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy over the whole split, across all ranks."""
    model.eval()
    dtype = next(model.parameters()).dtype
    sums = torch.zeros(3, device=accelerator.device)
    for x, y in loader:
        logits = model(augment.normalize(x).to(dtype)).float()
        loss = F.cross_entropy(logits, y, reduction="none")
        # gather_for_metrics drops the samples accelerate repeated to even out the ranks' shards.
        loss, hit = accelerator.gather_for_metrics((loss, (logits.argmax(-1) == y).float()))
        sums[0] += loss.sum()
        sums[1] += hit.sum()
        sums[2] += len(hit)
    model.train()
    loss_sum, correct, count = sums.tolist()
    return loss_sum / count, correct / count
