"""Issue 16 (and 7, 14): eval, export and predict on run folders as users have them. A read-only run is refused
before any work, one line naming the path (eval writes elsewhere with --out); an export never replaces what is
there without --overwrite, and never deletes what it did not write; a run that never finished an epoch has no
best, and whatever checkpoint is scored is named; a live run's best may be its moving average; predict with
nothing readable exits 1; the model card names the validation split the run used and no local path; exported
weights have the user's usual file mode."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_config
from test_faults import image_folder
from vitdist.after import evaluate, export, predict
from vitdist.train import epoch as epoch_mod
from vitdist.after.load import EMA_FILE, load_run
from vitdist.train.run import train


def one_line_error(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitdist: error: "), text
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch run on a 2-class ImageFolder with train/ and test/ but no val/: its validation split is
    a 25% hold-out of train/. (run folder, data root)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see conftest.one_thread
    tmp = tmp_path_factory.mktemp("finished")
    root = image_folder(tmp / "flowers", ("ant", "bee"), (("train", 12), ("test", 4)), size=16)
    run = tmp / "run"
    train(tiny_config(run, epochs=1, batch={"global_batch_size": 8}, model={"img_size": 16, "patch_size": 4},
                      data={"name": "imagefolder", "root": str(root), "train_eval_size": 8, "val_fraction": 0.25}))
    yield run, root
    torch.set_num_threads(threads)


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory):
    """Two runs that stopped before their end, from one training with --ema.decay and a checkpoint every 3 steps
    (8 steps an epoch): `first`, copied as its first checkpoint was written, has never finished an epoch (its one
    checkpoint is 3 steps into epoch 1); `ema` crashed right after epoch 1's checkpoint, before model.safetensors,
    with the moving average as its best by construction (the average's validation accuracy planted at 1.0)."""
    tmp = tmp_path_factory.mktemp("unfinished")
    run, first = tmp / "ema", tmp / "first"
    real_save, real_evaluate = epoch_mod.save_checkpoint, epoch_mod.evaluate
    calls = []

    def evaluate(model, loader, augment, accelerator):
        loss, acc = real_evaluate(model, loader, augment, accelerator)
        calls.append(1)
        return (loss, 1.0) if len(calls) % 3 == 0 else (loss, acc)  # per epoch: val, clean train, the average

    def save(accelerator, run_dir, state):
        out = real_save(accelerator, run_dir, state)
        if not first.exists():
            shutil.copytree(run_dir, first)
        if out.name == "epoch_0001":
            raise Crash(out)
        return out

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Crash):
        mp.setattr(epoch_mod, "evaluate", evaluate)
        mp.setattr(epoch_mod, "save_checkpoint", save)
        train(tiny_config(run, epochs=2, checkpoint_every_steps=3, ema={"decay": 0.9}))
    torch.set_num_threads(threads)
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["epoch_0000_step_00000003"]
    assert not (run / "model.safetensors").exists()
    assert json.loads((run / "checkpoints" / "epoch_0001" / "train_state.json").read_text())["best_weights"] == "ema"
    return first, run


# --- 7: a read-only run folder

SCRIPT = """
import contextlib, io, json, sys
from vitdist.after import evaluate, export, predict
loads = []
for module in (evaluate, export, predict):
    real = module.load_run
    module.load_run = lambda *a, real=real, **k: loads.append(1) or real(*a, **k)
report = []
for name, argv in json.loads(sys.argv[1]):
    before, err = len(loads), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = {"eval": evaluate, "export": export, "predict": predict}[name].main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException as e:
            code = type(e).__name__
    report.append([code, err.getvalue(), len(loads) - before])
print(json.dumps(report))
"""


