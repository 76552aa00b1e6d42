"""Plant known bugs, one at a time, in a temporary copy of the repository, and check that the tests named for
each one fail. A test that passes with its bug planted proves less than its name says.

Not part of the default test run (pytest collects test_*.py only). Rerun it after a refactor of what the
tests guard (the step, the data path, resume, the schedule):

    .venv/bin/python tests/mutants.py                  # every mutant; exit 1 if any is missed
    .venv/bin/python tests/mutants.py resume-skipped lr-no-decay
    .venv/bin/python tests/mutants.py --list
    .venv/bin/python tests/mutants.py --clean          # first, the named tests pass on the unchanged copy

Each mutant is one exact text replacement; one that no longer applies (the code moved) is reported as STALE,
so the list cannot quietly rot. tests/README.md lists the same promises with their tests.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
W = 38  # the name column
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache",
                                     "*.egg-info", ".whl", ".gpu")


@dataclass(frozen=True)
class Mutant:
    name: str
    promise: str  # what the README promises, which this bug breaks
    path: str  # the file, relative to the repository
    old: str  # exact text, found exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids; at least one must fail


RUN = "vitdist/train/run.py"
EPOCH = "vitdist/train/epoch.py"
STEP = "vitdist/train/step.py"
FOLDER = "vitdist/train/folder.py"
IMAGES = "vitdist/data/images.py"
CHECKS = "vitdist/checklist/checks.py"
TRACKERS = "vitdist/train/trackers.py"
T_TRAIN = "tests/test_train.py"
SEEDS_TEST = ("tests/test_tune.py::test_a_change_that_helps_on_every_seed_is_kept_and_one_that_helps_on_one_seed_only"
              "_is_reverted")
T_DIST = "tests/test_distributed.py"
T_DS = "tests/test_deepspeed.py"
T_NEW = "tests/test_new_user.py"
T_AF = "tests/test_after_training_faults.py"
T_TI = "tests/test_trial_interrupts.py"
T_CF = "tests/test_config_fields.py"
T_EN = "tests/test_tune_engine.py"
STUDY = "vitdist/checklist/study.py"
WORKER = "vitdist/checklist/worker.py"
NUISANCE = "vitdist/checklist/nuisance.py"
BEATS_TEST = "test_a_training_is_retried_after_three_silent_beats_and_given_up_after_three_retries"
PACK_TEST = "test_trials_per_gpu_packs_k_trainings_on_each_gpu_and_a_cpu_splits_its_cores"
# run_one as it was: the prune's request cleared inside the watch, before its thread's last look
LATE_PRUNE_FIXED = '    try:\n        with watch:\n            try:\n                if frozen is not None:\n                    record_point(study, frozen)\n                results, error = train_fn(cfg, resume=True)  # a retried training continues from its checkpoint\n            except Interrupted:\n                if not share(watch.pruned is not None):\n                    give_back(study, trial_id, "interrupted")\n                    raise\n            except BaseException as e:\n                if study is not None:\n                    if isinstance(e, Exception):\n                        study.storage.set_trial_user_attr(trial_id, "crash", f"{type(e).__name__}: {e}")\n                        study.study.tell(trial, state=optuna.trial.TrialState.FAIL)\n                    else:  # KeyboardInterrupt, SystemExit: the worker stops, the training waits for the next\n                        give_back(study, trial_id, type(e).__name__)\n                raise\n    finally:  # once the watch has stopped: a look it took as the training ended may have asked a prune too late\n        if STOP.signum == PRUNE_SIGNAL:\n            STOP.signum = None  # the prune\'s request, not a signal: the next training starts unasked\n'  # noqa: E501
LATE_PRUNE_BUG = '    with watch:\n        try:\n            if frozen is not None:\n                record_point(study, frozen)\n            results, error = train_fn(cfg, resume=True)  # a retried training continues from its checkpoint\n        except Interrupted:\n            if not share(watch.pruned is not None):\n                give_back(study, trial_id, "interrupted")\n                raise\n        except BaseException as e:\n            if study is not None:\n                if isinstance(e, Exception):\n                    study.storage.set_trial_user_attr(trial_id, "crash", f"{type(e).__name__}: {e}")\n                    study.study.tell(trial, state=optuna.trial.TrialState.FAIL)\n                else:  # KeyboardInterrupt, SystemExit: the worker stops, the training waits for the next\n                    give_back(study, trial_id, type(e).__name__)\n            raise\n        finally:\n            if STOP.signum == PRUNE_SIGNAL:\n                STOP.signum = None  # the prune\'s request, not a signal: the next training starts unasked\n'  # noqa: E501
CRASH_TEST = "test_a_training_that_crashes_in_a_worker_stops_the_tune_with_its_error"
PRUNE_TEST = "test_the_pruner_stops_a_bad_point_at_the_first_rung_against_its_own_search_only"
NUISANCE_TEST = "tests/test_tune.py::test_a_change_that_needs_another_rate_is_judged_at_its_own[4]"
T_IN = "tests/test_inputs.py"
T_W = "tests/test_wiring.py"
T_FIG = "tests/test_figures.py"
FIG_EPOCH = f"{T_FIG}::test_epoch_figures_are_recomputed_from_the_steps_with_two_ranks_and_accumulation"
FIG_EMA = f"{T_FIG}::test_the_average_on_two_ranks_with_accumulation_is_the_reference_ema"
FIG_EVAL = f"{T_FIG}::test_eval_scores_are_scikit_learns_on_the_models_own_logits"
FL = "tests/test_flops.py::test_forward_flops_match_the_flop_counter[tiny-patch8]"
FLB = "tests/test_flops.py::test_forward_and_backward_flops_match_the_flop_counter[tiny-patch8]"
RESUME_EVERY = "tests/test_record.py::test_a_resume_refuses_every_field_it_may_not_change_naming_it_and_takes_the_rest"

MUTANTS = [
    # 1. exact resume
    Mutant("resume-skipped", "exact resume", RUN,
           "    resume_dir = find_resume(cfg.resume, run_dir)\n",
           "    resume_dir = find_resume(cfg.resume, run_dir)\n    resume_dir = None\n",
           (f"{T_TRAIN}::test_exact_resume_matches_an_uninterrupted_run",)),
    # 2. the best checkpoint is what is tested and exported
    Mutant("best-not-reloaded", "best checkpoint exported", RUN,
           "    accelerator.load_state(str(best_dir))\n", "",
           (f"{T_TRAIN}::test_the_best_epoch_not_the_last_is_tested_and_exported",)),
    # 3. the schedule
    Mutant("lr-no-decay", "warmup + cosine schedule", "vitdist/optim.py",
           "    decay_steps = max(total_steps - warmup_steps, 1)\n",
           "    return cfg.lr\n    decay_steps = max(total_steps - warmup_steps, 1)\n",
           (f"{T_TRAIN}::test_every_step_follows_warmup_then_cosine",)),
    Mutant("lr-warmup-off-by-one", "warmup + cosine schedule", "vitdist/optim.py",
           "return cfg.lr * (step + 1) / warmup_steps", "return cfg.lr * step / warmup_steps",
           (f"{T_TRAIN}::test_every_step_follows_warmup_then_cosine",)),
    # 4. 1 process == 2 processes, step by step
    Mutant("loss-not-reduced", "1 vs 2 processes", STEP,
           'stats = accelerator.reduce(torch.stack([step_loss, grad_norm, flag]), "mean")',
           "stats = torch.stack([step_loss, grad_norm, flag])",
           (f"{T_DIST}::test_two_processes_match_one",)),
    # 5. a non-finite loss on one rank stops every rank, exit 1 with the advice
    Mutant("nan-on-one-rank-not-shared", "NaN stop", STEP,
           'stats = accelerator.reduce(torch.stack([step_loss, grad_norm, flag]), "mean")',
           "stats = torch.stack([step_loss, grad_norm, flag])",
           (f"{T_DIST}::test_a_nan_on_one_rank_stops_both_with_exit_1_and_advice",)),
    Mutant("diverged-not-caught", "NaN stop", "vitdist/train/command.py",
           "        except Diverged as e:\n", "        except ZeroDivisionError as e:\n",
           (f"{T_DIST}::test_a_nan_on_one_rank_stops_both_with_exit_1_and_advice",)),
    Mutant("nan-not-checked", "NaN stop", STEP,
           '    bad = next((row for row in rows if not', '    bad = next((row for row in [] if not',  # never stops
           (f"{T_TRAIN}::test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint",
            f"{T_DIST}::test_a_nan_on_one_rank_stops_both_with_exit_1_and_advice",
            f"{T_DS}::test_a_nan_on_one_rank_stops_both_under_zero2")),
    # issue 9: no host sync inside a step
    Mutant("read-every-step", "no host read inside a step", EPOCH,
           "        if len(pending) == cfg.log.every_steps or stop", "        if pending or stop",
           (f"{T_TRAIN}::test_host_reads_do_not_grow_with_the_steps_of_an_epoch",)),
    Mutant("non-finite-step-applied", "NaN stop (weights kept clean)", STEP,
           "    skip_on_device = cfg.precision", "    skip_on_device = False and cfg.precision",
           (f"{T_TRAIN}::test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint",)),
    # issue 9: the training split on the device
    Mutant("device-batches-rank-0-share-everywhere", "device batches = the sharded loader's", "vitdist/data/batches.py",
           "view(self.sampler.steps, self.world_size, -1)[:, self.rank]",
           "view(self.sampler.steps, self.world_size, -1)[:, 0]",
           ("tests/test_data.py::test_device_batches_are_the_sharded_loaders_batches",)),
    Mutant("decode-draws-from-the-global-rng", "the first run = its reruns", "vitdist/data/cache.py",
           "num_workers=min(4, os.cpu_count() or 1), generator=own_generator())",
           "num_workers=min(4, os.cpu_count() or 1))",
           ("tests/test_data.py::test_training_from_files_and_from_the_device_take_the_same_steps",)),
    # issue 9: --precision auto
    Mutant("auto-never-bf16", "--precision auto", "vitdist/precision.py",
           'return "bf16" if bf16_gpu else "tf32" if cuda else "no"', 'return "tf32" if cuda else "no"',
           ("tests/test_precision.py::test_auto_is_fp32_on_a_cpu_bf16_on_a_new_gpu_and_tf32_on_an_old_one",)),
    Mutant("auto-not-recorded", "--precision auto", RUN,
           "    asked, cfg = cfg.precision, replace(cfg, precision=resolve_precision(cfg.precision, process_device()))",
           "    asked = cfg.precision",
           ("tests/test_precision.py::test_the_run_says_and_records_what_auto_chose",)),
    # issue 9: --compile, one TensorBoard flush per read
    Mutant("compile-flag-ignored", "--compile", RUN,
           "        model.compile()  # in place", "        pass  # in place",
           ("tests/test_compile.py::test_compiled_steps_follow_eager_and_export_plain_weights",)),
    Mutant("compile-wraps-the-model", "--compile: plain names", RUN,
           "        model.compile()  # in place", "        model = torch.compile(model)  # in place",
           ("tests/test_compile.py::test_compiled_steps_follow_eager_and_export_plain_weights",)),
    Mutant("tensorboard-flushed-every-step", "one tracker write per read", TRACKERS,
           "                    tracker.writer.add_scalar(name, value, global_step=step)\n",
           "                    tracker.writer.add_scalar(name, value, global_step=step)\n"
           "                tracker.writer.flush()\n",
           ("tests/test_logging.py::test_tensorboard_is_flushed_once_per_read_not_once_per_step",)),
    # issue 10: every fault answered
    Mutant("decode-cache-keyed-on-the-last-file", "a cache that cannot go stale", "vitdist/data/cache.py",
           "    for path, label in files.samples:\n        st = os.stat(path)",
           "    for path, label in files.samples[-1:]:\n        st = os.stat(path)",
           ("tests/test_faults.py::test_a_changed_added_or_removed_file_decodes_afresh",)),
    Mutant("unreadable-image-decoded-as-black", "unreadable images: one line", "vitdist/data/sources.py",
           "        if bad:\n", "        if False:\n",
           ("tests/test_faults.py::test_an_unreadable_image_is_one_line_naming_it",
            "tests/test_faults.py::test_skip_corrupt_leaves_them_out_and_lists_them")),
    Mutant("worker-traceback-printed", "unreadable images: one line", "vitdist/console.py",
           '        if "\\nOriginal Traceback" in message:', "        if False:",
           ("tests/test_faults.py::test_sets_decoded_per_batch_report_and_skip_unreadable_images_too",)),
    Mutant("streamed-set-never-checked", "unreadable images: skipped", "vitdist/data/sources.py",
           "        elif cfg.skip_corrupt:", "        elif False:",
           ("tests/test_faults.py::test_sets_decoded_per_batch_report_and_skip_unreadable_images_too",)),
    Mutant("run-dir-checked-after-the-data", "the run folder checked first", RUN,
           "    check_run_dir(run_dir, checkpoint_bytes(cfg))  # before any data is read\n", "",
           ("tests/test_faults.py::test_a_run_folder_that_cannot_hold_the_run_is_one_line",)),
    Mutant("deepspeed-warns-on-import", "no stray lines", RUN,
           '        os.environ.setdefault("DS_ACCELERATOR", "cpu")', "        pass",
           ("tests/test_faults.py::test_no_deepspeed_line_in_a_single_process_run",)),
    Mutant("fp16-overflow-averaged-in", "fp16 skipped steps", STEP,
           'if math.isfinite(row["grad_norm"])]', "]",
           ("tests/test_faults.py::test_fp16_overflow_steps_are_counted_not_averaged",)),
    Mutant("fp16-overflow-read-as-divergence", "fp16 skipped steps", "vitdist/checklist/diagnose.py",
           '    fp16 = c["precision"] == "fp16"\n', "    fp16 = False\n",
           ("tests/test_faults.py::test_diagnose_reads_fp16_overflow_as_overflow",)),
    Mutant("config-rewritten-on-resume", "a run folder is a record", RUN,
           "        if run.saved is None or not (run_dir / \"config.json\").exists():",
           "        if True:",
           ("tests/test_record.py::test_resume_alone_continues_the_run_as_its_config_says",
            "tests/test_record.py::test_extending_a_finished_run_continues_the_rate_without_a_jump")),
    Mutant("resume-flags-not-checked", "a run folder is a record", RUN,
           "    if saved is not None:\n        check_resume(", "    if False:\n        check_resume(",
           ("tests/test_record.py::test_a_resume_that_would_change_the_run_is_refused_and_touches_nothing",)),
    Mutant("extension-jumps-the-rate", "extending a run", RUN,  # the cosine recomputed over the new length
           "    first_epochs = run.saved.epochs if run.saved is not None else cfg.epochs",
           "    first_epochs = cfg.epochs; run.extensions = []",
           ("tests/test_record.py::test_extending_a_finished_run_continues_the_rate_without_a_jump",)),
    Mutant("signal-ignored", "Ctrl-C / SIGTERM checkpoint and stop", EPOCH,
           "        stop = STOP.requested if run.world_size == 1 else stop\n", "",
           ("tests/test_interrupts.py::test_a_signal_checkpoints_the_step_and_the_resume_is_exact",)),
    Mutant("mid-epoch-resume-restarts-the-epoch", "exact resume inside an epoch", STEP,
           "    if not done:\n        return train_dl", "    if True:\n        return train_dl",
           ("tests/test_interrupts.py::test_checkpoints_every_k_steps_resume_mid_epoch_after_a_kill",)),
    Mutant("mid-epoch-sums-dropped", "exact resume inside an epoch", STEP,
           "    if not saved:\n        return [0.0] * 3", "    if True:\n        return [0.0] * 3",
           ("tests/test_interrupts.py::test_checkpoints_every_k_steps_resume_mid_epoch_after_a_kill",)),
    Mutant("stop-flag-not-shared", "a signal on one rank stops all", STEP,
           "torch.full((), float(stop), device=accelerator.device)",
           "torch.full((), 0.0, device=accelerator.device)",
           ("tests/test_interrupts.py::test_a_signal_on_one_rank_stops_both_at_the_same_step",)),
    Mutant("no-bar-on-a-zero-size-terminal", "progress you can see", "vitdist/train/progress.py",
           "leave=False, ncols=size.columns,\n                            nrows=size.lines, ",
           "leave=False,\n                            ",  # tqdm's own size query
           ("tests/test_progress.py::test_a_terminal_gets_a_live_bar_and_the_header_first",)),
    Mutant("slurm-never-requeues", "SLURM preemption resumes by itself", "launch/slurm.sbatch",
           '    scontrol requeue "$SLURM_JOB_ID"\n', "",
           ("tests/test_autobatch.py::test_slurm_passes_sigterm_on_and_requeues_a_job_that_resumes",)),
    Mutant("run-folder-not-checked-across-ranks", "several nodes share one run folder", RUN,
           "    check_shared_run_dir(run_dir, accelerator)\n", "",
           ("tests/test_interrupts.py::test_ranks_that_see_different_run_folders_stop_with_one_line",)),
    Mutant("elastic-restart-reads-stale-keys", "elastic restarts continue the run", "vitdist/train/processes.py",
           "    if world_size > 1:\n        join_restarted_group()\n", "",
           ("tests/test_interrupts.py::test_an_elastic_launch_restarts_a_killed_rank_and_ends_bit_identical",)),
    # issues 11 and 12: after training, EMA, tune
    Mutant("eval-counts-padded-samples", "eval counts every sample once", "vitdist/train/scores.py",
           "accelerator.gather_for_metrics((loss, top, y))", "accelerator.gather((loss, top, y))",
           ("tests/test_after_training.py::test_eval_on_two_processes_counts_every_sample_once",)),
    Mutant("predict-resizes-otherwise", "predict preprocesses as the run evaluated", "vitdist/after/load.py",
           "        return decode(image, self.img_size)",
           "        return decode(image.resize((self.img_size, self.img_size)), self.img_size)",
           ("tests/test_after_training.py::test_predict_preprocesses_as_the_run_evaluated",)),
    Mutant("timm-export-stock-eps", "the timm export is exact", "vitdist/after/timm.py",
           '"norm_layer_eps": eps.pop(),', '"norm_layer_eps": 1e-6 + 0 * eps.pop(),',
           ("tests/test_export.py",)),
    Mutant("ema-not-checkpointed", "exact resume with an EMA", RUN,
           "        accelerator.register_for_checkpointing(ema)\n", "",
           ("tests/test_ema.py::test_a_run_with_an_average_resumes_exactly_mid_epoch",)),
    Mutant("ema-step-count-off-by-one", "the EMA is the reference EMA", EPOCH,
           "parts.ema.update(parts.averaged, step=state.step)",
           "parts.ema.update(parts.averaged, step=state.step + 1)",
           ("tests/test_ema.py::test_the_average_is_the_reference_ema_of_the_weights_each_step_left",)),
    Mutant("tune-keeps-noise", "tune keeps only what beats the noise", "vitdist/checklist/tune_rule.py",
           "    if gain > margin:\n", "    if gain > 0:\n",
           ("tests/test_tune.py::test_a_change_that_helps_is_kept_and_one_that_hurts_or_is_noise_is_reverted",)),
    Mutant("tune-resume-reruns-trials", "a resumed tune reruns nothing finished", "vitdist/checklist/study.py",
           '        if t is not None and (t.state != TrialState.FAIL or "error" in t.user_attrs):',
           "        if False:",
           ("tests/test_tune.py::test_resume_reads_finished_trials_back",
            "tests/test_tune_engine.py::test_a_killed_tune_resumed_reruns_nothing_finished")),
    # 6. every rank's RNG is restored on resume
    Mutant("rng-reseeded-on-resume", "exact resume (2 processes)", RUN,
           "    accelerator.load_state(str(resume_dir))  # model, optimizer, scaler, every rank's RNG\n",
           "    accelerator.load_state(str(resume_dir))  # model, optimizer, scaler, every rank's RNG\n"
           "    set_seed(cfg.seed, device_specific=True)\n",
           (f"{T_DIST}::test_two_processes_killed_and_resumed_end_bit_identical",)),
    Mutant("rng-of-rank-0-everywhere", "exact resume (2 processes)", RUN,
           "    accelerator.load_state(str(resume_dir))  # model, optimizer, scaler, every rank's RNG\n",
           "    accelerator.load_state(str(resume_dir))  # model, optimizer, scaler, every rank's RNG\n"
           "    torch.set_rng_state(torch.load(resume_dir / 'random_states_0.pkl', weights_only=False)"
           "['torch_manual_seed'])\n",
           (f"{T_DIST}::test_two_processes_killed_and_resumed_end_bit_identical",)),
    # the README's other promises
    Mutant("zero-clipping-off", "ZeRO = DDP", RUN,
           "gradient_clipping=cfg.optim.max_grad_norm)", "gradient_clipping=0.0)",
           (f"{T_DS}::test_zero_matches_ddp",)),
    Mutant("user-error-traceback", "one-line errors", "vitdist/console.py",
           "        sys.exit(2)\n", "        raise\n",
           ("tests/test_cli.py::test_bad_flags_exit_2_with_one_line",
            "tests/test_cli.py::test_end_to_end_bad_flag_has_no_traceback")),
    Mutant("epoch-metrics-not-logged", "trackers", EPOCH,
           "    accelerator.log({k: v for k, v in metrics.items() if v is not None}, step=state.step)\n", "",
           (f"{T_TRAIN}::test_wandb_offline_logs_every_metric",)),
    Mutant("accumulation-steps-every-micro-batch", "accumulation = one big batch", STEP,
           "    accelerator.gradient_accumulation_steps = len(chunks)\n",
           "    accelerator.gradient_accumulation_steps = 1\n",
           (f"{T_TRAIN}::test_accumulation_equals_the_full_batch",)),
    Mutant("early-stop-one-epoch-late", "early stopping", EPOCH,
           "state.bad_epochs >= cfg.early_stop_patience", "state.bad_epochs > cfg.early_stop_patience",
           (f"{T_TRAIN}::test_early_stopping",)),
    # 7. launch/deepspeed.sh runs what it says
    Mutant("deepspeed-sh-wrong-stage-json", "launch/deepspeed.sh", "configs/ds_zero2.json",
           '"stage": 2,', '"stage": 1,',
           (f"{T_DS}::test_launch_deepspeed_sh_runs_for_real",)),
    Mutant("deepspeed-sh-drops-flags", "launch/deepspeed.sh", "launch/deepspeed.sh",
           '-m vitdist.train "$@")', "-m vitdist.train)",
           (f"{T_DS}::test_launch_deepspeed_sh_runs_for_real",)),
    # 8. narrow tests
    Mutant("autobatch-plan-ignores-margin", "autobatch report", "vitdist/scale/autobatch.py",
           "    micro, accum = plan_batches(global_batch, safe, world, flag)\n",
           "    micro, accum = plan_batches(global_batch, meas.largest, world, flag)\n",
           ("tests/test_autobatch.py::test_cli_report_on_a_fake_gpu",)),
    Mutant("recommend-small-dropout-off-checklist", "the checklist's tables", "vitdist/checklist/recommend.py",
           '"small (< 10K)": ((1e-4, 5e-4), (1e-3, 5e-3), (0.3, 0.5)),',
           '"small (< 10K)": ((1e-4, 5e-4), (1e-3, 5e-3), (0.2, 0.5)),',
           ("tests/test_recommend.py::test_the_data_size_table_is_the_checklists",
            "tests/test_recommend.py::test_starting_values_lie_in_the_band")),
    Mutant("range-suggestion-one-step-late", "lr range test", "vitdist/checklist/lr_range.py",
           "steep = lr_ok[lo + min(range(len(slopes)), key=slopes.__getitem__)]",
           "steep = lr_ok[lo + 1 + min(range(len(slopes)), key=slopes.__getitem__)]",
           ("tests/test_sweep.py::test_sweep_range_end_to_end",)),
    Mutant("mix-targets-one-hot", "Mixup/CutMix", "vitdist/data/augment.py",
           "            x, y = self.mix(x, y)\n", "            x, y = x, F.one_hot(y, 10).float()\n",
           ("tests/test_data.py::test_augment_normalizes_and_mixes",
            "tests/test_data.py::test_mixup_blends_each_image_with_its_neighbour",
            "tests/test_data.py::test_cutmix_pastes_one_box_from_the_neighbour")),
    Mutant("launcher-unquoted-array", "launch/ is shellcheck-clean", "launch/single_gpu.sh",
           'exec "${cmd[@]}"', "exec ${cmd[@]}",
           ("tests/test_autobatch.py::test_launchers_are_shellcheck_clean",)),
    # 9. untested features
    Mutant("tensorboard-steps-at-epoch-end", "TensorBoard logging", TRACKERS,
           'for k in ("loss", "lr", "grad_norm")}, row["step"]) for row in rows]',
           'for k in ("loss", "lr", "grad_norm")}, rows[-1]["step"]) for row in rows]',  # all at the read's last step
           ("tests/test_logging.py::test_tensorboard_holds_every_epoch_metric_and_every_step",)),
    Mutant("pos-embed-and-cls-token-decayed", "weight-decay groups", "vitdist/optim.py",
           "(no_decay if p.ndim <= 1 or name in skip else decay)", "(no_decay if p.ndim <= 1 else decay)",
           ("tests/test_optim.py::test_weight_decay_groups_by_name",
            "tests/test_optim.py::test_one_step_on_zero_gradients_shrinks_only_the_decayed")),
    Mutant("color-jitter-one-draw-per-batch", "--data.color-jitter", "vitdist/data/augment.py",  # as v2.ColorJitter(x)
           "    n = x.shape[0]  # one draw per image\n", "    n = 1  # one draw per image\n",
           ("tests/test_data.py::test_color_jitter_draws_factors_per_image_and_keeps_the_normalized_range",
            "tests/test_data.py::test_color_jitter_draws_torchvisions_ranges_and_every_order",
            "tests/test_data.py::test_batched_color_jitter_has_torchvisions_distribution")),
    Mutant("color-jitter-hue-not-wrapped", "--data.color-jitter", "vitdist/data/augment.py",  # wrong near red only
           "    h6 = (hue - hue.floor()) * 6  # mod 1", "    h6 = hue * 6  # mod 1",
           ("tests/test_data.py::test_batched_color_jitter_is_torchvisions_per_image",)),
    # issue 9: FLOPs
    Mutant("flops-attention-matmuls-left-out", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "    attention = 2 * 2 * tokens * tokens * d  #", "    attention = 0  #",
           (FL,)),
    Mutant("gpu-name-matched-by-prefix", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "if re.fullmatch(pattern, name):", "if re.match(pattern, name):",  # RTX 4090 Laptop GPU -> RTX 4090
           ("tests/test_flops.py::test_no_peak_for_a_cpu_or_an_unknown_gpu",)),
    # issue 16: what a new user broke
    Mutant("run-folder-not-locked", "one run per folder", RUN,
           '    hold.enter_context(holding(run_dir, "--run-dir", accelerator))', "    None",
           (f"{T_NEW}::test_a_second_run_on_a_held_folder_stops_in_one_line_and_a_killed_holder_frees_it",)),
    Mutant("closed-stdout-stops-the-run", "a closed stdout never stops a run", "vitdist/console.py",
           "            self._reader_left()\n            return len(text)\n", "            raise\n",
           (f"{T_NEW}::test_a_run_piped_into_head_trains_to_the_end",)),
    Mutant("help-pipe-guard-in-the-cli-only", "--help | head, every form", "vitdist/console.py",
           "    from .config import UserError\n\n    survive_closed_output()\n",
           "    from .config import UserError\n\n",
           ("tests/test_faults.py::test_help_into_a_closed_pipe_ends_quietly",)),
    Mutant("trial-restarts-from-zero", "an interrupted trial continues mid-run", "vitdist/checklist/trials.py",
           '        trial = replace(trial, resume="auto")\n', "        pass\n",
           (f"{T_TI}::test_sweep_lr_stopped_inside_a_trial_continues_it_and_ends_as_an_unbroken_sweep",
            f"{T_TI}::test_tune_stopped_inside_a_trial_continues_it_on_resume")),
    Mutant("trial-signal-traceback", "sweeps and tune stop as train does", "vitdist/checklist/trials.py",
           "    except Interrupted as e:\n        say(stopped_line(",
           "    except ZeroDivisionError as e:\n        say(stopped_line(",
           (f"{T_TI}::test_sweep_grid_stopped_by_sigterm_continues_the_trial",)),
    Mutant("range-ignores-signals", "sweeps and tune stop as train does", "vitdist/checklist/lr_range.py",
           "            elif asked > 0 or (world_size == 1 and STOP.requested):", "            elif False:",
           (f"{T_TI}::test_sweep_range_stopped_by_sigint_keeps_the_curve_so_far",)),
    Mutant("sweep-folder-not-checked", "a sweep folder of an earlier sweep is refused", "vitdist/checklist/trials.py",
           "        if found and cfg.resume is None:\n", "        if False:\n",
           (f"{T_TI}::test_a_sweep_folder_holding_an_earlier_sweep_is_refused_or_cleared_with_overwrite",)),
    Mutant("torn-line-breaks-resume", "a full disk: resume past a torn line", FOLDER,
           "        rows = [row for row in read_jsonl(path) if row[key] <= last]\n",
           "        rows = [json.loads(line) for line in path.read_text().splitlines()]\n"
           "        rows = [row for row in rows if row[key] <= last]\n",
           (f"{T_NEW}::test_a_full_disk_in_the_log_writer_stops_in_one_line_and_the_resume_reads_past_the_torn_line",)),
    Mutant("disk-full-traceback", "a full disk: one line", "vitdist/train/command.py",
           "        except Exception as e:\n            if not disk_full(e):",
           "        except ZeroDivisionError as e:\n            if not disk_full(e):",
           (f"{T_NEW}::test_a_full_disk_in_the_checkpoint_writer_names_the_last_complete_checkpoint",)),
    Mutant("non-finite-numbers-accepted", "every field validated", "vitdist/config.py",
           "isinstance(value, bool) and math.isfinite(value)", "isinstance(value, bool)",
           (f"{T_CF}::test_every_bad_value_is_refused_where_the_config_is_built_naming_its_flag",
            f"{T_CF}::test_the_issues_flags_are_refused_on_the_command_line")),
    Mutant("std-zero-accepted", "every field validated", "vitdist/config.py",
           "_require(all(v > 0 for v in self.std)", "_require(all(v >= 0 for v in self.std)",
           (f"{T_CF}::test_the_issues_flags_are_refused_on_the_command_line",)),
    Mutant("num-classes-unchecked", "every field validated", RUN,
           "    if cfg.model.num_classes is not None and cfg.model.num_classes != data.num_classes:",
           "    if False:",
           (f"{T_NEW}::test_a_num_classes_other_than_the_datas_is_refused",)),
    Mutant("wandb-login-unchecked", "W&B without a login: one line", RUN,
           "    if cfg.log.wandb:\n        check_wandb_ready()  # before anything is written\n", "",
           (f"{T_NEW}::test_wandb_without_a_login_or_offline_mode_is_one_line_before_anything_is_written",)),
    Mutant("config-json-traceback", "a damaged config.json: one line", "vitdist/train/record.py",
           "    except json.JSONDecodeError as e:\n        why =", "    except ZeroDivisionError as e:\n        why =",
           (f"{T_NEW}::test_a_damaged_config_on_resume_is_one_line",)),
    Mutant("data-root-checked-when-read", "moved data: a run is read without it", "vitdist/config.py",
           '        _in_range(self.val_fraction, 0.0, 1.0, "--data.val-fraction")\n',
           '        self.check_root()\n        _in_range(self.val_fraction, 0.0, 1.0, "--data.val-fraction")\n',
           (f"{T_NEW}::test_a_run_whose_data_moved_is_read_and_resumed_with_the_new_root",)),
    Mutant("extend-lr-ignored", "--extend-lr warms up again", "vitdist/optim.py",
           '            if "peak_lr" in ext:', "            if False:",
           ("tests/test_record.py::test_extending_a_finished_run_warns_that_min_lr_does_nothing_and_extend_lr_warms_"
            "up_again",)),
    Mutant("trained-weights-0600", "weights files readable as any other", RUN,
           '            make_readable(run_dir / "model.safetensors")  # safetensors writes 0600\n',
           "            pass\n",
           (f"{T_NEW}::test_weights_files_have_the_users_usual_mode",
            f"{T_AF}::test_a_trained_runs_weights_have_the_users_file_mode")),
    Mutant("read-only-run-not-checked", "a read-only run: refused before the work", "vitdist/files.py",
           "    existing = next(p for p in [path, *path.parents] if p.exists())\n",
           "    return\n    existing = next(p for p in [path, *path.parents] if p.exists())\n",
           (f"{T_AF}::test_a_read_only_run_is_refused_before_the_work_and_eval_writes_elsewhere",)),
    Mutant("export-replaces-a-file-unasked", "an export replaces nothing unasked", "vitdist/after/export.py",
           "    elif fmt not in FOLDER_FORMATS and path.exists() and not overwrite:\n",
           "    elif fmt not in FOLDER_FORMATS and path.exists() and not overwrite and False:\n",
           (f"{T_AF}::test_an_export_replaces_nothing_without_overwrite_and_deletes_only_its_own",)),
    Mutant("export-into-a-folder-of-other-files", "an export replaces nothing unasked", "vitdist/after/export.py",
           "        foreign = [n for n in held if n not in FOLDER_FILES[fmt]]\n", "        foreign = []\n",
           (f"{T_AF}::test_an_export_replaces_nothing_without_overwrite_and_deletes_only_its_own",)),
    Mutant("best-of-a-run-without-an-epoch", "no best before a finished epoch", "vitdist/after/load.py",
           '        if state["best_epoch"] < 1:  # a mid-epoch checkpoint', "        if False:  #",
           (f"{T_AF}::test_a_run_without_a_finished_epoch_has_no_best_and_the_scored_checkpoint_is_named",)),
    Mutant("eval-record-names-no-checkpoint", "the scored checkpoint named", "vitdist/after/evaluate.py",
           '"checkpoint": info.checkpoint,', '"checkpoint": None,',
           (f"{T_AF}::test_a_run_without_a_finished_epoch_has_no_best_and_the_scored_checkpoint_is_named",
            f"{T_AF}::test_a_live_runs_best_is_its_average_where_the_average_won")),
    Mutant("live-best-raw-not-average", "a live run's best is its average where that won", "vitdist/after/load.py",
           '        averaged = state.get("best_weights") == "ema"', "        averaged = False",
           (f"{T_AF}::test_a_live_runs_best_is_its_average_where_the_average_won",)),
    Mutant("predict-nothing-read-exits-0", "predict with nothing readable exits 1", "vitdist/after/predict.py",
           '    return 1 if all("error" in r for r in rows) else 0\n', "    return 0\n",
           (f"{T_AF}::test_predict_exits_1_when_no_input_could_be_read",)),
    Mutant("card-validation-generic", "the model card names the validation split used", "vitdist/after/card.py",
           "    held_out = validation_source(c.data)\n",
           "    held_out = f\"the data's val/ folder (without one, a seeded, stratified {c.data.val_fraction:.0%} of "
           "the training split)\"\n",
           (f"{T_AF}::test_the_model_card_states_the_validation_split_used_and_no_local_path",
            "tests/test_after_training.py::test_the_model_card_names_the_val_folder_the_run_validated_on")),
    Mutant("card-publishes-the-data-path", "the model card: no local path", "vitdist/after/card.py",
           '(f" ({data_folder_name(c.data.root)})" if c.data.name == "imagefolder" else "")\n',
           '(f" ({c.data.root})" if c.data.root else "")\n',
           (f"{T_AF}::test_the_model_card_states_the_validation_split_used_and_no_local_path",)),
    Mutant("workers-answer-ctrl-c-too", "Ctrl-C while decoding: said once", "vitdist/stopping.py",
           "        if os.getpid() != self.pid:  # a forked child", "        if False:  # a forked child",
           (f"{T_NEW}::test_ctrl_c_while_the_data_decodes_is_said_once_and_ends_in_one_line",)),
    Mutant("decode-not-interruptible", "Ctrl-C while decoding: stops there", "vitdist/data/cache.py",
           "            if STOP.requested:  # Ctrl-C while the data decodes", "            if False:  #",
           (f"{T_NEW}::test_ctrl_c_while_the_data_decodes_is_said_once_and_ends_in_one_line",)),
    Mutant("16-bit-grey-clipped", "16-bit PNGs decode as their 8-bit picture", IMAGES,
           "    if image.mode in SIXTEEN_BIT_MODES:\n        image = _grey_to_8_bits(image)\n", "",
           (f"{T_IN}::test_16_bit_pngs_decode_as_their_8_bit_picture",
            f"{T_IN}::test_an_image_folder_of_16_bit_pngs_trains_on_the_8_bit_picture")),
    Mutant("16-bit-grey-truncated", "16-bit PNGs decode as their 8-bit picture", IMAGES,
           "return Image.fromarray(((x + 128) // 257).astype(np.uint8))",
           "return Image.fromarray((x // 256).astype(np.uint8))",
           (f"{T_IN}::test_16_bit_pngs_decode_as_their_8_bit_picture",)),
    Mutant("decode-cache-ignores-the-decoder", "a cache that cannot go stale", "vitdist/data/cache.py",
           'h = hashlib.sha1(f"{files.img_size}|decoder {DECODER_VERSION}".encode())',
           'h = hashlib.sha1(f"{files.img_size}".encode())',
           (f"{T_IN}::test_a_warm_decode_cache_from_an_older_decoder_is_not_served",)),
    Mutant("empty-class-folder-allowed", "an empty class folder: one line", "vitdist/data/sources.py",
           "    if empty:\n        def holds", "    if False:\n        def holds",
           (f"{T_IN}::test_an_empty_class_folder_is_one_line_naming_it",)),
    Mutant("imagefolder-takes-torchvisions-extensions", "every format Pillow opens is trained on", IMAGES,
           "    return os.path.splitext(path)[1].lower() in image_extensions()",
           '    return os.path.splitext(path)[1].lower() in (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", '
           '".tiff", ".webp")',
           (f"{T_IN}::test_every_format_pillow_opens_is_trained_on_and_the_rest_counted",)),
    Mutant("non-images-not-counted", "what is left out is counted and named", "vitdist/data/sources.py",
           "        left_out.append(path)\n", "",
           (f"{T_IN}::test_every_format_pillow_opens_is_trained_on_and_the_rest_counted",
            f"{T_IN}::test_the_train_header_says_what_was_left_out")),
    Mutant("header-silent-on-non-images", "what is left out is counted and named", RUN,
           "               if data.left_out else \"\") +", "               if False else \"\") +",
           (f"{T_IN}::test_the_train_header_says_what_was_left_out",)),
    Mutant("overfit-one-seed-only", "a seed-dependent overfit verdict does not accuse the code", CHECKS,
           '        if result.passed or result.numbers["best_acc"] < OVERFIT_RETRY_FROM:', "        if True:",
           ("tests/test_checks.py::test_a_start_that_falls_short_is_retried_and_the_pass_says_which_seed",)),
    Mutant("overfit-retries-hopeless-starts", "a planted bug costs one overfit attempt", CHECKS,
           '        if result.passed or result.numbers["best_acc"] < OVERFIT_RETRY_FROM:', "        if result.passed:",
           ("tests/test_checks.py::test_a_fail_says_what_was_seen_from_every_start",)),
    Mutant("overfit-fail-as-a-certainty", "a FAIL says what was seen", CHECKS,
           'HINT_OVERFIT = ("this usually means a bug: ',
           'HINT_OVERFIT = ("cannot overfit 32 samples: there is a bug: ',
           ("tests/test_checks.py::test_a_fail_says_what_was_seen_from_every_start",)),
    Mutant("export-weights-0600", "weights files readable as any other", "vitdist/after/export.py",
           "    save_safetensors(model.state_dict(), path, metadata)  #",
           "    __import__('safetensors.torch').torch.save_file(model.state_dict(), str(path), metadata=metadata)  #",
           (f"{T_AF}::test_exported_weights_have_the_users_file_mode",)),
    # issue 17: every figure against an independent reference
    Mutant("epoch-loss-of-rank-0", "epoch figures from steps.jsonl", EPOCH,
           '"train_loss": loss_sum / count,', '"train_loss": (sums[0] / sums[2]).item(),', (FIG_EPOCH,)),
    Mutant("epoch-images-of-one-rank", "epoch figures from steps.jsonl", EPOCH,
           '"images_per_s": count / trained.train_time,',
           '"images_per_s": trained.sums[2].item() / trained.train_time,', (FIG_EPOCH,)),
    Mutant("mfu-not-over-world-size", "epoch figures from steps.jsonl", EPOCH,
           "mfu(achieved_tflops, derived.peak_tflops, run.world_size)", "mfu(achieved_tflops, derived.peak_tflops)",
           (FIG_EPOCH,)),
    Mutant("images-counted-once-per-step", "epoch figures from steps.jsonl", STEP,
           "        sums[2] += len(yc)\n    return sums, stats", "    sums[2] += len(yc)\n    return sums, stats",
           (FIG_EPOCH,)),
    Mutant("step-loss-not-averaged-over-micro-batches", "epoch figures from steps.jsonl", STEP,
           "step_loss += loss.detach() / len(chunks)", "step_loss += loss.detach()", (FIG_EPOCH,)),
    Mutant("train-time-includes-eval", "epoch figures from steps.jsonl", EPOCH,
           '"train_time_s": trained.train_time,', '"train_time_s": time.perf_counter() - trained.t0,', (FIG_EPOCH,)),
    Mutant("peak-env-ignored", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "    if given:\n        return _given_peak(given)\n", "",
           ("tests/test_flops.py::test_a_peak_given_in_the_environment_is_the_peak_of_any_device",)),
    Mutant("ema-updated-per-micro-batch", "the EMA is the reference EMA", EPOCH,
           "parts.ema.update(parts.averaged, step=state.step)", "[parts.ema.update(parts.averaged, step=state.step)"
           " for _ in range(run.accum)]",
           (FIG_EMA,)),
    Mutant("ema-on-rank-0-only", "the EMA is the reference EMA", EPOCH,
           "        if parts.ema is not None:  # foreach lerps",
           "        if parts.ema is not None and run.is_main:  # foreach lerps", (FIG_EMA,)),
    Mutant("eval-top5-is-top1", "eval figures are scikit-learn's", "vitdist/train/scores.py",
           "sums[2] += (top == y[:, None]).any(-1).sum()", "sums[2] += (top[:, 0] == y).sum()", (FIG_EVAL,)),
    Mutant("eval-per-class-over-predicted", "eval figures are scikit-learn's", "vitdist/train/scores.py",
           "for c, n in enumerate(per_class)]", "for c, n in enumerate(map(sum, zip(*matrix)))]", (FIG_EVAL,)),
    Mutant("eval-confusion-transposed", "eval figures are scikit-learn's", "vitdist/train/scores.py",
           "torch.bincount(y * num_classes + top[:, 0],", "torch.bincount(top[:, 0] * num_classes + y,",
           (FIG_EVAL,)),
    Mutant("flops-head-left-out", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "    head = 2 * d * n_cls  #", "    head = 0  #", (FL,)),
    Mutant("flops-patch-embed-left-out", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "return float(_patch_embed_flops(model_cfg) + model_cfg.num_layers", "return float(model_cfg.num_layers",
           (FL,)),
    Mutant("flops-one-attention-product", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "    attention = 2 * 2 * tokens * tokens * d  #", "    attention = 2 * tokens * tokens * d  #", (FL,)),
    Mutant("flops-mlp-one-layer", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "+ 2 * d * hidden)  #", "+ d * hidden)  #", (FL,)),
    Mutant("flops-projection-left-out", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "(3 * d * d + d * d + 2 * d * hidden)", "(3 * d * d + 2 * d * hidden)", (FL,)),
    Mutant("flops-qkv-as-one-product", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "(3 * d * d + d * d + 2 * d * hidden)", "(d * d + d * d + 2 * d * hidden)", (FL,)),
    Mutant("flops-patch-embed-input-gradient", "achieved TFLOPS and MFU", "vitdist/flops.py",
           "    return 3 * flops_per_image(model_cfg, num_classes) - _patch_embed_flops(model_cfg)\n",
           "    return 3 * flops_per_image(model_cfg, num_classes)\n", (FLB,)),
    # issue 17: wiring between tested pieces, guards over every field, metadata with values that differ
    Mutant("test-scored-on-the-raw-weights", "the reported test accuracy is the exported weights'", RUN,
           "    best = ema.module if state.best_weights == \"ema\" else parts.model\n", "    best = parts.model\n",
           (f"{T_W}::test_the_reported_test_accuracy_is_vitdist_eval_of_the_exported_weights",)),
    Mutant("test-scored-on-the-average", "the reported test accuracy is the exported weights'", RUN,
           "    best = ema.module if state.best_weights == \"ema\" else parts.model\n",
           "    best = ema.module if ema is not None else parts.model\n",
           (f"{T_W}::test_the_reported_test_accuracy_is_vitdist_eval_of_the_exported_weights",)),
    Mutant("rand-augment-magnitude-minus-one", "--data.rand-augment N,M is torchvision's", "vitdist/data/augment.py",
           "self.auto = BatchRandAugment(*cfg.rand_augment_ops)",
           "self.auto = BatchRandAugment(cfg.rand_augment_ops[0], cfg.rand_augment_ops[1] - 1)",
           ("tests/test_augment.py::test_rand_augment_flag_gives_torchvisions_rand_augment_of_n_and_m",)),
    Mutant("rand-augment-30-bins", "--data.rand-augment N,M is torchvision's", "vitdist/data/augment.py",
           "self.auto = BatchRandAugment(*cfg.rand_augment_ops)",
           "self.auto = BatchRandAugment(*cfg.rand_augment_ops, num_magnitude_bins=30)",
           ("tests/test_augment.py::test_rand_augment_flag_gives_torchvisions_rand_augment_of_n_and_m",)),
    Mutant("rand-augment-n-ignored", "--data.rand-augment N,M is torchvision's", "vitdist/data/augment.py",
           "self.auto = BatchRandAugment(*cfg.rand_augment_ops)",
           "self.auto = BatchRandAugment(1, cfg.rand_augment_ops[1])",
           ("tests/test_augment.py::test_rand_augment_flag_gives_torchvisions_rand_augment_of_n_and_m",)),
    Mutant("erasing-before-normalization", "random erasing fills with the mean colour", "vitdist/data/augment.py",
           "        x = (x - self.mean) / self.std\n        if self.erase is not None:\n"
           "            x = self.erase(x)\n",
           "        if self.erase is not None:\n            x = self.erase(x)\n"
           "        x = (x - self.mean) / self.std\n",
           ("tests/test_data.py::test_random_erasing_fills_with_the_mean_colour_after_normalization",)),
    Mutant("trial-reads-the-test-split", "tuning never reads the test split", "vitdist/checklist/trials.py",
           "trial = replace(cfg, overwrite=True, test_at_end=False, resume=None)",
           "trial = replace(cfg, overwrite=True, test_at_end=True, resume=None)",
           (f"{T_W}::test_no_trial_of_tune_or_a_sweep_reads_the_test_split_only_tunes_final_scoring_once",)),
    Mutant("resume-may-change-the-data", "a resume refuses every field it may not change", FOLDER,
           '"data.root", "data.download", "data.num_workers",', '"data.",', (RESUME_EVERY,)),
    Mutant("resume-may-change-the-betas", "a resume refuses every field it may not change", FOLDER,
           '"checkpoint_every_steps", "compile", "extend_lr",',
           '"checkpoint_every_steps", "compile", "extend_lr", "optim.betas",', (RESUME_EVERY,)),
    Mutant("resume-refuses-the-log-flags", "a resume takes what it may change", FOLDER,
           '"batch.auto", "log.")', '"batch.auto")', (RESUME_EVERY,)),
    Mutant("decode-cache-keyed-without-mtime", "a cache that cannot go stale", "vitdist/data/cache.py",
           'h.update(f"|{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())',
           'h.update(f"|{path}|{label}|{st.st_size}".encode())',
           ("tests/test_faults.py::test_the_decode_cache_follows_pixels_times_and_renamed_class_folders",)),
    Mutant("decode-cache-keyed-without-path-or-label", "a cache that cannot go stale", "vitdist/data/cache.py",
           'h.update(f"|{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())',
           'h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())',
           ("tests/test_faults.py::test_the_decode_cache_follows_pixels_times_and_renamed_class_folders",)),
    Mutant("bf16-emulation-counted", "--precision auto: bf16 where the GPU runs it", "vitdist/precision.py",
           "torch.cuda.is_bf16_supported(including_emulation=False)", "torch.cuda.is_bf16_supported()",
           ("tests/test_precision.py::test_a_gpu_that_only_emulates_bf16_gets_tf32",)),
    Mutant("preprocessing-mean-std-swapped", "exports say how to preprocess", "vitdist/after/load.py",
           '"mean": list(info.config.data.mean), "std": list(info.config.data.std),',
           '"mean": list(info.config.data.std), "std": list(info.config.data.mean),',
           (f"{T_W}::test_the_exports_metadata_holds_each_channels_mean_and_std_and_preprocesses_to_the_runs_logits",)),
    Mutant("card-claims-the-average-on-every-ema-run", "the model card says which weights", "vitdist/after/card.py",
           'if results.get("weights") == "ema" or info.weights_file.name == EMA_FILE:',
           'if c.ema.decay > 0 or info.weights_file.name == EMA_FILE:',
           (f"{T_W}::test_the_model_card_says_which_weights_it_holds",)),
    Mutant("card-silent-on-raw-weights", "the model card says which weights", "vitdist/after/card.py",
           "        elif c.ema.decay > 0:  # an EMA run whose raw weights won", "        elif False:  #",
           (f"{T_W}::test_the_model_card_says_which_weights_it_holds",)),
    Mutant("ranks-return-before-the-record", "every rank returns with the run folder complete", RUN,
           "    accelerator.wait_for_everyone()\n    return results  # the trackers end",
           "    return results  # the trackers end",
           (f"{T_DIST}::test_two_processes_match_one",)),
    Mutant("bar-redrawn-on-tqdms-clock-only", "a live bar at a terminal", "vitdist/train/progress.py",
           "            self.bar.set_postfix_str(self.postfix(), refresh=True)\n", "            pass\n",
           ("tests/test_progress.py::test_a_terminal_gets_a_live_bar_and_the_header_first",)),
    Mutant("wandb-files-closed-after-return", "trackers: every record on disk when train() returns", TRACKERS,
           "        if wandb.run is None:\n            wandb.teardown()\n", "",
           ("tests/test_logging.py::test_the_wandb_log_is_complete_when_train_returns",)),
    # issue 18: the house by its rooms
    Mutant("data-imports-the-trainer", "imports run one way, down the layers", "vitdist/data/batches.py",
           "    def set_epoch(self, epoch: int):\n        self.epoch",
           "    def set_epoch(self, epoch: int):\n        from ..train.step import evaluate  # noqa: F401\n"
           "        self.epoch",
           ("tests/test_imports.py::test_every_import_runs_down_the_layers",)),
    Mutant("train-grows-back", "train() reads as its phases, on one screen", RUN,
           "        return finish(run, parts, state, stopped_early)",
           "        return finish(run, parts, state, stopped_early)" + "\n        pass" * 60,
           ("tests/test_imports.py::test_rooms_stay_small_and_train_reads_on_one_screen",)),
    Mutant("tune-folder-judged-on-every-rank", "a 2-process tune: rank 1 starting late is no earlier tune",
           "vitdist/checklist/trials.py", "for p in folder.glob(pattern)}) if is_main() else []",
           "for p in folder.glob(pattern)})",
           ("tests/test_tune.py::test_two_processes_run_each_trial_together",)),
    Mutant("grid-runs-the-presets-epochs", "sweeps run short trials, as --help says", "vitdist/checklist/sweep.py",
           'short = {"epochs": SWEEP_EPOCHS} if mode in ("lr", "grid") else {}',
           'short = {"epochs": SWEEP_EPOCHS} if mode == "lr" else {}',
           ("tests/test_sweep.py::test_sweeps_short_trial_default_is_what_help_shows_and_what_runs",)),
    Mutant("short-curves-judged", "a curve too short for a verdict says so", "vitdist/checklist/sweep.py",
           "    if n < MIN_JUDGE_STEPS:\n", "    if False:\n",
           ("tests/test_sweep.py::test_curves_too_short_to_judge_get_that_verdict_and_the_best_measured_rate_is_suggested",)),
    Mutant("tune-budget-plan-unchecked", "a budget too small for the plan is refused at start",
           "vitdist/checklist/tune_budget.py", "    if args.budget_trials < plan:\n", "    if False:\n",
           ("tests/test_tune.py::test_a_budget_too_small_for_the_plan_is_refused_at_start",)),
    Mutant("tune-warmup-fixed-only-in-the-baseline", "a schedule spent warming up is fixed before comparing",
           "vitdist/checklist/tune.py", "    template = fix_schedule(t, template)\n", "",
           ("tests/test_tune.py::test_a_warmup_spanning_most_of_a_trial_is_fixed_before_anything_is_compared",)),
    Mutant("tune-time-budget-after-the-template", "the time budget covers the check and the sweep",
           "vitdist/checklist/tune.py", "    if swept_now and not template_fits(t, template):",
           "    if False:", ("tests/test_tune.py::test_a_time_budget_spent_by_the_sweep_stops_before_the_template",)),
    Mutant("tune-resolution-at-any-accuracy", "what the validation split resolves is said first",
           "vitdist/checklist/tune_rule.py", "    band = noise(ref.best_val_acc, ref.best_val_acc, ref.num_val)",
           "    band = noise(0.9, 0.9, ref.num_val)",
           ("tests/test_tune.py::test_a_validation_split_too_small_to_resolve_a_change_is_said_before_comparing",)),
    Mutant("paired-seeds-judged-on-the-binomial-band", "a change is kept on every seed's evidence",
           "vitdist/checklist/tune_rule.py", "        margin = max(measured, binomial)\n",
           "        margin = binomial\n", (SEEDS_TEST,)),
    Mutant("paired-spread-read-as-normal", "a change is kept on every seed's evidence",
           "vitdist/checklist/tune_rule.py", "    return float(stats.t.ppf(stats.norm.cdf(NOISE_Z), seeds - 1))",
           "    return NOISE_Z", (SEEDS_TEST,)),
    Mutant("every-seed-the-same", "a change is kept on every seed's evidence", "vitdist/checklist/tuner.py",
           "to_dict(replace(cfg, seed=seed, run_dir=str(run_dir)))",
           "to_dict(replace(cfg, run_dir=str(run_dir)))", (SEEDS_TEST,)),
    Mutant("budget-counts-arms-not-trainings", "the budget counts every training", "vitdist/checklist/tuner.py",
           "sum(len(t.accs) or 1 for t in self.trials)", "len(self.trials)",
           ("tests/test_tune.py::test_the_budget_counts_each_seed",)),
    Mutant("confirmed-on-the-tunes-own-seeds", "the headline is on fresh seeds", "vitdist/checklist/tune_rule.py",
           "    fresh = [template.seed + t.args.seeds + i for i in range(k)]",
           "    fresh = [template.seed + i for i in range(k)]",
           ("tests/test_tune.py::test_the_headline_is_the_winner_against_the_template_on_fresh_seeds",)),
    Mutant("headline-against-the-fixed-template", "the headline's template is the one the user gave",
           "vitdist/checklist/tune.py", "    confirmed = confirm(t, given, best_cfg, best.name)",
           "    confirmed = confirm(t, template, best_cfg, best.name)",
           ("tests/test_tune.py::test_a_warmup_spanning_most_of_a_trial_is_fixed_before_anything_is_compared",)),
    Mutant("confirmation-not-budgeted", "the budget counts every training", "vitdist/checklist/tuner.py",
           "        kept = 2 * self.args.confirm_seeds if self.reserve is not None else 0\n",
           "        kept = 0\n",
           ("tests/test_tune.py::test_the_headline_is_the_winner_against_the_template_on_fresh_seeds",)),
    Mutant("eval-group-left-to-the-interpreter", "every rank ends in order", "vitdist/after/evaluate.py",
           "    end_process_group()  # in order, every rank together (accelerate launch -m vitdist.evaluate)\n", "",
           ("tests/test_after_training.py::test_eval_on_two_processes_counts_every_sample_once",)),
    Mutant("tune-group-left-to-the-interpreter", "every rank ends in order", "vitdist/checklist/trials.py",
           "    end_process_group()  # the trials leave it up for the next;", "    pass  #",
           ("tests/test_tune.py::test_two_processes_run_each_trial_together",)),
    # issue 19: the study and its workers (tests/test_tune_engine.py), the nuisance search
    Mutant("resume-key-counts-overwrite", "a resumed tune reruns nothing finished", STUDY,
           'RUN_CONTROL = ("resume", "overwrite", "test_at_end",', 'RUN_CONTROL = ("resume", "test_at_end",',
           ("tests/test_tune_engine.py::test_a_killed_tune_resumed_reruns_nothing_finished",)),
    Mutant("resumed-tune-budget-restarts", "a resumed tune's budget counts the time spent before",
           "vitdist/checklist/tuner.py", '            self.t0 -= 60 * saved.get("minutes", 0.0)', "            pass",
           ("tests/test_tune.py::test_a_resumed_tune_counts_the_minutes_it_spent_before_against_its_budget",)),
    Mutant("take-without-claiming", "no training runs twice", STUDY,
           "                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):\n"
           "                    continue\n", "                pass\n",
           (f"{T_EN}::test_two_workers_share_one_sqlite_study", f"{T_EN}::test_two_workers_share_one_journal_study")),
    Mutant("sqlite-deferred-transactions", "no training runs twice", STUDY,
           "    immediate_transactions(storage.engine)\n", "",
           (f"{T_EN}::test_racing_workers_never_take_one_training_twice",)),
    Mutant("dead-worker-not-requeued", "a killed worker's training is retried", STUDY,
           "            self.requeue(t._trial_id, None)\n", "            pass\n",
           (f"{T_EN}::test_a_worker_killed_mid_training_is_retried_by_another_and_the_run_ends_as_an_unbroken_one",)),
    Mutant("retry-restarts-from-scratch", "a retried training continues from its checkpoint", WORKER,
           "results, error = train_fn(cfg, resume=True)", "results, error = train_fn(cfg, resume=False)",
           (f"{T_EN}::test_a_worker_killed_mid_training_is_retried_by_another_and_the_run_ends_as_an_unbroken_one",)),
    Mutant("epochs-not-reported", "each epoch's validation accuracy goes to the study", WORKER,
           "            storage.set_trial_intermediate_value(self.id, epoch, float(acc))\n", "",
           (f"{T_EN}::test_two_workers_share_one_sqlite_study",
            f"{T_EN}::test_the_pruner_stops_a_bad_point_at_the_first_rung_against_its_own_search_only")),
    Mutant("pruner-ignored", "a bad nuisance point is pruned at the first rung", WORKER,
           "            if self.study.pruner.prune(view, storage.get_trial(self.id)) and STOP.signum is None:",
           "            if False:", (f"{T_EN}::{PRUNE_TEST}",)),
    Mutant("pruned-in-the-first-epoch", "no point is judged before a quarter of its trial", STUDY,
           "    return max(1, math.ceil(max_epochs / 4))", "    return 1", (f"{T_EN}::{PRUNE_TEST}",)),
    Mutant("dead-after-one-missed-beat", "a worker is taken for dead after 3 silent beats, not before", STUDY,
           "BEATS_MISSED = 3  #", "BEATS_MISSED = 2  #", (f"{T_EN}::{BEATS_TEST}",)),
    Mutant("dead-workers-retried-forever", "a training whose worker dies 4 times ends the tune, saying so", STUDY,
           '            given_up = len(t.system_attrs.get("retry_history", [])) >= MAX_RETRY',
           "            given_up = False", (f"{T_EN}::{BEATS_TEST}",)),
    Mutant("gpu-shares-skip-the-coordinators", "--trials-per-gpu K packs K trainings on each GPU", WORKER,
           'env["CUDA_VISIBLE_DEVICES"] = str(index % torch.cuda.device_count())',
           'env["CUDA_VISIBLE_DEVICES"] = str((index - 1) % torch.cuda.device_count())', (f"{T_EN}::{PACK_TEST}",)),
    Mutant("trials-per-gpu-ignored", "--trials-per-gpu K packs K trainings on each GPU", WORKER,
           "    return torch.cuda.device_count() * args.trials_per_gpu if", "    return torch.cuda.device_count() if",
           (f"{T_EN}::{PACK_TEST}",)),
    Mutant("worker-crash-unreported", "a training that crashes in a worker stops the tune, saying why",
           "vitdist/checklist/tuner.py", '            crashed = [e["crash"] for e in ended if e["crash"]]',
           "            crashed = []", (f"{T_EN}::{CRASH_TEST}",)),
    Mutant("worker-crash-retried-silently", "a training that crashes in a worker stops the tune, saying why", STUDY,
           '(t.state == TrialState.FAIL and ("error" in t.user_attrs or "crash" in t.user_attrs))):',
           '(t.state == TrialState.FAIL and "error" in t.user_attrs)):', (f"{T_EN}::{CRASH_TEST}",)),
    Mutant("arm-seeds-pruned", "an arm's seeds are never pruned", WORKER,
           "            if not (judge and self.prunable):", "            if not judge:",
           (f"{T_EN}::{PRUNE_TEST}",)),
    Mutant("points-pruned-against-other-arms", "a point is compared with its own search's only", WORKER,
           "            view = SearchView(self.study.study, self.group)", "            view = self.study.study",
           (f"{T_EN}::{PRUNE_TEST}",)),
    Mutant("prune-request-outlives-its-training", "a pruned training stops only itself", WORKER,
           "            STOP.signum = None  # the prune's request", "            pass  #",
           (f"{T_EN}::{PRUNE_TEST}",)),
    Mutant("late-prune-request-outlives-its-training", "a pruned training stops only itself", WORKER,
           LATE_PRUNE_FIXED, LATE_PRUNE_BUG,
           (f"{T_EN}::test_a_prune_asked_as_the_training_ends_does_not_stop_the_next",)),
    Mutant("nuisance-points-random", "the nuisance points are quasi-random", NUISANCE,
           'sampler=optuna.samplers.QMCSampler(\n            qmc_type="sobol", scramble=True, seed=cfg.seed))',
           "sampler=optuna.samplers.RandomSampler(seed=cfg.seed))",
           ("tests/test_tune.py::test_the_nuisance_points_are_quasi_random_a_sobol_net_not_random_draws",)),
    Mutant("nuisance-points-unseeded", "the nuisance points are quasi-random", NUISANCE,
           'qmc_type="sobol", scramble=True, seed=cfg.seed))', 'qmc_type="sobol", scramble=True, seed=0))',
           ("tests/test_tune.py::test_the_nuisance_points_are_quasi_random_a_sobol_net_not_random_draws",)),
    Mutant("nuisance-never-searched", "a scientific change is judged at its own rate", NUISANCE,
           "    if k <= 0 or not is_scientific(cfg, best_cfg):", "    if True:", (NUISANCE_TEST,)),
    Mutant("nuisance-best-point-dropped", "a scientific change is judged at its own rate", NUISANCE,
           "    return with_point(cfg, points[i])", "    return cfg", (NUISANCE_TEST,)),
    Mutant("unsearched-change-judged-anyway", "a scientific change is judged at its own rate", NUISANCE,
           "                 f\"{t.expected_minutes(cfg, extra=k):.1f} min, and {t.minutes_left():.1f} are left\")\n"
           "        return None\n",
           "                 f\"{t.expected_minutes(cfg, extra=k):.1f} min, and {t.minutes_left():.1f} are left\")\n"
           "        return cfg\n",
           ("tests/test_tune.py::test_a_scientific_change_with_no_room_for_its_rate_search_is_skipped_not_judged_"
            "unfairly",)),
    Mutant("optimizer-changes-searched-too", "the rate is searched for scientific changes only", NUISANCE,
           'SCIENTIFIC = ("model.", "data.")', 'SCIENTIFIC = ("model.", "data.", "optim.")', (NUISANCE_TEST,)),
    Mutant("joiner-starts-its-own-tune", "a machine joins a running tune", "vitdist/checklist/tune.py",
           "    if args.join or (is_main() and joinable(url, name, args)):", "    if False:",
           (f"{T_EN}::test_a_slurm_array_task_joins_task_0s_tune",)),
]


def copy_repo(dest: Path) -> Path:
    shutil.copytree(REPO, dest, ignore=COPY_IGNORE)
    return dest


def pytest(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, str]:
    # PYTHONPATH first: the copy's vitdist, not the editable install's, in this process and every launched rank.
    env = {**os.environ, "PYTHONPATH": str(copy), "COLUMNS": "250"}  # wide: the summary keeps the assertion
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout} s"
    return proc.returncode, proc.stdout + proc.stderr


def kill_left_behind(copy: Path) -> None:
    """Processes a planted bug left running from this copy (the ranks of a launch hang in their process group when
    the bug breaks a rendezvous, and each sits in a session of its own): killed, so they do not burden the rest."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(copy).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), 9)
        except (OSError, ProcessLookupError):
            pass


