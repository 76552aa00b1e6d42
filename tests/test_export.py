"""`vitdist export`: every format reproduces the run's logits, checked here independently of the command's own
check (on batch sizes the traced formats never saw), and bad input is one line and exit 2."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_config
from vitdist.after import export
from vitdist.train import epoch as epoch_mod
from vitdist.config import UserError
from vitdist.model import VisionTransformer
from vitdist.after.load import load_run
from vitdist.train.run import train

TRACE_BATCH = 2  # --check-batch: the example the traced formats see; they are tested on other sizes below


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run, shared: (run folder, its best model, its RunInfo). Two epochs on a subset of digits (which
    has a test split, so the run scores one), epoch 2's validation accuracy planted as 0: epoch 1 is the best and
    epoch 2 the last, with different weights, whatever the training did (test_train's trick)."""
    real_evaluate = epoch_mod.evaluate
    calls = {"n": 0}

    def evaluate(model, loader, augment, accelerator):
        loss, acc = real_evaluate(model, loader, augment, accelerator)
        calls["n"] += 1
        return (loss, 0.0) if calls["n"] == 3 else (loss, acc)  # per epoch: val, then clean train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see conftest.one_thread: the tiny model runs faster on one thread here
    folder = tmp_path_factory.mktemp("export") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(epoch_mod, "evaluate", evaluate)
        results = train(tiny_config(folder, epochs=2, data={"name": "digits", "train_subset": 256,
                                                               "val_subset": 64}))
    assert results["best_epoch"] == 1 and "test_acc" in results
    model, info = load_run(folder)
    yield folder, model, info
    torch.set_num_threads(threads)


