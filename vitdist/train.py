"""train(cfg): the whole training run on an accelerate.Accelerator, top to bottom.

    accelerate launch -m vitdist.train --preset base [--optim.lr 3e-4 ...]
    python -m vitdist.train --preset demo
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import parse_flag_from_env, set_seed
from tqdm.auto import tqdm

from .autobatch import next_plan_after_oom, note_oom, offloaded, resolve_micro_batch
from .config import DATASET_CLASSES, TrainConfig, UserError, to_dict
from .data import BatchAugment, DeviceBatches, TensorImages, eval_loader, load_data, loader_workers, train_loader
from .evaluate import log_to_wandb, score_split, write_eval
from .files import make_readable, save_safetensors, write_atomically
from .flops import mfu, peak_tflops, train_flops_per_image
from .folder_lock import holding
from .memory import OutOfMemoryError, vit_param_counts
from .model import VisionTransformer, count_parameters
from .optim import FUSED_DEVICES, build_optimizer, scheduled_lr
from .precision import mixed_precision, resolve_precision, use_tf32
from .processes import make_accelerator, process_device
from .runs import DATA_FILE, STATE_FILE, complete_checkpoints, find_resume, planned_epochs, read_jsonl, run_record
from .stopping import STOP, Interrupted

SKIPPED_FILE = "skipped_images.txt"  # --data.skip-corrupt: the files left out, one path a line
NAN_ADVICE = ("lower the learning rate 10x (e.g. --optim.lr 1e-4), clip gradients (--optim.max-grad-norm 1.0), "
              "and check that inputs are normalized")


class Diverged(Exception):
    """The loss or the gradient norm became NaN or infinite."""


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


@dataclass(frozen=True)
class Derived:
    """Values computed once from the config, the data and the world size; logged, never stored in the config."""

    world_size: int
    micro_batch_size: int
    accumulation_steps: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    num_train: int
    num_val: int
    num_test: int
    num_classes: int
    num_params: int
    train_flops_per_image: float  # forward + backward, from the model's shape (flops.py)
    peak_tflops: float | None  # one device's dense peak at this precision; None where unknown (a CPU)


def batch_plan(global_batch: int, micro_batch: int | None, world_size: int) -> tuple[int, int]:
    """(micro batch, accumulation steps) so that micro x accumulation x world == global."""
    if micro_batch is None:
        if global_batch % world_size:
            raise UserError(f"--batch.global-batch-size {global_batch} is not divisible by {world_size} processes: "
                            f"use a multiple of {world_size}")
        return global_batch // world_size, 1
    if global_batch % (micro_batch * world_size):
        raise UserError(f"--batch.global-batch-size {global_batch} is not divisible by --batch.micro-batch-size "
                        f"{micro_batch} x {world_size} processes: use a global batch that is a multiple of "
                        f"{micro_batch * world_size}, or another micro-batch")
    return micro_batch, global_batch // (micro_batch * world_size)


def train(cfg: TrainConfig) -> dict:
    """The run. It holds the run folder's lock from its first check to its end (`hold` keeps it), so two runs
    can never write one folder."""
    with contextlib.ExitStack() as hold:
        return _train(cfg, hold)


def _train(cfg: TrainConfig, hold: contextlib.ExitStack) -> dict:
    if not torch.cuda.is_available():  # what DeepSpeed picks without a GPU anyway, minus its warning on import
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if cfg.log.wandb:
        check_wandb_ready()  # before anything is written
    cfg.data.check_root()
    run_dir = Path(cfg.run_dir)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    micro_batch, accum = batch_plan(cfg.batch.global_batch_size, cfg.batch.micro_batch_size, world_size)
    # The device decides what --precision auto means; config.json then records the choice.
    asked, cfg = cfg.precision, replace(cfg, precision=resolve_precision(cfg.precision, process_device()))
    use_tf32(cfg.precision)

    # --- the accelerator: processes, precision, accumulation, trackers
    trackers = [name for name, on in (("wandb", cfg.log.wandb), ("tensorboard", cfg.log.tensorboard)) if on]
    accelerator = make_accelerator(cfg.precision, accum, world_size, trackers, run_dir)
    assert accelerator.num_processes == world_size, (accelerator.num_processes, world_size)
    zero_stage = accelerator.state.deepspeed_plugin.zero_stage if accelerator.state.deepspeed_plugin else 0
    if cfg.ema.decay > 0 and zero_stage == 3:
        raise UserError("--ema.decay does not run under DeepSpeed ZeRO-3 in vitdist (each rank holds a shard of "
                        "the weights): use ZeRO-1 or 2, or DDP, or drop --ema.decay")
    if cfg.batch.auto:  # every rank measures, and all take the smallest fit
        measured = resolve_micro_batch(cfg, world_size, accelerator.device, zero_stage, log=accelerator.print)
        micro_batch, accum = batch_plan(cfg.batch.global_batch_size, measured, world_size)
    if accelerator.state.deepspeed_plugin is not None:
        # vitdist's config rules batch sizes and clipping; DeepSpeed's JSON leaves them "auto".
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=accum,
            train_batch_size=cfg.batch.global_batch_size, gradient_clipping=cfg.optim.max_grad_norm)
    is_main = accelerator.is_main_process
    state = TrainState()
    check_run_dir(run_dir, checkpoint_bytes(cfg))  # before any data is read
    # A run folder is a record: its config.json, written once, rules a resume (check_resume), which may only
    # extend it. `extensions` are config.json's "extended" entries, one per extension.
    resume_dir = find_resume(cfg.resume, run_dir)
    record = run_record(resume_dir)
    saved, extensions = record if record is not None else (None, [])
    planned = planned_epochs(saved, extensions) if saved is not None else cfg.epochs
    if saved is not None:
        check_resume(cfg, saved, planned, resume_dir)  # a refused resume touches nothing, the lock included
    hold.enter_context(holding(run_dir, "--run-dir", accelerator))  # one run per folder, until this one ends
    check_shared_run_dir(run_dir, accelerator)
    if resume_dir is None:
        clear_earlier_run(run_dir, cfg.overwrite or cfg.resume == "auto", accelerator)

    # --- data, model, optimizer
    set_seed(cfg.seed)  # the same initial weights on every rank
    data = load_data(cfg.data, cfg.model.img_size, cfg.seed)
    if cfg.model.num_classes is not None and cfg.model.num_classes != data.num_classes:
        raise UserError(f"--model.num-classes {cfg.model.num_classes}: the data ({data.source}) has "
                        f"{data.num_classes} classes: leave it out (the head then takes the data's count)")
    model = VisionTransformer.from_config(cfg.model, data.num_classes)
    # DeepSpeed wraps the optimizer in its own (ZeRO partitions, offload): leave it the plain foreach AdamW there.
    fused = accelerator.state.deepspeed_plugin is None and accelerator.device.type in FUSED_DEVICES
    optimizer = build_optimizer(model, cfg.optim, fused=fused)
    if cfg.compile:
        if accelerator.state.deepspeed_plugin is not None:
            raise UserError("--compile does not run under DeepSpeed in vitdist: drop --compile, or DeepSpeed")
        model.compile()  # in place, not torch.compile(model): state dicts keep their plain names
    pin = accelerator.device.type == "cuda"
    # Each rank's whole share of an optimizer step at a time; optimizer_step splits it into micro-batches. The
    # data order is then the same whatever the micro-batch, even one changed mid-run. A split held in memory
    # moves to the device once and is indexed there; image files go through loader workers.
    if isinstance(data.train, TensorImages):
        train_dl = DeviceBatches(data.train, cfg.batch.global_batch_size, cfg.seed, accelerator.process_index,
                                 world_size, accelerator.device)
    else:
        train_dl = train_loader(data.train, cfg.batch.global_batch_size // world_size, cfg.batch.global_batch_size,
                                cfg.seed, loader_workers(data.train, cfg.data.num_workers), pin)
    eval_batch = max(micro_batch, 1024)  # evaluation keeps no activations: large batches, few launches
    val_dl, train_eval_dl, test_dl = (
        eval_loader(ds, eval_batch, loader_workers(ds, cfg.data.num_workers), pin) if ds is not None else None
        for ds in (data.val, data.train_eval, data.test))
    steps_per_epoch = len(train_dl)
    derived = Derived(
        world_size=world_size, micro_batch_size=micro_batch, accumulation_steps=accum,
        steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * cfg.epochs,
        warmup_steps=round(cfg.optim.warmup_epochs * steps_per_epoch), num_train=len(data.train),
        num_val=len(data.val), num_test=len(data.test) if data.test is not None else 0,
        num_classes=data.num_classes, num_params=count_parameters(model),
        train_flops_per_image=train_flops_per_image(cfg.model, data.num_classes),
        peak_tflops=peak_tflops(torch.cuda.get_device_name(accelerator.device)
                                if accelerator.device.type == "cuda" else None,
                                mixed_precision(cfg.precision), tf32=cfg.precision == "tf32"))

    loaders = [val_dl, train_eval_dl] + ([] if isinstance(train_dl, DeviceBatches) else [train_dl])
    model, optimizer, val_dl, train_eval_dl, *rest = accelerator.prepare(model, optimizer, *loaders)
    train_dl = rest[0] if rest else train_dl  # a DataLoader, sharded per rank by accelerate
    if test_dl is not None:
        test_dl = accelerator.prepare(test_dl)
    augment = BatchAugment(cfg.data, data.num_classes).to(accelerator.device)
    # DeepSpeed's bf16/fp16 modes hold the weights themselves in half precision (no autocast): feed that dtype.
    input_dtype = next(model.parameters()).dtype
    ema = None  # the weights' moving average (--ema.decay): updated after each step, checkpointed with the rest
    if cfg.ema.decay > 0:
        from timm.utils.model_ema import ModelEmaV3

        averaged = accelerator.unwrap_model(model)  # the module whose weights the optimizer steps
        ema = ModelEmaV3(averaged, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup, dtype=torch.float32)
        accelerator.register_for_checkpointing(ema)
    set_seed(cfg.seed, device_specific=True)  # each rank its own dropout and augmentation draws

    # --- run folder, resume, trackers
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if saved is None or not (run_dir / "config.json").exists():  # written once, by the run that starts here
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
            (run_dir / DATA_FILE).write_text(json.dumps(
                {"source": data.source, "classes": data.classes, "num_train": derived.num_train,
                 "num_val": derived.num_val, "num_test": derived.num_test}, indent=2) + "\n")
        if data.skipped:
            (run_dir / SKIPPED_FILE).write_text("".join(f"{path}\n" for path in data.skipped))
    first_epochs = saved.epochs if saved is not None else cfg.epochs

    def schedule(step: int) -> float:
        return scheduled_lr(step, cfg.optim, steps_per_epoch, derived.warmup_steps, first_epochs, extensions)

    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))  # model, optimizer, scaler, every rank's RNG
        state = TrainState(**json.loads((resume_dir / STATE_FILE).read_text()))
        if cfg.epochs > planned:  # extended: a new cosine from where the rate is now (optim.scheduled_lr)
            extensions.append(extension(cfg, planned, state.step, schedule(state.step), steps_per_epoch))
            if is_main:
                (run_dir / "config.json").write_text(json.dumps({**to_dict(saved), "extended": extensions},
                                                                indent=2) + "\n")
            accelerator.print(describe_extension(extensions[-1], cfg, planned))
        elif cfg.extend_lr is not None:
            accelerator.print(f"warning: --extend-lr {cfg.extend_lr:g} is not used: the resume does not extend the "
                              f"run (its plan is {planned} epochs; pass --epochs above it to extend)")
        if is_main:  # a torn last line (the disk filled, the machine died mid-write) goes with the rest
            truncate_jsonl(run_dir / "metrics.jsonl", "epoch", state.epoch)
            truncate_jsonl(run_dir / "steps.jsonl", "step", state.step)
        accelerator.print(f"resumed from {resume_dir} at epoch {state.epoch}, step {state.step}"
                          + (f" ({state.step_in_epoch} steps into epoch {state.epoch + 1})" if state.step_in_epoch
                             else ""))
    elif cfg.resume == "auto":
        accelerator.print(f"--resume auto: no complete checkpoint in {run_dir / 'checkpoints'}, starting fresh")
    if trackers:
        accelerator.init_trackers(cfg.log.wandb_project, config=flat_config(cfg, derived), init_kwargs={
            "wandb": {"name": cfg.log.wandb_name or run_dir.resolve().name, "tags": list(cfg.log.wandb_tags),
                      "group": cfg.log.wandb_group,
                      "dir": str(run_dir)}})
        # However the run ends (a divergence, a signal), its trackers end with it, everything written.
        hold.push(lambda failed, *_: close_trackers(accelerator, failed is not None))
    accelerator.print(f"vitdist: {derived.num_params:,} parameters; {data.source}: {derived.num_train} train / "
                      f"{derived.num_val} val / {derived.num_test} test; {world_size} process(es) x micro-batch "
                      f"{micro_batch} x {accum} accumulation = global batch {cfg.batch.global_batch_size}; "
                      f"{steps_per_epoch} steps/epoch; precision {cfg.precision}{' (auto)' * (asked == 'auto')} "
                      f"({input_dtype} weights); "
                      f"{engine_name(accelerator, zero_stage)}; AdamW {'fused' if fused else 'foreach'}; "
                      f"{'compiled' if cfg.compile else 'eager'}; "
                      + (f"EMA {cfg.ema.decay:g}{' (decay warmup)' * cfg.ema.warmup}; " if ema is not None else "")
                      + (f"skipped {len(data.skipped)} unreadable images ({run_dir / SKIPPED_FILE}); "
                         if data.skipped else "")
                      + (f"left out {len(data.left_out)} non-image file(s) (first: {data.left_out[0]}); "
                         if data.left_out else "") +
                      f"device {accelerator.device}")

    if cfg.optim.warmup_epochs > cfg.epochs / 2 and state.epoch == 0:  # a short run under a long warmup
        peak = schedule(derived.total_steps - 1) if cfg.optim.warmup_epochs >= cfg.epochs else cfg.optim.lr
        accelerator.print(f"warning: --optim.warmup-epochs {cfg.optim.warmup_epochs:g} of a {cfg.epochs}-epoch run: "
                          + (f"the rate never reaches --optim.lr {cfg.optim.lr:g} (it ends at {peak:.3g})"
                             if cfg.optim.warmup_epochs >= cfg.epochs else "most of the run is warmup")
                          + f"; a tenth of the run is usual: --optim.warmup-epochs {max(cfg.epochs / 10, 0.1):g}")

    # --- epochs
    stopped_early = False
    table = EpochTable(accelerator.print, ema=ema is not None)
    table.header()  # now, not when the first epoch ends
    for epoch in range(state.epoch, cfg.epochs):
        train_dl.set_epoch(epoch)
        model.train()
        # A checkpoint saved inside this epoch (a signal, --checkpoint-every-steps) carries its first steps' sums.
        done, partial = state.step_in_epoch, state.partial or {"sums": None, "grad_norms": [], "seconds": 0.0}
        t0 = time.perf_counter() - partial["seconds"]
        sums = torch.tensor(rank_sums(partial["sums"], accelerator), device=accelerator.device)  # loss x n, correct, n
        pending = []  # (step, lr, [loss, grad norm, stop] on the device) of the steps not read yet
        step_log = [{"grad_norm": g} for g in partial["grad_norms"]]  # this epoch's steps, read
        stop = False  # a signal: here (one process), or seen in a read (every rank at the same step)
        bar = Progress(steps_per_epoch, cfg.batch.global_batch_size, f"epoch {epoch + 1}/{cfg.epochs}",
                       is_main and cfg.log.progress, cfg.log.progress_every_s, accelerator.print, done)
        for x, y in skip_batches(train_dl, done, accelerator):  # this rank's share of one step's global batch
            lr = schedule(state.step)
            for group in optimizer.param_groups:  # set before backward: DeepSpeed steps inside it
                group["lr"] = lr
            while True:
                try:
                    step_sums, stats = optimizer_step(accelerator, model, optimizer, augment, x, y, micro_batch, cfg,
                                                      input_dtype, STOP.requested)
                    break
                except OutOfMemoryError:
                    pass  # shrink after the except block: until it ends, its traceback holds the step's tensors
                micro_batch = shrink_after_oom(accelerator, model, cfg, micro_batch, zero_stage)
            sums += step_sums
            state.step += 1
            if ema is not None:  # foreach lerps on the device; the decay is a function of the host's step count
                ema.update(averaged, step=state.step)
            done += 1
            pending.append((state.step, lr, stats))
            bar.step()
            # One process stops at the step it is in; several agree at a read, where every rank sees every flag.
            stop = STOP.requested if world_size == 1 else stop
            every = cfg.checkpoint_every_steps
            checkpoint_due = every > 0 and state.step % every == 0
            if len(pending) == cfg.log.every_steps or stop or checkpoint_due:
                rows, seen = read_steps(accelerator, run_dir, pending, epoch, cfg.precision, bar)
                step_log, stop = step_log + rows, stop or seen
            if done < steps_per_epoch and (stop or checkpoint_due):
                state.step_in_epoch = done
                state.partial = {"sums": accelerator.gather(sums[None]).tolist(),  # each rank's, as they were
                                 "grad_norms": [row["grad_norm"] for row in step_log],
                                 "seconds": time.perf_counter() - t0}
                saved_to = save_checkpoint(accelerator, run_dir, state)
                if stop:
                    bar.close()
                    raise Interrupted(STOP.signum or signal.SIGTERM, saved_to)  # SIGTERM: another rank's
        rows, seen = read_steps(accelerator, run_dir, pending, epoch, cfg.precision, bar)  # before any checkpoint
        step_log, stop = step_log + rows, stop or seen or (world_size == 1 and STOP.requested)
        bar.close()
        state.step_in_epoch, state.partial = 0, None
        train_time = time.perf_counter() - t0
        loss_sum, correct, count = accelerator.reduce(sums, "sum").tolist()
        norm_mean, norm_max, skipped_steps = grad_norm_stats(step_log)
        achieved_tflops = derived.train_flops_per_image * count / train_time / 1e12  # all ranks' images

        # --- evaluate, log, checkpoint
        val_loss, val_acc = evaluate(model, val_dl, augment, accelerator)
        clean_loss, clean_acc = evaluate(model, train_eval_dl, augment, accelerator)
        if ema is not None:
            with accelerator.autocast():  # the raw model's forward has it from prepare(); the average's not
                val_loss_ema, val_acc_ema = evaluate(ema.module, val_dl, augment, accelerator)
        metrics = {
            "epoch": epoch + 1, "step": state.step,
            "train_loss": loss_sum / count,
            # Under Mixup/CutMix the batch accuracy compares against mixed images: not meaningful.
            "train_acc": None if cfg.data.mixes else correct / count,
            "train_clean_loss": clean_loss, "train_clean_acc": clean_acc,
            "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
            "grad_norm_mean": norm_mean, "grad_norm_max": norm_max, "skipped_steps": skipped_steps,
            # train_time_s: the epoch's steps alone, what images_per_s and achieved_tflops divide by
            "epoch_time_s": time.perf_counter() - t0, "train_time_s": train_time, "images_per_s": count / train_time,
            "achieved_tflops": achieved_tflops,
            "mfu": mfu(achieved_tflops, derived.peak_tflops, world_size),  # None where the peak is unknown
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
        if is_main:
            append_jsonl(run_dir / "metrics.jsonl", [metrics])
        table.row(metrics, best=improved)
        accelerator.log({k: v for k, v in metrics.items() if v is not None}, step=state.step)
        if improved or early or stop or state.epoch == cfg.epochs or state.epoch % cfg.checkpoint_every_epochs == 0:
            saved_to = save_checkpoint(accelerator, run_dir, state)
        if stop and state.epoch < cfg.epochs and not early:  # a signal in the epoch's last step or evaluation
            raise Interrupted(STOP.signum or signal.SIGTERM, saved_to)
        if early:
            accelerator.print(f"early stopping: no better validation accuracy in {cfg.early_stop_patience} epochs "
                              f"(best {state.best_val_acc:.4f} at epoch {state.best_epoch})")
            stopped_early = True
            break

    # --- the best checkpoint: test it once, export its weights
    best_dir = checkpoint_dir(run_dir, state.best_epoch)
    accelerator.load_state(str(best_dir))
    results = {"best_epoch": state.best_epoch, "best_val_acc": state.best_val_acc, "weights": state.best_weights,
               "epochs_run": state.epoch, "steps": state.step, "stopped_early": stopped_early,
               "num_params": derived.num_params}
    best = ema.module if state.best_weights == "ema" else model
    scores = None
    if test_dl is not None and cfg.test_at_end:  # with top-5, per-class accuracy and the confusion matrix
        with accelerator.autocast():
            scores = score_split(best, test_dl, augment.normalize, accelerator, data.num_classes)
        results["test_loss"], results["test_acc"] = scores["loss"], scores["accuracy"]
    if state.best_weights == "ema":  # the average is a plain module on every rank, whatever the engine
        if is_main:
            save_safetensors(ema.module.state_dict(), run_dir / "model.safetensors", metadata={"format": "pt"})
    else:
        accelerator.save_model(model, str(run_dir))  # run_dir/model.safetensors: the best weights, unwrapped
        if is_main:
            make_readable(run_dir / "model.safetensors")  # safetensors writes 0600
    if is_main:
        write_atomically(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        about = {"run_dir": str(run_dir), "weights_file": str(run_dir / "model.safetensors"),
                 "checkpoint": best_dir.name, "epoch": state.best_epoch, "step": state.best_epoch * steps_per_epoch,
                 "data": data.source, "precision": cfg.precision}
        if scores is not None:  # what `vitdist eval RUN` would write
            write_eval(run_dir, "test", "best", scores, data.classes, about)
            if cfg.log.wandb:
                log_to_wandb(accelerator.get_tracker("wandb", unwrap=True), "test", scores, data.classes,
                             run_dir / "model.safetensors", about, state.step)
        accelerator.print("best: epoch {best_epoch}, val acc {best_val_acc:.4f}".format(**results)
                          + (f" ({state.best_weights} weights)" if ema is not None else "")
                          + (f"; test acc {results['test_acc']:.4f}" if "test_acc" in results else "")
                          + f" -> {run_dir}")
    accelerator.log({f"final/{k}": v for k, v in results.items() if k != "weights"}, step=state.step)
    # Every rank returns with the run folder complete: a tune's or sweep's next step reads it on every rank (a
    # rank that ran ahead read results.json half written: seen once in 3 CI runs of a 2-process tune).
    accelerator.wait_for_everyone()
    return results  # the trackers end as train() returns (close_trackers); the process group at exit


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


def disk_full(e: BaseException) -> bool:
    """Whether a write failed for want of space: an OSError (ENOSPC, EDQUOT), or what torch.save (RuntimeError)
    and safetensors (SafetensorError) raise in its place."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(e)
    return ("No space left" in text or "StorageFull" in text or "Disk quota" in text
            or (isinstance(e, RuntimeError) and "file write failed" in text))


