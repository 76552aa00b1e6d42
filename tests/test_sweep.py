"""`vitdist sweep`: curve verdicts for every category, lr / range / grid end to end, bad input exits 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vitdist.checklist import lr_range
from vitdist.checklist import sweep
from vitdist.checklist.grid import apply_overrides, parse_grid
from vitdist.checklist.sweep import lr_curve_verdict, main
from vitdist.presets import get_preset

pytestmark = pytest.mark.usefixtures("one_thread")


TINY_FLAGS = ["--data.name", "synthetic", "--data.synthetic-size", "320", "--data.val-fraction", "0.2",
              "--data.train-eval-size", "64", "--model.embed-dim", "32", "--model.num-layers", "2",
              "--model.num-heads", "2", "--model.dim-feedforward", "64", "--batch.global-batch-size", "32",
              "--early-stop-patience", "0", "--log.no-tensorboard", "--log.no-progress"]


def curve(trend, noise=0.05, seed=0):
    """A per-step loss curve: trend x (1 + noise x N(0, 1)), the way batch noise scales with the loss."""
    trend = np.asarray(trend, dtype=float)
    return list(trend * (1 + noise * np.random.default_rng(seed).standard_normal(len(trend))))


T = np.arange(300)


# --- verdicts on synthetic curves, one per category, each with the numbers that decide it

def test_healthy_curve():
    verdict, n = lr_curve_verdict(curve(1.3 + 1.0 * np.exp(-T / 60)))
    assert verdict == "healthy", n
    assert n["drop"] > 0.3 and n["rise_share"] < sweep.OSCILLATING_SHARE


def test_healthy_curve_with_a_long_noisy_plateau_is_not_oscillating():
    # The loss is flat and noisy for the last 2/3 of the run: noise must not count as rises.
    for noise in (0.03, 0.08, 0.15):
        verdict, n = lr_curve_verdict(curve(1.2 + 1.1 * np.exp(-np.arange(900) / 40), noise=noise, seed=1))
        assert verdict == "healthy", (noise, n)


def test_nan_is_diverged():
    verdict, n = lr_curve_verdict([2.3, 2.1, 1.9, math.nan, math.nan])
    assert verdict == "diverged" and n["non_finite_at_step"] == 4


def test_loss_ending_above_its_start_is_diverged():
    verdict, n = lr_curve_verdict(curve(np.linspace(2.3, 6.0, 300)))
    assert verdict == "diverged" and n["final_loss"] > n["start_loss"], n


def test_swinging_loss_is_oscillating():
    # Falls, then swings by +-30% with a period of ~60 steps: the smoothed loss keeps rising far above its best.
    verdict, n = lr_curve_verdict(curve(1.6 + 0.7 * np.exp(-T / 20) + 0.5 * np.sin(T / 10) ** 2, noise=0.03))
    assert verdict == "oscillating", n
    assert n["rise_share"] > sweep.OSCILLATING_SHARE and n["final_loss"] < n["start_loss"]


def test_loss_that_collapses_back_up_is_oscillating():
    # Learns for 80 steps, then jumps back to chance level and stays there (the rate is too large).
    verdict, n = lr_curve_verdict(curve(np.where(T < 80, 2.3 - 0.8 * T / 80, 2.25)))
    assert verdict == "oscillating", n


def test_flat_curve_is_too_slow():
    verdict, n = lr_curve_verdict(curve(np.linspace(2.3, 2.2, 300), noise=0.1))
    assert verdict == "too slow" and n["drop"] < sweep.SLOW_DROP, n


def test_too_slow_relative_to_the_best_rate_of_the_sweep():
    losses = curve(2.3 - 0.5 * (1 - np.exp(-T / 100)))  # falls ~20%: fine alone...
    assert lr_curve_verdict(losses)[0] == "healthy"
    verdict, n = lr_curve_verdict(losses, best_drop=0.6)  # ...but well under half of what another rate did
    assert verdict == "too slow", n


def test_rate_that_stalls_above_a_smaller_rate_is_too_large():
    # Spikes, then levels off high (drop ~5%): alone it is just slow, but a smaller rate fell 14%.
    losses = curve(2.2 + 0.3 * np.exp(-((T - 5) / 4) ** 2) - 0.1 * (1 - np.exp(-T / 50)), noise=0.02)
    assert lr_curve_verdict(losses)[0] == "too slow"
    verdict, n = lr_curve_verdict(losses, best_drop=0.14, smaller_rate_drop=0.14)
    assert verdict == "too large" and n["smaller_rate_drop"] - n["drop"] > sweep.TOO_LARGE_MARGIN, n
    # the smallest rate of a sweep has no smaller one to compare with: too slow, never too large
    assert lr_curve_verdict(losses, best_drop=0.14, smaller_rate_drop=None)[0] == "too slow"


def test_recorded_cifar10_sweep():
    # Per-step losses of a real sweep (tiny ViT, CIFAR-10 subset, 3 epochs; see the file's "source"): 1e-2 and
    # 5e-3 spike and level off high, 1e-3..1e-4 fall steadily; 5e-4 has the lowest validation loss.
    recorded = json.loads((Path(__file__).parent / "data" / "lr_sweep_cifar10_tiny.json").read_text())
    runs = [{"lr": r["lr"], "error": None, "final_val_loss": r["final_val_loss"],
             "curve": list(enumerate(r["losses"], 1))} for r in recorded["runs"]]
    sweep.judge_runs(runs)
    assert {r["lr"]: r["verdict"] for r in runs} == {
        1e-2: "too large", 5e-3: "too large", 1e-3: "healthy", 5e-4: "healthy", 1e-4: "healthy"}
    lr, advice = sweep.recommend_lr(runs)
    assert lr == 5e-4 and "--optim.lr 0.0005" in advice
    # each curve alone: the stalled large rates only look slow, which is why the sweep compares them
    assert lr_curve_verdict(recorded["runs"][0]["losses"])[0] == "too slow"


def test_recommend_picks_healthy_rate_with_lowest_val_loss():
    runs = [{"lr": 1e-2, "verdict": "oscillating", "final_val_loss": 0.5},
            {"lr": 1e-3, "verdict": "healthy", "final_val_loss": 1.0},
            {"lr": 5e-4, "verdict": "healthy", "final_val_loss": 1.2},
            {"lr": 1e-4, "verdict": "too slow", "final_val_loss": 2.0}]
    lr, advice = sweep.recommend_lr(runs)
    assert lr == 1e-3 and "--optim.lr 0.001" in advice
    lr, advice = sweep.recommend_lr([{**r, "verdict": "diverged"} for r in runs])
    assert lr is None and "too large" in advice
    lr, advice = sweep.recommend_lr([{**r, "verdict": v} for r, v in zip(runs, ["too large", "oscillating",
                                                                                 "too slow", "too slow"])])
    assert lr is None and "between" in advice
    lr, advice = sweep.recommend_lr([{**r, "verdict": "too slow"} for r in runs])
    assert lr is None and "too slow" in advice and "--epochs" in advice


def test_range_suggestion_is_at_the_steepest_descent():
    lrs = list(np.geomspace(1e-6, 1, 200))
    x = np.log10(lrs)
    losses = list(2.3 - 1.0 / (1 + np.exp(-(x + 3) * 4)) + np.where(x > -1, (x + 1) * 20, 0))  # steepest at 1e-3
    out = lr_range.range_suggestion(lrs, losses, span=5)
    assert 5e-4 < out["suggested_lr"] < 2e-3, out["suggested_lr"]
    assert 0.05 < out["min_loss_lr"] < 0.2


# --- the commands end to end (tiny models on synthetic data, in this process)

def test_sweep_lr_end_to_end(tmp_path, capsys, monkeypatch):
    # lr 5 really diverges: a forward that turns NaN once its run reaches epoch 2 stands in for the blow-up,
    # so the trainer raises Diverged exactly as it would (and quickly).
    import vitdist.train.run as train_mod  # where train_trial finds train()
    from vitdist.model import VisionTransformer

    real_train, real_forward = train_mod.train, VisionTransformer.forward

    def train_nan_at_high_lr(cfg):
        if cfg.optim.lr < 1:
            return real_train(cfg)
        calls = {"n": 0}

        def forward(self, x):
            calls["n"] += self.training
            return real_forward(self, x) * (math.nan if calls["n"] > 8 else 1.0)

        with monkeypatch.context() as m:
            m.setattr(VisionTransformer, "forward", forward)
            return real_train(cfg)

    monkeypatch.setattr(train_mod, "train", train_nan_at_high_lr)
    out_dir = tmp_path / "sweep"
    # 7 epochs of 8 steps: 56 steps a curve, enough for a verdict (sweep.MIN_JUDGE_STEPS)
    assert main(["lr", *TINY_FLAGS, "--epochs", "7", "--lrs", "5", "1e-2", "1e-5", "--sweep-dir", str(out_dir)]) == 0
    out = capsys.readouterr().out
    report = json.loads((out_dir / "sweep.json").read_text())
    verdicts = {r["lr"]: r["verdict"] for r in report["runs"]}
    assert verdicts == {5.0: "diverged", 1e-2: "healthy", 1e-5: "too slow"}, out
    assert report["recommended_lr"] == 1e-2 and "--optim.lr 0.01" in out
    diverged = report["runs"][0]
    # the 8 steps of epoch 1, then the step that went NaN (stored as null: sweep.json is strict JSON)
    assert "non-finite loss at epoch 2, step 9" in diverged["error"]
    assert [loss is None for _, loss in diverged["curve"]] == [False] * 8 + [True]
    json.loads((out_dir / "sweep.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in sweep.json"))
    assert (out_dir / "sweep.png").stat().st_size > 10_000
    # same seed and data order: every run starts from the same first-step loss
    firsts = {r["curve"][0][1] for r in report["runs"]}
    assert len(firsts) == 1, firsts
    # constant rate by default: each run's logged lr is its own, at every step
    steps = [json.loads(line) for line in open(out_dir / "lr_0.01" / "steps.jsonl")]
    assert len(steps) == 56 and {s["lr"] for s in steps} == {0.01}


def test_sweep_range_end_to_end(tmp_path, capsys):
    """Step k's rate is 1e-6 x 1e7 ** (k / 49), up to the step where the stop rule first holds; the suggestion is
    recomputed from the recorded curve as lr_range documents it: the steepest fall per log(lr) of the centred
    moving average (span 5% of the steps, at least 3), after the first 5% of the steps and before the minimum."""
    assert main(["range", *TINY_FLAGS, "--num-steps", "50", "--end-lr", "10", "--sweep-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "range.json").read_text())
    lrs, losses, n = report["lrs"], report["losses"], report["steps_run"]
    assert len(lrs) == len(losses) == n
    assert lrs == pytest.approx([1e-6 * 1e7 ** (k / 49) for k in range(n)], rel=1e-9)
    s, ema, stop = 0.0, [], None  # the stop rule: not finite, or an EMA of span 3 (beta 0.5) above 4x its minimum
    for k, v in enumerate(losses):
        if v is None:
            stop = k
            break
        s = 0.5 * s + 0.5 * v
        ema.append(s / (1 - 0.5 ** (k + 1)))  # bias-corrected
        if k >= 4 and ema[-1] > 4 * min(ema):
            stop = k
            break
    assert n == (50 if stop is None else stop + 1), report["stopped"]
    assert n < 50 and report["stopped"].startswith(("loss not finite", "smoothed loss above 4x"))  # lr 10 blows up

    lrs, losses = zip(*[(lr, v) for lr, v in zip(lrs, losses) if v is not None])
    smoothed = [float(np.mean(losses[max(0, i - 1):i + 2])) for i in range(len(losses))]
    i_min = int(np.argmin(smoothed))
    slopes = {i: (smoothed[i + 1] - smoothed[i - 1]) / math.log(lrs[i + 1] / lrs[i - 1])
              for i in range(max(1, int(0.05 * len(losses))), i_min)}
    steepest = min(slopes, key=slopes.get)
    assert slopes[steepest] < 0 and smoothed[i_min] < 0.97 * smoothed[0]  # a fall, and a 3% dip: a suggestion
    assert report["suggested_lr"] == pytest.approx(lrs[steepest], rel=1e-9)
    assert report["min_loss_lr"] == pytest.approx(lrs[i_min], rel=1e-9)
    assert (tmp_path / "range.png").stat().st_size > 10_000
    assert f"suggested lr {lrs[steepest]:.2g}" in capsys.readouterr().out


def test_sweep_grid_end_to_end(tmp_path, capsys):
    assert main(["grid", *TINY_FLAGS, "--epochs", "1", "--set", "optim.lr=1e-5,3e-3", "--set", "model.dropout=0,0.1",
                 "--random", "3", "--sweep-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    trials = report["trials"]
    assert len(trials) == 3 and report["grid"] == {"optim.lr": [1e-5, 3e-3], "model.dropout": [0.0, 0.1]}
    accs = [t["best_val_acc"] for t in trials]
    assert accs == sorted(accs, reverse=True) and [t["rank"] for t in trials] == [1, 2, 3]
    for t in trials:  # each trial ran with its own values
        cfg = json.loads((tmp_path / f"trial_{t['trial']:03d}" / "config.json").read_text())
        assert cfg["optim"]["lr"] == t["overrides"]["optim.lr"]
        assert cfg["model"]["dropout"] == t["overrides"]["model.dropout"]
    assert "ranked by best validation accuracy" in capsys.readouterr().out


def test_apply_overrides_types_and_nesting():
    from vitdist.presets import TINY

    grid = parse_grid(["optim.weight-decay=1e-4,1e-3", "data.augment=false", "epochs=3",
                             "model.num_classes=none,10", "precision=bf16"])
    assert grid == {"optim.weight_decay": [1e-4, 1e-3], "data.augment": [False], "epochs": [3],
                    "model.num_classes": [None, 10], "precision": ["bf16"]}
    cfg = apply_overrides(TINY, {"optim.weight_decay": 1e-3, "data.augment": False, "epochs": 3})
    assert cfg.optim.weight_decay == 1e-3 and not cfg.data.augment and cfg.epochs == 3
    assert cfg.optim.lr == TINY.optim.lr and cfg.model == TINY.model  # nothing else moved


# --- bad input: one line, exit 2

@pytest.mark.parametrize("argv, needle", [
    (["lr", "--lrs"], "--lrs is empty"),
    (["lr", "--lrs", "1e-3", "-1e-3"], "positive"),
    (["lr", "--lrs", "0"], "positive"),
    (["grid", "--set", "optim.nope=1,2"], "optim has no field 'nope'"),
    (["grid", "--set", "foo=1"], "unknown config field"),
    (["grid", "--set", "optim.weight_decay=abc"], "not a valid float"),
    (["grid", "--set", "precision=fp8"], "not one of"),
    (["grid", "--set", "model.dropout"], "FIELD=V1,V2"),
    (["grid", "--set", "model.dropout=0.1,1.5"], "--model.dropout"),
    (["grid"], "--set is missing"),
    (["range", "--start-lr", "1", "--end-lr", "1e-3"], "--start-lr"),
    (["nope"], "sweep mode 'nope' is unknown"),
])
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--sweep-dir", str(tmp_path)] if argv[0] != "nope" else argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


# --- real processes: `accelerate launch` on 2 CPU processes (gloo); only rank 0 writes and prints

def test_sweep_lr_under_accelerate_launch_two_processes(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO
    from test_distributed import free_port

    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(free_port()), "-m", "vitdist", "sweep", "lr", *TINY_FLAGS, "--epochs", "1", "--lrs", "1e-2", "1e-3",
           "--sweep-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) x micro-batch 16" in proc.stdout
    assert proc.stdout.count("lr sweep (per-step training loss") == 1  # printed by rank 0 only
    assert proc.stdout.count("=== sweep lr 1/2") == 1
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["lr"] for r in report["runs"]] == [1e-2, 1e-3]
    for r in report["runs"]:
        assert len(r["curve"]) == 8 and r["final_val_loss"] is not None  # one epoch of 8 global batches of 32
    assert (tmp_path / "sweep.png").exists()


@pytest.mark.parametrize("mode", ["lr", "grid"])
def test_sweeps_short_trial_default_is_what_help_shows_and_what_runs(tmp_path, capsys, mode):
    """`sweep lr` and `sweep grid` without --epochs run 5-epoch trials, not the preset's 100, and --help says 5."""
    with pytest.raises(SystemExit):
        main([mode, "--help"])
    shown = capsys.readouterr().out
    epochs_help = shown[shown.index("--epochs INT"):][:400]
    assert "(default: 5)" in epochs_help, epochs_help
    assert get_preset("tiny").epochs == 100  # the preset's own: what a sweep must not run
    chosen = ["--lrs", "1e-3"] if mode == "lr" else ["--set", "optim.lr=1e-3"]
    assert main([mode, *TINY_FLAGS, *chosen, "--sweep-dir", str(tmp_path)]) == 0
    assert f"sweep {mode}: 5 epochs a" in capsys.readouterr().out
    [trial] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((trial / "config.json").read_text())["epochs"] == 5
    assert len((trial / "metrics.jsonl").read_text().splitlines()) == 5


