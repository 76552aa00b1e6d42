"""`vitdist diagnose`: every verdict on synthetic curves, a recorded real run, advice flags the CLI accepts,
bad run folders rejected with one line and exit 2."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import tyro

from conftest import run_cli
from vitdist.checklist import diagnose as dg
from vitdist.config import TrainConfig, from_dict, to_dict
from vitdist.train.record import read_run
from vitdist.train.command import parse_train_config

DEMO_RUN = Path(__file__).parent / "data" / "demo_run"  # `vitdist train --preset demo`, 15 epochs, recorded
EXPLODED_RUN = Path(__file__).parent / "data" / "exploded_run"  # a tiny ViT at lr 3, no clipping, recorded


def ramp(a: float, b: float, n: int, k: float = 4.0) -> list[float]:
    """a -> b over n points, fast at first then levelling off, ending exactly at b."""
    return [a + (b - a) * (1 - math.exp(-k * i / (n - 1))) / (1 - math.exp(-k)) for i in range(n)]


def make_rows(n=20, train=(0.1, 0.95), val=(0.1, 0.70), train_loss=(2.3, 0.2), val_loss=(2.3, 0.9),
              mixing=False, clean=True) -> list[dict]:
    rows = []
    cols = zip(ramp(*train, n), ramp(*val, n), ramp(*train_loss, n), ramp(*val_loss, n))
    for i, (tacc, vacc, tl, vl) in enumerate(cols):
        row = {"epoch": i + 1, "step": 10 * (i + 1), "train_loss": tl, "train_acc": None if mixing else tacc - 0.05,
               "val_loss": vl, "val_acc": vacc, "lr": 1e-3, "grad_norm_mean": 1.0, "grad_norm_max": 2.0}
        if clean:
            row.update(train_clean_loss=tl * 0.9, train_clean_acc=tacc)
        rows.append(row)
    return rows


def config(**changes) -> dict:
    """The template's config.json, with flat 'model.dropout'-style changes."""
    c = to_dict(TrainConfig())
    for key, value in changes.items():
        head, _, name = key.rpartition(".")
        (c[head] if head else c)[name] = value
    return c


def flags_of(d: dg.Diagnosis) -> list[str]:
    return [a.flags for a in d.advice]


# --- every verdict, on synthetic curves

def test_severe_overfitting():
    d = dg.diagnose(make_rows(train=(0.1, 0.95), val=(0.1, 0.70)), config())
    assert d.verdict == dg.SEVERE and d.findings == [dg.SEVERE]
    assert d.evidence["gap"] == pytest.approx(0.25)
    assert flags_of(d)[0] == "--model.dropout 0.2"  # the template's 0.1 -> 0.2
    assert any("0.9500" in line and "0.7000" in line for line in d.lines)


def test_mild_overfitting_is_normal():
    d = dg.diagnose(make_rows(train=(0.1, 0.85), val=(0.1, 0.75)), config())
    assert d.verdict == dg.MILD and "normal" in d.meaning
    assert len([a for a in d.advice if a.why.startswith("optional")]) == 1


def test_underfitting():
    d = dg.diagnose(make_rows(train=(0.1, 0.60), val=(0.1, 0.58), train_loss=(2.3, 1.2), val_loss=(2.3, 1.25)),
                    config())
    assert d.verdict == dg.UNDERFITTING
    flags = flags_of(d)
    assert flags[0] == "--model.embed-dim 256 --model.dim-feedforward 1024"  # 128 -> 256, the MLP ratio kept
    assert "--model.num-layers 6" in flags and "--epochs 200" in flags
    assert flags.index("--model.num-layers 6") < flags.index("--epochs 200")  # the checklist's order


def test_healthy():
    d = dg.diagnose(make_rows(train=(0.1, 0.97), val=(0.1, 0.95), val_loss=(2.3, 0.3)), config())
    assert d.verdict == dg.HEALTHY and d.findings == [dg.HEALTHY]


def test_diverged_on_nan_in_metrics():
    rows = make_rows()
    rows[-1]["train_loss"] = float("nan")
    d = dg.diagnose(rows, config())
    assert d.verdict == dg.DIVERGED and "epoch 20" in d.evidence["nonfinite"]
    assert flags_of(d)[0] == "--optim.lr 1e-4"  # 1e-3 / 10