def engine_name(accelerator: Accelerator, zero_stage: int) -> str:
    """What runs the model, as the header line says it: DeepSpeed ZeRO-N, DDP, or one process."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        moved = offloaded(plugin.deepspeed_config.get("zero_optimization", {}))
        return f"DeepSpeed ZeRO-{zero_stage}" + (f" ({' and '.join(moved)} offloaded)" if moved else "")
    return "DDP" if accelerator.num_processes > 1 else "one process"


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


# --- checkpoints: checkpoints/epoch_NNNN/, complete once train_state.json is in it; keep the last and the best

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
    from .presets import as_flag, changed_fields

    changes = {k: v for k, v in changed_fields(cfg, saved).items() if not k.startswith(RESUME_MAY_CHANGE)}
    if changes:
        raise UserError(f"--resume continues the run of {resume_dir.parent.parent / 'config.json'}, which this "
                        f"would change: " + ", ".join(f"{as_flag(k, new)} (the run has {old})"
                                                      for k, (old, new) in changes.items())
                        + ": leave those flags out, or start a new run in another --run-dir")
    if cfg.epochs < planned:
        raise UserError(f"--epochs {cfg.epochs}: the run is planned for {planned} epochs, and a resume can only "
                        f"extend it (its schedule is fixed); stop it early instead, or start a new run")


# --- small I/O helpers

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


def flat_config(cfg: TrainConfig, derived: Derived) -> dict:
    """The config and derived values as flat scalars (TensorBoard's hparams take nothing else)."""
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            else:
                out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk(to_dict(cfg), "")
    walk(asdict(derived), "derived.")
    return out


class Progress:
    """An epoch's progress, on rank 0. At a terminal, a live tqdm bar on stderr: steps, images/s, time left, and
    the loss and rate of the last read. Otherwise (a file, a pipe, a SLURM log) a plain line at a read when
    `every_s` seconds have passed since the last one, and never a carriage return."""

    def __init__(self, steps: int, batch: int, desc: str, enabled: bool, every_s: float, print_fn, done: int = 0):
        self.steps, self.batch, self.desc, self.print, self.every_s = steps, batch, desc, print_fn, every_s
        self.done, self.start, self.t0 = done, done, time.perf_counter()
        self.last_line = self.t0
        self.read = ""  # ", loss L, lr R" of the last read
        self.bar = None
        self.plain = enabled and not sys.stderr.isatty()
        if enabled and not self.plain:
            # A terminal that reports its size as 0 x 0 (a bare pty) would get no bar from tqdm: assume 100 x 24.
            size = shutil.get_terminal_size((100, 24))
            self.bar = tqdm(total=steps, initial=done, desc=desc, unit="step", leave=False, ncols=size.columns,
                            nrows=size.lines, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(1)  # redrawn at most every 0.1 s (tqdm's mininterval): a fast epoch may not be

    def postfix(self) -> str:
        rate = (self.done - self.start) * self.batch / max(time.perf_counter() - self.t0, 1e-9)
        return f"{rate:,.0f} img/s{self.read}"

    def show(self, row: dict) -> None:
        """After a read: the loss and rate it read. The bar is redrawn here whatever the time since the last
        redraw: a read is when the host has news, and an epoch faster than tqdm's 0.1 s would show none."""
        self.read = f", loss {row['loss']:.4f}, lr {row['lr']:.2e}"
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=True)
        now = time.perf_counter()
        if self.plain and now - self.last_line >= self.every_s:
            elapsed, here = now - self.t0, self.done - self.start
            left = elapsed / max(here, 1) * (self.steps - self.done)
            self.print(f"{self.desc} step {self.done}/{self.steps}: {here * self.batch / elapsed:,.0f} img/s"
                       f"{self.read}, {elapsed:.0f} s in, about {left:.0f} s left")
            self.last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EpochTable:
    """One printed row per epoch."""

    COLUMNS = [("epoch", "{:>5}"), ("train_loss", "{:>10.4f}"), ("train_acc", "{:>9.4f}"),
               ("train_clean_acc", "{:>9.4f}"), ("val_loss", "{:>8.4f}"), ("val_acc", "{:>7.4f}"),
               ("lr", "{:>9.2e}"), ("grad_norm_mean", "{:>9.3f}"), ("epoch_time_s", "{:>7.1f}"),
               ("images_per_s", "{:>7.0f}")]
    HEADER = "epoch train_loss train_acc clean_acc val_loss val_acc        lr grad_norm  time_s   img/s"
    EMA_COLUMN, EMA_HEADER = ("val_acc_ema", "{:>7.4f}"), " ema_acc"  # after val_acc, with --ema.decay

    def __init__(self, print_fn, ema: bool = False):
        self.print, self.printed_header = print_fn, False
        self.columns, self.text = list(self.COLUMNS), self.HEADER
        if ema:
            self.columns.insert(6, self.EMA_COLUMN)
            at = self.HEADER.index(" val_acc") + len(" val_acc")
            self.text = self.HEADER[:at] + self.EMA_HEADER + self.HEADER[at:]

    def header(self) -> None:
        if not self.printed_header:
            self.print(self.text)
            self.printed_header = True

    def row(self, m: dict, best: bool) -> None:
        self.header()
        cells = [fmt.format(m[k]) if m[k] is not None else f"{'-':>{len(fmt.format(0.0 if 'f' in fmt else 0))}}"
                 for k, fmt in self.columns]
        self.print(" ".join(cells) + (" *" if best else ""))


def main(argv: list[str] | None = None) -> int:
    from .cli import ReaderLeftSafe, exit_on_user_error
    from .presets import parse_train_config

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
                torch.distributed.destroy_process_group()
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


if __name__ == "__main__":
    sys.exit(main())