def images(info, n: int, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return info.normalize(torch.randint(0, 256, (n, 3, info.img_size, info.img_size), generator=g, dtype=torch.uint8))


def reference(model, x):
    with torch.no_grad():
        return model(x)


def export_cli(capsys, *argv) -> tuple[str, float]:
    """Run `vitdist export ARGV` in this process: (its one printed line, the max |logit diff| it reports)."""
    assert export.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1, out
    figure = re.search(r"max \|logit diff\| (\S+)", out).group(1)
    return out, float(figure)


def one_line_error(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitdist: error: "), text
    return lines[0]


# --- each format reproduces the run's model

def test_safetensors_loads_strictly_into_a_fresh_model_with_identical_logits(run, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder, model, info = run
    line, reported = export_cli(capsys, folder, "--format", "safetensors")  # the default --out
    path = folder / "export" / "model.safetensors"
    assert str(path) in line and reported == 0.0
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["classes"]) == info.classes
    assert json.loads(meta["preprocessing"])["mean"] == list(info.config.data.mean)
    fresh = VisionTransformer(**json.loads(meta["model_config"])).eval()
    fresh.load_state_dict(load_file(str(path)), strict=True)
    x = images(info, 5)
    assert torch.equal(reference(fresh, x), reference(model, x))


def test_timm_builds_the_same_model(run, tmp_path, capsys):
    pytest.importorskip("timm")
    folder, model, info = run
    out = tmp_path / "timm"
    line, reported = export_cli(capsys, folder, "--format", "timm", "--out", out)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "timm_config.json", "README.md"}
    assert reported <= 1e-5 and "timm vs vitdist" in line
    cfg = json.loads((out / "timm_config.json").read_text())
    assert cfg["norm_layer_eps"] == 1e-5 and cfg["label_names"] == info.classes
    assert cfg["model_args"]["mlp_ratio"] == info.config.model.dim_feedforward / info.config.model.embed_dim
    timm_vit = export.timm_model(out)  # a strict load: timm's names and shapes are the file's
    assert type(timm_vit).__module__ == "timm.models.vision_transformer"
    x = images(info, 6)
    assert (reference(timm_vit, x) - reference(model, x)).abs().max().item() <= 1e-5
    assert "norm_layer_eps" in (out / "README.md").read_text()


def test_torchscript_runs_any_batch_size(run, tmp_path, capsys):
    folder, model, info = run
    out = tmp_path / "ts"  # an existing folder: the file goes inside it
    out.mkdir()
    line, reported = export_cli(capsys, folder, "--format", "torchscript", "--out", out,
                                "--check-batch", TRACE_BATCH)
    assert reported <= 1e-4 and f"on {TRACE_BATCH + 3} images" in line
    with export.quiet_jit():
        loaded = torch.jit.load(str(out / "model.pt"))
    for n in (1, 9):  # neither is the trace's batch
        x = images(info, n)
        assert (reference(loaded, x) - reference(model, x)).abs().max().item() <= 1e-4


def test_onnx_has_a_dynamic_batch_and_matches_in_onnxruntime(run, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    folder, model, info = run
    out = tmp_path / "model.onnx"
    line, reported = export_cli(capsys, folder, "--format", "onnx", "--out", out, "--check-batch", TRACE_BATCH)
    assert reported <= 1e-4 and "dynamic batch" in line
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one file: no external data beside it
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, free batch axis
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = images(info, n)
        got = session.run(["logits"], {"images": x.numpy()})[0]
        assert np.abs(got - reference(model, x).numpy()).max() <= 1e-4


def test_hub_folder_loads_with_from_pretrained_and_has_a_model_card(run, tmp_path, capsys):
    folder, model, info = run
    out = tmp_path / "hub"
    line, reported = export_cli(capsys, folder, "--format", "hub", "--out", out)
    assert reported == 0.0 and "needs a network and a token" in line
    loaded = VisionTransformer.from_pretrained(str(out), strict=True).eval()
    x = images(info, 5)
    assert torch.equal(reference(loaded, x), reference(model, x))
    assert json.loads((out / "config.json").read_text())["classes"] == info.classes
    card = (out / "README.md").read_text()
    best = info.results["best_epoch"]
    assert f"The best validation epoch, {best} of 2" in card and "never on test" in card and "digits" in card
    assert f"| validation | {info.results['best_val_acc']:.4f} (epoch {best}) |" in card
    assert f"| test | {info.results['test_acc']:.4f} |" in card
    assert "label smoothing 0.1" in card and "embed 32, 2 layers" in card
    assert "needs a network and a token" in card and "upload_folder" in card


def test_hub_card_of_the_last_weights_does_not_claim_the_best_epochs_test_score(run, tmp_path, capsys):
    folder, best_model, info = run
    out = tmp_path / "hub-last"
    export_cli(capsys, folder, "--format", "hub", "--out", out, "--weights", "last")
    card = (out / "README.md").read_text()
    assert "The run's last checkpoint, epoch 2" in card and "| validation | 0.0000 (epoch 2) |" in card
    assert f"| test | {info.results['test_acc']:.4f} |" not in card and "not measured for these weights" in card
    last_model, _ = load_run(folder, "last")
    loaded = VisionTransformer.from_pretrained(str(out), strict=True).eval()
    x = images(info, 3)
    assert torch.equal(reference(loaded, x), reference(last_model, x))
    assert not torch.equal(reference(loaded, x), reference(best_model, x))  # the last weights, not the best


# --- what cannot be checked, or fails its check

def test_without_timm_the_files_are_written_and_the_check_says_it_was_skipped(run, tmp_path, capsys,
                                                                             monkeypatch):
    folder, _, _ = run
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)
    out = tmp_path / "timm"
    assert export.main([str(folder), "--format", "timm", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "check skipped: timm is not installed" in line and (out / "model.safetensors").is_file()
    with pytest.raises(UserError, match="pip install timm"):
        export.timm_model(out)


def test_onnx_without_onnxruntime_is_one_line_exit_2(run, tmp_path, capsys, monkeypatch):
    folder, _, _ = run
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SystemExit) as e:
        export.main([str(folder), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert e.value.code == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--format onnx needs onnx" in line and "pip install 'vitdist[export]'" in line
    assert not (tmp_path / "m.onnx").exists()


def test_an_export_that_does_not_reproduce_the_logits_exits_1_with_the_figure(run, tmp_path, capsys,
                                                                             monkeypatch):
    folder, _, _ = run
    real_load = torch.jit.load

    def off_by_a_little(path):
        loaded = real_load(path)
        return lambda x: loaded(x) + 1e-3  # a runtime that drifts: the check must see it

    monkeypatch.setattr(torch.jit, "load", off_by_a_little)
    assert export.main([str(folder), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert "export check failed" in err and "max |logit diff| 1.0e-03 on 7 images is above 0.0001" in err

    def batch_baked_in(path):
        loaded = real_load(path)

        def forward(x):
            if x.shape[0] != 4:
                raise RuntimeError("shape '[4, 17, 3, 2, 16]' is invalid for input of size 4896")
            return loaded(x)
        return forward

    monkeypatch.setattr(torch.jit, "load", batch_baked_in)  # a runtime error is a failed check too, not a crash
    assert export.main([str(folder), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                        "--overwrite"]) == 1  # over the first, left there to inspect
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitdist: export check failed: torchscript: torch.jit.load could not run")
    assert len(err.splitlines()) == 1 and "on 7 images: shape '[4, 17, 3, 2, 16]' is invalid" in err


# --- bad input: one line, exit 2

def test_a_folder_that_is_not_a_run_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vitdist.export", str(tmp_path), "--format", "safetensors"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "has no config.json" in one_line_error(proc.stderr)
    assert not (tmp_path / "export").exists()


def test_a_run_without_weights_is_one_line_exit_2(run, tmp_path, capsys):
    folder, _, _ = run
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("checkpoints", "model.safetensors", "export"))
    with pytest.raises(SystemExit) as e:
        export.main([str(bare), "--format", "hub"])
    assert e.value.code == 2
    assert "no model.safetensors and no complete checkpoint" in one_line_error(capsys.readouterr().err)


def test_an_unknown_format_exits_2(run, capsys):
    folder, _, _ = run
    with pytest.raises(SystemExit) as e:
        export.main([str(folder), "--format", "tflite"])
    assert e.value.code == 2  # tyro's own usage box, several lines, naming the choices
    err = capsys.readouterr().err
    assert "tflite" in err and "onnx" in err


def test_a_check_batch_below_1_is_one_line_exit_2(run, capsys):
    folder, _, _ = run
    with pytest.raises(SystemExit) as e:
        export.main([str(folder), "--format", "torchscript", "--check-batch", "0"])
    assert e.value.code == 2
    assert "--check-batch must be >= 1, got 0" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("fmt", ["hub", "timm"])
def test_out_that_is_a_file_where_a_folder_is_needed_is_one_line_exit_2(run, tmp_path, capsys, fmt):
    folder, _, _ = run
    taken = tmp_path / "taken"
    taken.write_text("someone's file")
    with pytest.raises(SystemExit) as e:
        export.main([str(folder), "--format", fmt, "--out", str(taken)])
    assert e.value.code == 2
    assert "is a file" in one_line_error(capsys.readouterr().err)
    assert taken.read_text() == "someone's file"


def test_out_into_the_runs_own_record_is_refused(run, capsys):
    folder, _, _ = run
    weights = (folder / "model.safetensors").read_bytes()
    for out in (folder, folder / "checkpoints"):  # would overwrite model.safetensors / sit among checkpoints
        with pytest.raises(SystemExit) as e:
            export.main([str(folder), "--format", "safetensors", "--out", str(out)])
        assert e.value.code == 2
        assert "the run's own record" in one_line_error(capsys.readouterr().err)
    assert (folder / "model.safetensors").read_bytes() == weights
