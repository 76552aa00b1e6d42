"""`vitdist plot` and plot_sweep: the PNGs are written, hold a real picture, and bad input exits 2."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from vitdist.checklist import plots
from vitdist.train.record import Run, read_run

DEMO_RUN = Path(__file__).parent / "data" / "demo_run"


def assert_picture(path: Path, min_bytes: int = 20_000) -> np.ndarray:
    """A PNG of some size with real content: many colors, not one flat fill."""
    assert path.is_file() and path.stat().st_size > min_bytes
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    colors = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colors) > 50 and img[..., :3].std() > 0.05
    return img


def mixup_run(tmp_path: Path) -> Run:
    """A second run: Mixup (no train_acc), a NaN val loss, a learning rate that reaches 0."""
    rows = [{"epoch": e, "train_loss": 2.3 - 0.05 * e, "train_acc": None, "train_clean_loss": 2.2 - 0.06 * e,
             "train_clean_acc": 0.1 + 0.03 * e, "val_loss": 2.25 - 0.05 * e if e != 7 else math.nan,
             "val_acc": 0.1 + 0.025 * e, "lr": 1e-3 * (1 - e / 20), "grad_norm_mean": 0.5 + 0.1 * e,
             "grad_norm_max": 1.0 + 0.3 * e} for e in range(1, 21)]
    return Run(tmp_path / "mixup", rows, None, [], None)


def test_one_run_and_several_overlaid(tmp_path):
    out = plots.plot_runs([read_run(DEMO_RUN)], tmp_path / "one.png")
    assert out == tmp_path / "one.png"
    one = assert_picture(out)
    two = assert_picture(plots.plot_runs([read_run(DEMO_RUN), mixup_run(tmp_path)], tmp_path / "sub" / "two.png"))
    assert one.shape != two.shape or not np.array_equal(one, two)


def test_runs_sharing_a_folder_name_get_distinct_labels(tmp_path):
    a, b = Run(tmp_path / "x" / "run", [], None, [], None), Run(tmp_path / "y" / "run", [], None, [], None)
    assert plots._run_labels([a, b]) == ["x/run", "y/run"]


def test_plot_sweep(tmp_path):
    curves = {
        "1e-2": [(s, 2.3 * 1.05 ** s) for s in range(1, 30)] + [(30, math.inf)],  # diverged
        "1e-3": [(s, 2.3 * math.exp(-s / 40) + 0.05 * (s % 3)) for s in range(1, 200)],
        "1e-4": [(s, 2.3 - 0.001 * s) for s in range(1, 200)],
        "empty": [],
    }
    verdicts = {"1e-2": "diverged", "1e-3": "healthy", "1e-4": "too slow"}
    out = plots.plot_sweep(curves, verdicts, tmp_path / "sweep" / "sweep.png")
    assert out == tmp_path / "sweep" / "sweep.png"
    assert_picture(out)


def test_cli_default_and_explicit_output(tmp_path, capsys):
    run = Path(shutil.copytree(DEMO_RUN, tmp_path / "demo"))
    assert plots.main([str(run)]) == 0
    assert_picture(run / "curves.png")
    assert plots.main([str(run), str(DEMO_RUN), "--out", str(tmp_path / "both.png")]) == 0
    assert_picture(tmp_path / "both.png")
    assert "both.png" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["{tmp}/missing"], "not a folder"),
    (["{tmp}"], "no metrics.jsonl"),
    (["{demo}", "--out", "{tmp}/x.jpg"], "must end in .png"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        plots.main([a.format(tmp=tmp_path, demo=DEMO_RUN) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