def test_diverged_on_inf_in_steps_only():
    steps = [{"step": i, "epoch": 1, "loss": 2.3 - 0.01 * i, "lr": 1e-3, "grad_norm": 1.0} for i in range(1, 50)]
    steps.append({"step": 50, "epoch": 1, "loss": float("inf"), "lr": 1e-3, "grad_norm": float("inf")})
    d = dg.diagnose(make_rows(), config(**{"optim.max_grad_norm": 0.0}), steps)
    assert d.verdict == dg.DIVERGED and "step 50" in d.evidence["nonfinite"]
    assert "--optim.max-grad-norm 1.0" in flags_of(d)  # clipping was off


def test_diverged_when_loss_ends_above_its_start():
    d = dg.diagnose(make_rows(train_loss=(2.3, 3.5), val_loss=(2.3, 3.6)), config())
    assert d.verdict == dg.DIVERGED and d.evidence["loss_end"] > d.evidence["loss_start"] * dg.DIVERGED_LOSS_RATIO


def test_diverged_when_loss_blew_up_and_came_back():
    rows = make_rows(n=6)
    for row, loss in zip(rows, [2.2, 300.0, 150.0, 50.0, 10.0, 2.0]):
        row["train_loss"] = loss
    d = dg.diagnose(rows, config(**{"data.name": "synthetic"}))  # no steps: the start is ln(10)
    assert d.evidence["loss_start"] == pytest.approx(math.log(10))
    assert d.verdict == dg.DIVERGED and any("blew up to 300 at epoch 2" in line for line in d.lines)


def test_oscillating():
    rows = make_rows()
    for i, row in enumerate(rows):  # falls on average, but every other epoch jumps back up by ~30%
        row["train_loss"] = 2.0 - 0.03 * i + (0.5 if i % 2 else 0.0)
    d = dg.diagnose(rows, config())
    assert d.verdict == dg.OSCILLATING
    assert d.evidence["rise_share"] >= dg.OSCILLATION_RISE_SHARE
    assert flags_of(d)[0] == "--optim.lr 5e-4"  # one step down the sweep's list


def test_stalled():
    rows = make_rows(train=(0.1, 0.12), val=(0.1, 0.11), train_loss=(2.30, 2.22), val_loss=(2.30, 2.25))
    d = dg.diagnose(rows, config())
    assert d.verdict == dg.STALLED and d.evidence["loss_drop"] < dg.STALL_MAX_DROP
    assert dg.UNDERFITTING in d.findings  # also true, but the stall is what to fix first
    assert flags_of(d)[:2] == ["--preset overfit", "--optim.lr 5e-3"]  # overfit test, then 1e-3 -> 5e-3


def test_validation_loss_rising():
    rows = make_rows(train=(0.1, 0.90), val=(0.1, 0.84))  # gap 0.06: mild by accuracy
    val_loss = ramp(2.3, 0.6, 10) + ramp(0.6, 0.95, 11)[1:]
    for row, v in zip(rows, val_loss):
        row["val_loss"] = v
    d = dg.diagnose(rows, config())
    assert d.verdict == dg.VAL_RISING and dg.MILD in d.findings
    assert d.evidence["val_loss_min_epoch"] == 10 and d.evidence["val_loss_rise"] >= dg.VAL_RISE
    assert flags_of(d)[0] == "--model.dropout 0.2"


def test_a_small_rise_of_the_validation_loss_is_normal():
    rows = make_rows(train=(0.1, 0.97), val=(0.1, 0.95))
    val_loss = ramp(2.3, 0.6, 10) + ramp(0.6, 0.6 * (1 + dg.VAL_RISE / 2), 11)[1:]
    for row, v in zip(rows, val_loss):
        row["val_loss"] = v
    assert dg.diagnose(rows, config()).verdict == dg.HEALTHY


# --- thresholds are the named constants

@pytest.mark.parametrize("train,val,verdict", [
    (0.95, 0.95 - dg.SEVERE_GAP - 0.01, dg.SEVERE),
    (0.95, 0.95 - dg.SEVERE_GAP + 0.01, dg.MILD),
    (0.95, 0.95 - dg.MILD_GAP + 0.01, dg.HEALTHY),
    (dg.UNDERFIT_TRAIN_ACC - 0.01, dg.UNDERFIT_TRAIN_ACC - 0.02, dg.UNDERFITTING),
])
def test_accuracy_thresholds(train, val, verdict):
    assert dg.diagnose(make_rows(train=(0.1, train), val=(0.1, val), val_loss=(2.3, 0.5)), config()).verdict == verdict


# --- which training accuracy

def test_mixup_runs_use_the_clean_training_accuracy():
    d = dg.diagnose(make_rows(mixing=True), config(**{"data.mixup_alpha": 0.8}))
    assert d.evidence["train_acc_key"] == "train_clean_acc" and d.verdict == dg.SEVERE
    assert any("train_clean_acc" in line for line in d.lines)


