"""train(cfg): the whole training run on an accelerate.Accelerator, as its phases, top to bottom: open the run
(processes, precision, the batch plan, the run folder's checks and lock), build its parts (data, model,
optimizer, loaders), start or resume (config.json, the checkpoint, the trackers), run the epochs (epoch.py), and
finish (test the best checkpoint once, export its weights, write results.json).

    accelerate launch -m vitdist.train --preset base [--optim.lr 3e-4 ...]
    python -m vitdist.train --preset demo
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config import TrainConfig, UserError, to_dict
from ..data.augment import BatchAugment
from ..data.batches import DeviceBatches, eval_loader, loader_workers, train_loader
from ..data.images import TensorImages
from ..data.sources import load_data
from ..files import make_readable, save_safetensors, write_atomically
from ..flops import peak_tflops, train_flops_per_image
from ..model import VisionTransformer, count_parameters
from ..optim import FUSED_DEVICES, build_optimizer, scheduled_lr
from ..precision import mixed_precision, resolve_precision, use_tf32
from ..scale.autobatch import offloaded, resolve_micro_batch
from .epoch import run_epochs
from .folder import (SKIPPED_FILE, TrainState, check_resume, check_run_dir, check_shared_run_dir, checkpoint_bytes,
                     checkpoint_dir, clear_earlier_run, describe_extension, extension, truncate_jsonl)
from .lock import holding
from .parts import Derived, Parts, Run
from .processes import make_accelerator, process_device
from .record import DATA_FILE, STATE_FILE, find_resume, planned_epochs, run_record
from .scores import log_to_wandb, score_split, write_eval
from .trackers import check_wandb_ready, close_trackers


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
    """The run. It holds the run folder's lock from its first check to its end (`hold` keeps it, and ends the
    trackers however the run ends), so two runs can never write one folder."""
    with contextlib.ExitStack() as hold:
        run = open_run(cfg, hold)  # processes, precision, batch plan, the run folder's checks and lock
        parts = build(run)  # data, model, optimizer, loaders, schedule
        state = start(run, parts, hold)  # config.json, the resumed checkpoint, trackers, the header line
        stopped_early = run_epochs(run, parts, state)  # epoch.py
        return finish(run, parts, state, stopped_early)  # test once, export, results.json


def open_run(cfg: TrainConfig, hold: contextlib.ExitStack) -> Run:
    """Everything decided before any data is read: the processes and their accelerator, the precision, the batch
    plan, and the run folder (room, an earlier run, a refused resume, the lock)."""
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

    # the accelerator: processes, precision, accumulation, trackers
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

    # the run folder: a record. Its config.json, written once, rules a resume (check_resume), which may only
    # extend it. `extensions` are config.json's "extended" entries, one per extension.
    check_run_dir(run_dir, checkpoint_bytes(cfg))  # before any data is read
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
    return Run(cfg=cfg, asked_precision=asked, accelerator=accelerator, run_dir=run_dir, world_size=world_size,
               micro_batch=micro_batch, accum=accum, zero_stage=zero_stage, trackers=trackers,
               resume_dir=resume_dir, saved=saved, extensions=extensions, planned=planned)


def build(run: Run) -> Parts:
    """The data, the model (the same initial weights on every rank), the optimizer, the loaders, prepared."""
    cfg, accelerator, world_size = run.cfg, run.accelerator, run.world_size
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
    eval_batch = max(run.micro_batch, 1024)  # evaluation keeps no activations: large batches, few launches
    val_dl, train_eval_dl, test_dl = (
        eval_loader(ds, eval_batch, loader_workers(ds, cfg.data.num_workers), pin) if ds is not None else None
        for ds in (data.val, data.train_eval, data.test))
    steps_per_epoch = len(train_dl)
    derived = Derived(
        world_size=world_size, micro_batch_size=run.micro_batch, accumulation_steps=run.accum,
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
    input_dtype = next(model.parameters()).dtype
    ema = averaged = None  # the weights' moving average (--ema.decay): updated after each step, checkpointed
    if cfg.ema.decay > 0:
        from timm.utils.model_ema import ModelEmaV3

        averaged = accelerator.unwrap_model(model)  # the module whose weights the optimizer steps
        ema = ModelEmaV3(averaged, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup, dtype=torch.float32)
        accelerator.register_for_checkpointing(ema)
    set_seed(cfg.seed, device_specific=True)  # each rank its own dropout and augmentation draws
    first_epochs = run.saved.epochs if run.saved is not None else cfg.epochs

    def schedule(step: int) -> float:  # run.extensions grows where a resume extends the run (start())
        return scheduled_lr(step, cfg.optim, steps_per_epoch, derived.warmup_steps, first_epochs, run.extensions)

    return Parts(data=data, model=model, optimizer=optimizer, augment=augment, ema=ema, averaged=averaged,
                 input_dtype=input_dtype, fused=fused, train_dl=train_dl, val_dl=val_dl, train_eval_dl=train_eval_dl,
                 test_dl=test_dl, derived=derived, schedule=schedule)


def start(run: Run, parts: Parts, hold: contextlib.ExitStack) -> TrainState:
    """The run folder's record (config.json and data.json, written once), the resumed checkpoint and any
    extension, the trackers, and the header line. Returns where the run stands."""
    cfg, accelerator, run_dir, data = run.cfg, run.accelerator, run.run_dir, parts.data
    state = TrainState()
    if run.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if run.saved is None or not (run_dir / "config.json").exists():  # written once, by the run that starts here
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
            (run_dir / DATA_FILE).write_text(json.dumps(
                {"source": data.source, "classes": data.classes, "num_train": parts.derived.num_train,
                 "num_val": parts.derived.num_val, "num_test": parts.derived.num_test}, indent=2) + "\n")
        if data.skipped:
            (run_dir / SKIPPED_FILE).write_text("".join(f"{path}\n" for path in data.skipped))
    if run.resume_dir is not None:
        state = resume(run, parts)
    elif cfg.resume == "auto":
        accelerator.print(f"--resume auto: no complete checkpoint in {run_dir / 'checkpoints'}, starting fresh")
    if run.trackers:
        accelerator.init_trackers(cfg.log.wandb_project, config=flat_config(cfg, parts.derived), init_kwargs={
            "wandb": {"name": cfg.log.wandb_name or run_dir.resolve().name, "tags": list(cfg.log.wandb_tags),
                      "group": cfg.log.wandb_group,
                      "dir": str(run_dir)}})
        # However the run ends (a divergence, a signal), its trackers end with it, everything written.
        hold.push(lambda failed, *_: close_trackers(accelerator, failed is not None))
    accelerator.print(header(run, parts))
    if cfg.optim.warmup_epochs > cfg.epochs / 2 and state.epoch == 0:  # a short run under a long warmup
        peak = parts.schedule(parts.derived.total_steps - 1) if cfg.optim.warmup_epochs >= cfg.epochs else cfg.optim.lr
        accelerator.print(f"warning: --optim.warmup-epochs {cfg.optim.warmup_epochs:g} of a {cfg.epochs}-epoch run: "
                          + (f"the rate never reaches --optim.lr {cfg.optim.lr:g} (it ends at {peak:.3g})"
                             if cfg.optim.warmup_epochs >= cfg.epochs else "most of the run is warmup")
                          + f"; a tenth of the run is usual: --optim.warmup-epochs {max(cfg.epochs / 10, 0.1):g}")
    return state


def resume(run: Run, parts: Parts) -> TrainState:
    """Load the checkpoint (model, optimizer, scaler, every rank's RNG), extend the run where --epochs passes its
    plan, and cut the logs back to the checkpoint's step."""
    cfg, accelerator, run_dir, resume_dir = run.cfg, run.accelerator, run.run_dir, run.resume_dir
    accelerator.load_state(str(resume_dir))  # model, optimizer, scaler, every rank's RNG
    state = TrainState(**json.loads((resume_dir / STATE_FILE).read_text()))
    if cfg.epochs > run.planned:  # extended: a new cosine from where the rate is now (optim.scheduled_lr)
        run.extensions.append(extension(cfg, run.planned, state.step, parts.schedule(state.step),
                                        parts.derived.steps_per_epoch))
        if run.is_main:
            (run_dir / "config.json").write_text(json.dumps({**to_dict(run.saved), "extended": run.extensions},
                                                            indent=2) + "\n")
        accelerator.print(describe_extension(run.extensions[-1], cfg, run.planned))
    elif cfg.extend_lr is not None:
        accelerator.print(f"warning: --extend-lr {cfg.extend_lr:g} is not used: the resume does not extend the "
                          f"run (its plan is {run.planned} epochs; pass --epochs above it to extend)")
    if run.is_main:  # a torn last line (the disk filled, the machine died mid-write) goes with the rest
        truncate_jsonl(run_dir / "metrics.jsonl", "epoch", state.epoch)
        truncate_jsonl(run_dir / "steps.jsonl", "step", state.step)
    accelerator.print(f"resumed from {resume_dir} at epoch {state.epoch}, step {state.step}"
                      + (f" ({state.step_in_epoch} steps into epoch {state.epoch + 1})" if state.step_in_epoch
                         else ""))
    return state


def header(run: Run, parts: Parts) -> str:
    """The run's first line: its size, data, batch plan, precision, engine and device."""
    cfg, derived, data = run.cfg, parts.derived, parts.data
    return (f"vitdist: {derived.num_params:,} parameters; {data.source}: {derived.num_train} train / "
            f"{derived.num_val} val / {derived.num_test} test; {run.world_size} process(es) x micro-batch "
            f"{run.micro_batch} x {run.accum} accumulation = global batch {cfg.batch.global_batch_size}; "
            f"{derived.steps_per_epoch} steps/epoch; precision {cfg.precision}"
            f"{' (auto)' * (run.asked_precision == 'auto')} ({parts.input_dtype} weights); "
            f"{engine_name(run.accelerator, run.zero_stage)}; AdamW {'fused' if parts.fused else 'foreach'}; "
            f"{'compiled' if cfg.compile else 'eager'}; "
            + (f"EMA {cfg.ema.decay:g}{' (decay warmup)' * cfg.ema.warmup}; " if parts.ema is not None else "")
            + (f"skipped {len(data.skipped)} unreadable images ({run.run_dir / SKIPPED_FILE}); "
               if data.skipped else "")
            + (f"left out {len(data.left_out)} non-image file(s) (first: {data.left_out[0]}); "
               if data.left_out else "") +
            f"device {run.accelerator.device}")


def finish(run: Run, parts: Parts, state: TrainState, stopped_early: bool) -> dict:
    """The best checkpoint: test it once, export its weights (model.safetensors), write results.json."""
    cfg, accelerator, run_dir, ema = run.cfg, run.accelerator, run.run_dir, parts.ema
    best_dir = checkpoint_dir(run_dir, state.best_epoch)
    accelerator.load_state(str(best_dir))
    results = {"best_epoch": state.best_epoch, "best_val_acc": state.best_val_acc, "weights": state.best_weights,
               "epochs_run": state.epoch, "steps": state.step, "stopped_early": stopped_early,
               "num_params": parts.derived.num_params}
    best = ema.module if state.best_weights == "ema" else parts.model
    scores = None
    if parts.test_dl is not None and cfg.test_at_end:  # with top-5, per-class accuracy and the confusion matrix
        with accelerator.autocast():
            scores = score_split(best, parts.test_dl, parts.augment.normalize, accelerator, parts.data.num_classes)
        results["test_loss"], results["test_acc"] = scores["loss"], scores["accuracy"]
    if state.best_weights == "ema":  # the average is a plain module on every rank, whatever the engine
        if run.is_main:
            save_safetensors(ema.module.state_dict(), run_dir / "model.safetensors", metadata={"format": "pt"})
    else:
        accelerator.save_model(parts.model, str(run_dir))  # run_dir/model.safetensors: the best weights, unwrapped
        if run.is_main:
            make_readable(run_dir / "model.safetensors")  # safetensors writes 0600
    if run.is_main:
        write_atomically(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        about = {"run_dir": str(run_dir), "weights_file": str(run_dir / "model.safetensors"),
                 "checkpoint": best_dir.name, "epoch": state.best_epoch,
                 "step": state.best_epoch * parts.derived.steps_per_epoch, "data": parts.data.source,
                 "precision": cfg.precision}
        if scores is not None:  # what `vitdist eval RUN` would write
            write_eval(run_dir, "test", "best", scores, parts.data.classes, about)
            if cfg.log.wandb:
                log_to_wandb(accelerator.get_tracker("wandb", unwrap=True), "test", scores, parts.data.classes,
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


def engine_name(accelerator: Accelerator, zero_stage: int) -> str:
    """What runs the model, as the header line says it: DeepSpeed ZeRO-N, DDP, or one process."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        moved = offloaded(plugin.deepspeed_config.get("zero_optimization", {}))
        return f"DeepSpeed ZeRO-{zero_stage}" + (f" ({' and '.join(moved)} offloaded)" if moved else "")
    return "DDP" if accelerator.num_processes > 1 else "one process"


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
