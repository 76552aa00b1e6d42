"""Issue 16, items 5 and 14: `sweep lr`, `sweep grid`, `sweep range` and `tune` stop on Ctrl-C or SIGTERM as
`vitdist train` does (the trial in progress checkpoints its step; one line says how to continue; exit 130 or
143), and `--resume auto` continues the interrupted trial mid-run. A sweep folder holding an earlier sweep is
refused, or cleared with --overwrite. Real signals, sent by tests/fail_on_rank.py inside the chosen trial."""

from __future__ import annotations

import json
import shlex

import pytest

from test_interrupts import TIMING, planted
from test_sweep import TINY_FLAGS
from vitdist.checklist import sweep as sweep_mod
from vitdist.checklist import tune as tune_mod

pytestmark = pytest.mark.usefixtures("one_thread")


def continued(stderr: str, command: str) -> list[str]:
    """The arguments of the 'Continue with: COMMAND ...' line, as a user would paste them."""
    (line,) = [line for line in stderr.splitlines() if "Continue with: " in line]
    rest = line.split("Continue with: ", 1)[1]
    assert rest.startswith(command + " "), line
    return shlex.split(rest[len(command) + 1:])


def jsonl(path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in open(path)]


def test_sweep_lr_stopped_inside_a_trial_continues_it_and_ends_as_an_unbroken_sweep(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    args = [*TINY_FLAGS, "--lrs", "1e-3", "5e-4", "--epochs", "2", "--sweep-dir", str(sweep)]
    # 16 steps for the first rate; step 21 is the second rate's fifth.
    proc = planted("lr", *args, env={"FAIL_MAIN": "vitdist.checklist.sweep", "FAIL_STEP": "21", "FAIL_WITH": "sigint"})
    assert proc.returncode == 130, proc.stderr[-3000:]
    checkpoint = sweep / "lr_0.0005" / "checkpoints" / "epoch_0000_step_00000005"
    assert f"vitdist: stopped on SIGINT with a checkpoint in {checkpoint}. Continue with: vitdist sweep lr" \
        in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (checkpoint / "train_state.json").is_file()

    capsys.readouterr()
    assert sweep_mod.main(["lr", *continued(proc.stderr, "vitdist sweep lr")]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {checkpoint} at epoch 0, step 5" in out  # the interrupted rate, mid-epoch
    assert f"resumed from {sweep / 'lr_0.001' / 'checkpoints' / 'epoch_0002'}" in out  # the finished one, read back

    straight = tmp_path / "straight"
    assert sweep_mod.main(["lr", *args[:-1], str(straight)]) == 0
    for rate in ("lr_0.001", "lr_0.0005"):
        assert jsonl(sweep / rate / "steps.jsonl") == jsonl(straight / rate / "steps.jsonl")
        assert jsonl(sweep / rate / "metrics.jsonl") == jsonl(straight / rate / "metrics.jsonl")
    verdicts = lambda d: [(r["lr"], r["verdict"]) for r in json.loads((d / "sweep.json").read_text())["runs"]]  # noqa: E731
    assert verdicts(sweep) == verdicts(straight)


def test_tune_stopped_inside_a_trial_continues_it_on_resume(tmp_path, capsys):
    tune = tmp_path / "tune"
    args = [*TINY_FLAGS, "--lrs", "1e-3", "5e-4", "--sweep-epochs", "1", "--epochs", "2", "--budget-trials", "4",
            "--seeds", "1", "--confirm-seeds", "0", "--tune-dir", str(tune)]
    # The sweep's 2 x 8 steps, then the template's trial: step 20 is its fourth.
    proc = planted(*args, env={"FAIL_MAIN": "vitdist.checklist.tune", "FAIL_STEP": "20", "FAIL_WITH": "sigterm"})
    assert proc.returncode == 143, proc.stderr[-3000:]
    checkpoint = tune / "trial_000" / "checkpoints" / "epoch_0000_step_00000004"
    assert f"vitdist: stopped on SIGTERM with a checkpoint in {checkpoint}. Continue with: vitdist tune" \
        in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]

    capsys.readouterr()
    assert tune_mod.main(continued(proc.stderr, "vitdist tune")) == 0
    out = capsys.readouterr().out
    assert f"resumed from {checkpoint} at epoch 0, step 4" in out
    record = json.loads((tune / "tune.json").read_text())
    assert record["summary"]["best_val_acc"] is not None
    assert len(jsonl(tune / "trial_000" / "steps.jsonl")) == 16


def test_sweep_grid_stopped_by_sigterm_continues_the_trial(tmp_path, capsys):
    sweep = tmp_path / "grid"
    args = [*TINY_FLAGS, "--set", "model.dropout=0,0.1", "--epochs", "1", "--sweep-dir", str(sweep)]
    proc = planted("grid", *args,
                   env={"FAIL_MAIN": "vitdist.checklist.sweep", "FAIL_STEP": "11", "FAIL_WITH": "sigterm"})
    assert proc.returncode == 143, proc.stderr[-3000:]
    checkpoint = sweep / "trial_001" / "checkpoints" / "epoch_0000_step_00000003"
    assert f"with a checkpoint in {checkpoint}. Continue with: vitdist sweep grid" in proc.stderr
    capsys.readouterr()
    assert sweep_mod.main(["grid", *continued(proc.stderr, "vitdist sweep grid")]) == 0
    assert f"resumed from {checkpoint}" in capsys.readouterr().out
    assert len(json.loads((sweep / "results.json").read_text())["trials"]) == 2


def test_sweep_range_stopped_by_sigint_keeps_the_curve_so_far(tmp_path):
    out = tmp_path / "range"
    proc = planted("range", *TINY_FLAGS, "--num-steps", "40", "--sweep-dir", str(out),
                   env={"FAIL_MAIN": "vitdist.checklist.sweep", "FAIL_STEP": "12", "FAIL_WITH": "sigint"})
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "vitdist: stopped on SIGINT after 12 of 40 steps: the curve so far is in" in proc.stderr
    report = json.loads((out / "range.json").read_text())
    assert report["steps_run"] == 12 and len(report["losses"]) == 12


def test_a_sweep_folder_holding_an_earlier_sweep_is_refused_or_cleared_with_overwrite(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    stale = sweep / "lr_0.01"  # another data set's trial, from an earlier sweep
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text("{}\n")
    args = ["lr", *TINY_FLAGS, "--lrs", "1e-3", "--epochs", "1", "--sweep-dir", str(sweep)]
    with pytest.raises(SystemExit) as e:
        sweep_mod.main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"--sweep-dir {sweep} holds an earlier sweep (lr_0.01)" in err and "--overwrite" in err
    assert stale.is_dir()
    assert sweep_mod.main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == ["lr_0.001", "sweep.json",
                                                                                      "sweep.png"]