def test_clean_accuracy_is_preferred_over_the_augmented_one():
    rows = make_rows(train=(0.1, 0.95), val=(0.1, 0.70))
    for row in rows:
        row["train_acc"] = row["val_acc"] + 0.01  # augmented batches with dropout: looks like no gap at all
    d = dg.diagnose(rows, config())
    assert d.evidence["train_acc_key"] == "train_clean_acc" and d.verdict == dg.SEVERE


def test_falls_back_to_train_acc_without_a_clean_column():
    d = dg.diagnose(make_rows(clean=False), config())
    assert d.evidence["train_acc_key"] == "train_acc" and d.evidence["train_acc"] == pytest.approx(0.90)


# --- short runs: trends from steps.jsonl, or none

def test_short_run_reads_trends_from_steps():
    rows = make_rows(n=2)
    steps = [{"step": i, "epoch": 1 + i // 50, "loss": 2.0 - 0.002 * i + (0.6 if (i // 10) % 2 else 0.0),
              "lr": 1e-3, "grad_norm": 1.0} for i in range(1, 101)]
    d = dg.diagnose(rows, config(), steps)
    assert "windows" in d.evidence["loss_curve"] and d.verdict == dg.OSCILLATING
    d = dg.diagnose(rows, config())
    assert d.evidence["loss_curve"].startswith("too few") and d.verdict not in (dg.STALLED, dg.OSCILLATING)


# --- advice follows the run's own config

def test_advice_skips_what_the_run_already_has():
    d = dg.diagnose(make_rows(), config(**{"model.dropout": 0.3}))
    assert not any("--model.dropout" in f for f in flags_of(d))
    assert flags_of(d)[0] == "--optim.weight-decay 1e-3" and any("dropout is already 0.3" in n for n in d.notes)
    d = dg.diagnose(make_rows(), config(**{"model.dropout": 0.3, "optim.weight_decay": 1e-3,
                                           "data.color_jitter": True}))
    assert flags_of(d)[0] == "--data.mixup-alpha 0.8 --data.cutmix-alpha 1.0"


def test_underfitting_advice_at_the_largest_model_grows_nothing():
    rows = make_rows(train=(0.1, 0.60), val=(0.1, 0.58), train_loss=(2.3, 1.2))
    d = dg.diagnose(rows, config(**{"model.embed_dim": 512, "model.num_layers": 6, "model.num_heads": 8,
                                    "model.dim_feedforward": 2048, "model.dropout": 0.3, "epochs": 50}))
    flags = flags_of(d)
    assert not any("embed-dim" in f or "num-layers" in f for f in flags)
    assert flags == ["--model.dropout 0.1", "--epochs 100"]


def test_without_config_the_template_is_assumed():
    d = dg.diagnose(make_rows(), None)
    assert flags_of(d)[0] == "--model.dropout 0.2" and any("no config.json" in line for line in d.lines)


CASES = {  # name -> (rows, config changes)
    "severe": (make_rows(), {}),
    "severe-small-model": (make_rows(), {"model.embed_dim": 64, "model.num_heads": 4, "model.num_layers": 2,
                                         "model.dim_feedforward": 128, "label_smoothing": 0.0}),
    "severe-big-model": (make_rows(), {"model.embed_dim": 512, "model.num_heads": 8, "model.num_layers": 6,
                                       "model.dim_feedforward": 2048, "early_stop_patience": 0}),
    "underfit": (make_rows(train=(0.1, 0.6), val=(0.1, 0.58), train_loss=(2.3, 1.2)),
                 {"model.embed_dim": 96, "model.num_heads": 3, "model.dim_feedforward": 384,
                  "data.mixup_alpha": 0.8, "model.drop_path_rate": 0.1, "optim.weight_decay": 1e-3}),
    "diverged": (make_rows(train_loss=(2.3, 3.5)), {"optim.max_grad_norm": 0.0, "optim.warmup_epochs": 0.0,
                                                     "precision": "fp16"}),
    "stalled": (make_rows(train=(0.1, 0.12), val=(0.1, 0.11), train_loss=(2.3, 2.25)),
                {"optim.warmup_epochs": 15.0, "model.dropout": 0.3}),
    "mild": (make_rows(train=(0.1, 0.85), val=(0.1, 0.75)), {"label_smoothing": 0.0, "optim.max_grad_norm": 0.0}),
}