def first_failure(output: str) -> str:
    """The first FAILED/ERROR line of pytest's short summary, without the file path."""
    found = re.search(r"^(?:FAILED|ERROR) \S+?::(.*)$", output, re.M)
    return found.group(1)[:150] if found else output.strip()[-150:]


def check_import_from(copy: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    where = subprocess.run([sys.executable, "-c", "import vitdist; print(vitdist.__file__)"], cwd=copy, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(copy), f"the copy imports vitdist from {where}, not from {copy}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    parser.add_argument("--clean", action="store_true", help="first run the named tests on the unchanged copy")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = parser.parse_args()
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant(s) {sorted(unknown)}; --list shows them")
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            print(f"{m.name:{W}} {m.promise:28} {m.path}\n    " + "\n    ".join(m.tests))
        return 0

    tally: dict[str, list[str]] = {"caught": [], "MISSED": [], "STALE": [], "BROKEN": []}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vitdist-mutants-") as tmp:
        pristine = copy_repo(Path(tmp) / "pristine")
        check_import_from(pristine)
        if args.clean:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            t0 = time.time()
            rc, out = pytest(pristine, tests, args.timeout * 2)
            print(f"{'(no mutant)':{W}} {'PASS' if rc == 0 else 'FAIL':7} {time.time() - t0:5.0f} s  "
                  f"{len(tests)} tests" + ("" if rc == 0 else f"  {first_failure(out)}"), flush=True)
            if rc != 0:
                print(out[-3000:])
                return 1
        for m in chosen:
            copy = Path(tmp) / m.name
            shutil.copytree(pristine, copy)
            target = copy / m.path
            text = target.read_text()
            if text.count(m.old) != 1:
                print(f"{m.name:{W}} STALE       0 s  {m.path} holds the planted text {text.count(m.old)} times, "
                      f"not once")
                tally["STALE"].append(m.name)
                continue
            target.write_text(text.replace(m.old, m.new))
            t0 = time.time()
            rc, out = pytest(copy, m.tests, args.timeout)
            # pytest's exit 1 is "tests failed"; 2-5 (interrupted, internal error, usage, none collected) or a
            # timeout mean the mutant broke the run rather than being caught by a test.
            verdict = {1: "caught"}.get(rc, "MISSED" if rc == 0 else f"BROKEN (exit {rc})")
            tally[verdict.split()[0]].append(m.name)
            print(f"{m.name:{W}} {verdict:7} {time.time() - t0:5.0f} s  "
                  + (first_failure(out) if rc == 1 else " ".join(t.split("::")[-1] for t in m.tests)), flush=True)
            if rc not in (0, 1):
                print(out[-2000:])
            kill_left_behind(copy)
            shutil.rmtree(copy, ignore_errors=True)
    print(f"{len(tally['caught'])} of {len(chosen)} planted bugs caught; "
          + ", ".join(f"{len(names)} {kind.lower()}" for kind, names in tally.items() if kind != "caught")
          + f"; {(time.time() - started) / 60:.1f} min")
    for kind in ("MISSED", "STALE", "BROKEN"):
        if tally[kind]:
            print(f"{kind.lower()}: {' '.join(tally[kind])}")
    return 1 if len(tally["caught"]) < len(chosen) else 0


if __name__ == "__main__":
    sys.exit(main())