def read_only(folder: Path, on: bool) -> None:
    """A folder tree as a shared or archived run has it (folders 0555, files 0444), or back to 0755 / 0644."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o555 if on else 0o755) if path.is_dir() else (0o444 if on else 0o644))


def as_ordinary_user() -> list[str]:
    """The command prefix that makes permission bits hold: none for a user; as root (who ignores them), setpriv
    drops the two capabilities that override them (the test interpreter lives where uid nobody cannot run it)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("run as root without setpriv: root ignores a folder's permission bits")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_read_only_run_is_refused_before_the_work_and_eval_writes_elsewhere(finished, tmp_path):
    """eval, export and predict --out into a read-only run: exit 2 with one line naming the path and --out, before
    the model is loaded; `eval --out` scores the read-only run. One process, permission bits in force."""
    run, root = finished
    ro = tmp_path / "ro"
    shutil.copytree(run, ro)
    out = tmp_path / "scores"
    commands = [("eval", [str(ro)]),
                ("eval", [str(ro), "--out", str(out / "test.json")]),
                ("export", [str(ro), "--format", "safetensors"]),
                ("predict", [str(ro), str(root / "test"), "--out", str(ro / "preds.csv"), "--num-workers", "0"])]
    read_only(ro, True)
    try:
        proc = subprocess.run([*as_ordinary_user(), sys.executable, "-c", SCRIPT, json.dumps(commands)],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
    finally:
        read_only(ro, False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (eval_code, eval_err, eval_loads), (out_code, out_err, _), (export_code, export_err, export_loads), \
        (predict_code, predict_err, predict_loads) = json.loads(proc.stdout)
    assert eval_code == 2 and eval_loads == 0, eval_err
    line = one_line_error(eval_err)
    assert str(ro) in line and "--out" in line
    assert out_code == 0, out_err
    scores = json.loads((out / "test.json").read_text())
    assert scores["split"] == "test" and scores["num_samples"] == 8 and (out / "test.png").stat().st_size > 1000
    assert export_code == 2 and export_loads == 0, export_err
    line = one_line_error(export_err)
    assert str(ro / "export") in line and "--out" in line
    assert predict_code == 2 and predict_loads == 0, predict_err
    line = one_line_error(predict_err)
    assert str(ro / "preds.csv") in line and "--out" in line
    assert sorted(p.name for p in ro.iterdir()) == sorted(p.name for p in run.iterdir())  # nothing written


# --- 14: an export never replaces what is there without --overwrite

def refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        export.main([str(a) for a in argv])
    assert e.value.code == 2
    return one_line_error(capsys.readouterr().err)


def test_an_export_replaces_nothing_without_overwrite_and_deletes_only_its_own(finished, tmp_path, capsys):
    run, _ = finished
    taken = tmp_path / "m.safetensors"
    taken.write_text("someone's file")
    assert "--overwrite" in refused(capsys, [run, "--format", "safetensors", "--out", taken])
    assert taken.read_text() == "someone's file"
    assert export.main([str(run), "--format", "safetensors", "--out", str(taken), "--overwrite"]) == 0
    assert load_file(taken).keys() == load_run(run)[0].state_dict().keys()

    hub = tmp_path / "hub"  # a folder an upload would push as it is
    hub.mkdir()
    (hub / "notes.txt").write_text("private")
    for flags in ([], ["--overwrite"]):  # never deleted: no hub export writes notes.txt
        line = refused(capsys, [run, "--format", "hub", "--out", hub, *flags])
        assert "notes.txt" in line and str(hub) in line
    assert [p.name for p in hub.iterdir()] == ["notes.txt"]
    earlier = tmp_path / "earlier"
    assert export.main([str(run), "--format", "hub", "--out", str(earlier)]) == 0
    (earlier / "README.md").write_text("an old card")
    assert "--overwrite" in refused(capsys, [run, "--format", "hub", "--out", earlier])
    assert (earlier / "README.md").read_text() == "an old card"
    assert export.main([str(run), "--format", "hub", "--out", str(earlier), "--overwrite"]) == 0
    assert sorted(p.name for p in earlier.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "an old card" not in (earlier / "README.md").read_text()
    # A hub folder is not a timm export: its config.json is none of timm's files, so it stays.
    assert "config.json" in refused(capsys, [run, "--format", "timm", "--out", earlier, "--overwrite"])
    assert sorted(p.name for p in earlier.iterdir()) == ["README.md", "config.json", "model.safetensors"]


# --- 16 (a): no best without a finished epoch; the scored checkpoint named; a live run's best average

def test_a_run_without_a_finished_epoch_has_no_best_and_the_scored_checkpoint_is_named(unfinished, capsys):
    first, _ = unfinished
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(first), "--no-plot"])
    assert e.value.code == 2
    line = one_line_error(capsys.readouterr().err)
    assert "not finished an epoch" in line and "--weights last" in line and "epoch_0000_step_00000003" in line
    assert not list(first.glob("eval-*"))
    assert evaluate.main([str(first), "--weights", "last", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    scores = json.loads((first / "eval-val-last.json").read_text())
    assert (scores["weights"], scores["checkpoint"], scores["epoch"], scores["step"]) == \
        ("last", "epoch_0000_step_00000003", 0, 3)
    assert "epoch_0000_step_00000003" in printed.splitlines()[0] and "step 3" in printed.splitlines()[0]


def test_a_live_runs_best_is_its_average_where_the_average_won(unfinished, capsys):
    _, run = unfinished
    best = run / "checkpoints" / "epoch_0001"
    averaged = {k.removeprefix("module."): v for k, v in torch.load(best / EMA_FILE, weights_only=True).items()}
    raw = load_file(best / "model.safetensors")
    assert not torch.equal(averaged["head.weight"], raw["head.weight"])  # the test tells them apart
    model, info = load_run(run)
    got = model.state_dict()
    assert got.keys() == averaged.keys() and all(torch.equal(got[k], averaged[k]) for k in got)
    assert info.weights_file == best / EMA_FILE and (info.checkpoint, info.epoch, info.step) == ("epoch_0001", 1, 8)
    assert evaluate.main([str(run), "--no-plot"]) == 0
    scores = json.loads((run / "eval-val.json").read_text())
    assert (scores["weights"], scores["checkpoint"], scores["epoch"], scores["step"]) == ("best", "epoch_0001", 1, 8)
    assert "epoch_0001" in capsys.readouterr().out.splitlines()[0]


# --- 16 (b): predict with nothing readable

def test_predict_exits_1_when_no_input_could_be_read(finished, tmp_path, capsys):
    run, root = finished
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"not an image")
    assert predict.main([str(run), str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), "--num-workers", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "vitdist: none of the 2 inputs could be read as an image: nothing predicted", err
    assert sum("vitdist:" in line for line in err) == 3  # each skipped file, then the one line
    some = [str(tmp_path / "a.jpg"), str(next((root / "test" / "ant").iterdir()))]
    assert predict.main([str(run), *some, "--num-workers", "0"]) == 0  # one read: the run did its job


# --- 16 (c): the model card names the validation split the run used, and no local path

def test_the_model_card_states_the_validation_split_used_and_no_local_path(finished, tmp_path, capsys):
    run, root = finished
    out = tmp_path / "hub"
    assert export.main([str(run), "--format", "hub", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "- Source: imagefolder (flowers)" in card
    assert "validation: a seeded, stratified 25% hold-out of train/ (the data has no val/ folder)" in card
    assert "val/ folder (" not in card and "without one" not in card
    assert str(root) not in card and str(root) not in (out / "config.json").read_text()
    assert str(tmp_path.parent) not in card  # no local path of any kind in what an upload publishes


# --- 16 (d): weights files with the user's usual mode

def test_exported_weights_have_the_users_file_mode(finished, tmp_path, capsys):
    run, _ = finished
    mask = os.umask(0o022)
    try:
        for fmt in ("safetensors", "timm", "hub"):
            out = tmp_path / ("model.safetensors" if fmt == "safetensors" else fmt)
            assert export.main([str(run), "--format", fmt, "--out", str(out)]) == 0
    finally:
        os.umask(mask)
    written = sorted(tmp_path.rglob("*.safetensors"))
    assert len(written) == 3 and {p: mode(p) for p in written} == {p: 0o644 for p in written}


def test_a_trained_runs_weights_have_the_users_file_mode(finished):
    run, _ = finished
    mask = os.umask(0)
    os.umask(mask)
    assert mode(run / "model.safetensors") == 0o666 & ~mask