@pytest.mark.parametrize("case", CASES)
def test_every_advised_flag_set_is_accepted_and_changes_the_config(case):
    rows, changes = CASES[case]
    run_config = config(**changes)
    cfg = from_dict(run_config)
    d = dg.diagnose(rows, run_config)
    assert d.advice, case
    for advice in d.advice:
        args = advice.flags.split()
        if args[0] == "--preset":
            new = parse_train_config(args)
        else:
            new = tyro.cli(TrainConfig, default=cfg, args=args)
        assert new != cfg, advice


def test_flags_are_written_as_people_write_them():
    assert [dg.fmt(x) for x in (0.2, 1e-3, 5e-4, 1e-2, 200, 0.0, 1.0, 2.5e-4)] == \
        ["0.2", "1e-3", "5e-4", "1e-2", "200", "0", "1", "2.5e-4"]


# --- a recorded real run

def test_recorded_demo_run():
    run = read_run(DEMO_RUN)
    d = dg.diagnose(run.rows, run.config, run.steps, run.results)
    # 15 epochs of the demo: clean train accuracy 0.805 = val 0.806, loss still falling: not fit yet.
    assert d.verdict == dg.UNDERFITTING
    assert d.evidence["train_acc_key"] == "train_clean_acc" and abs(d.evidence["gap"]) < dg.MILD_GAP
    assert d.evidence["recent_drop"] > dg.STILL_FALLING
    assert flags_of(d)[0] == "--model.embed-dim 256 --model.dim-feedforward 1024"
    assert "--epochs 30" in flags_of(d)
    assert d.evidence["best_epoch"] == run.results["best_epoch"]


def test_recorded_exploded_run():
    """A real run at lr 3 without clipping: the loss went from 2.3 to 300+ in the first epoch, then fell back to
    33 as the schedule decayed; accuracy stayed at chance, which alone would read as underfitting."""
    run = read_run(EXPLODED_RUN)
    d = dg.diagnose(run.rows, run.config, run.steps, run.results)
    assert d.verdict == dg.DIVERGED and dg.UNDERFITTING in d.findings
    assert d.evidence["loss_start"] == pytest.approx(run.steps[0]["loss"])
    assert flags_of(d)[:2] == ["--optim.lr 0.3", "--optim.max-grad-norm 1.0"]


# --- the command

@pytest.fixture
def demo_copy(tmp_path):
    return Path(shutil.copytree(DEMO_RUN, tmp_path / "demo"))


def test_cli_prints_verdict_and_writes_the_plot(demo_copy, capsys):
    assert dg.main([str(demo_copy)]) == 0
    out = capsys.readouterr().out
    assert "verdict: underfitting" in out and "--model.embed-dim 256" in out
    png = demo_copy / "diagnose.png"
    assert png.is_file() and png.stat().st_size > 20_000


def test_cli_json(demo_copy, capsys):
    assert dg.main([str(demo_copy), "--json", "--no-plot"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == dg.UNDERFITTING and out["plot"] is None
    assert out["advice"][0] == {"why": "a wider model: embed_dim 128 -> 256",
                                "flags": "--model.embed-dim 256 --model.dim-feedforward 1024"}
    assert not (demo_copy / "diagnose.png").exists()


def _bad(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        dg.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_run_folders_exit_2_with_one_line(tmp_path, capsys):
    assert "no metrics.jsonl" in _bad([str(tmp_path)], capsys)
    assert "not a folder" in _bad([str(tmp_path / "missing")], capsys)
    (tmp_path / "metrics.jsonl").write_text("")
    assert "is empty" in _bad([str(tmp_path)], capsys)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    assert "line 2 is not JSON" in _bad([str(tmp_path)], capsys)
    (tmp_path / "metrics.jsonl").write_text('{"loss": 1}\n')
    assert "no 'epoch'" in _bad([str(tmp_path)], capsys)


def test_a_line_still_being_written_is_ignored(demo_copy):
    with open(demo_copy / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 16, "train_lo')
    assert len(read_run(demo_copy).rows) == 15


def test_cli_end_to_end_in_a_process(tmp_path, demo_copy):
    bad = run_cli("diagnose", tmp_path / "nothing-here")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "RUN_DIR" in bad.stderr
    good = run_cli("diagnose", demo_copy, "--no-plot")
    assert good.returncode == 0 and "verdict: underfitting" in good.stdout


def test_diagnosis_is_json_serialisable():
    d = dg.diagnose(make_rows(), config())
    assert json.loads(json.dumps(d.to_dict()))["verdict"] == dg.SEVERE
    assert dataclasses.is_dataclass(d)