def test_curves_too_short_to_judge_get_that_verdict_and_the_best_measured_rate_is_suggested():
    """The recorded CIFAR-10 sweep cut to its first 7, 20 and 40 steps (issue 19 saw 7-40 step curves judged too
    slow or too large, and a suggestion pointing away from the rate with the lowest validation loss)."""
    recorded = json.loads((Path(__file__).parent / "data" / "lr_sweep_cifar10_tiny.json").read_text())
    for n in (7, 20, 40, sweep.MIN_JUDGE_STEPS - 1):
        runs = [{"lr": r["lr"], "error": None, "final_val_loss": r["final_val_loss"],
                 "curve": list(enumerate(r["losses"][:n], 1))} for r in recorded["runs"]]
        sweep.judge_runs(runs)
        assert {r["verdict"] for r in runs} == {"too short"}, n
        assert all(f"too short to judge: {n} steps" in sweep.describe(r["numbers"]) for r in runs)
        lr, advice = sweep.recommend_lr(runs)
        lowest = min(recorded["runs"], key=lambda r: r["final_val_loss"])["lr"]
        assert lr == lowest == 5e-4 and f"--optim.lr {lowest:g}" in advice and "too short" in advice, advice
    # a NaN is a verdict at any length
    assert lr_curve_verdict([2.3, 2.2, math.nan])[0] == "diverged"
    # at MIN_JUDGE_STEPS a curve is judged again
    assert lr_curve_verdict(recorded["runs"][2]["losses"][:sweep.MIN_JUDGE_STEPS])[0] != "too short"
