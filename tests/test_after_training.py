"""Issue 11: after training. `vitdist eval` scores a saved model as the run did (and counts every sample once
across processes); `vitdist predict` preprocesses files exactly as the run's evaluation and keeps every input;
`vitdist.load_run` gives the model back in Python; `vitdist train` leaves the test split's eval files."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from PIL import Image

import vitdist
from conftest import REPO, run_cli, tiny_config
from test_distributed import accelerate_launch
from test_faults import image_folder
from vitdist.after import evaluate, export, predict
from vitdist.config import DataConfig
from vitdist.data.sources import load_data
from vitdist.train.run import train

CLASSES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """2 epochs of a tiny ViT on a 3-class ImageFolder with train/val/test (odd-sized images, resized to 16)."""
    tmp = tmp_path_factory.mktemp("after")
    root = image_folder(tmp / "data", CLASSES, (("train", 20), ("val", 5), ("test", 7)), size=21)
    # Texture, not flat colour: a resize (21 -> 16) done any other way than the run's changes these pixels.
    g = torch.Generator().manual_seed(0)
    for path in sorted(root.rglob("*.png")):
        noise = torch.randint(0, 256, (21, 21, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(noise).save(path)
    run = tmp / "run"
    train(tiny_config(run, epochs=2, batch={"global_batch_size": 12}, model={"img_size": 16, "patch_size": 4},
                      data={"name": "imagefolder", "root": str(root), "train_eval_size": 8}))
    return run, root


def test_train_leaves_the_test_splits_eval_files(folder_run):
    run, _ = folder_run
    results = json.loads((run / "results.json").read_text())
    scores = json.loads((run / "eval-test.json").read_text())
    assert scores["accuracy"] == results["test_acc"] and scores["loss"] == results["test_loss"]
    assert scores["classes"] == list(CLASSES) and scores["num_samples"] == 3 * 7
    assert scores["per_class_count"] == [7, 7, 7] and sum(map(sum, scores["confusion"])) == 21
    assert scores["top5_accuracy"] is None  # 3 classes: top-5 says nothing
    diagonal = sum(scores["confusion"][c][c] for c in range(3))
    assert diagonal / 21 == scores["accuracy"]
    assert (run / "confusion-test.png").stat().st_size > 10_000
    assert json.loads((run / "data.json").read_text())["classes"] == list(CLASSES)


def test_eval_reproduces_the_runs_numbers_on_each_split(folder_run, tmp_path):
    run, _ = folder_run
    before = json.loads((run / "eval-test.json").read_text())
    assert evaluate.main([str(run)]) == 0  # default split: test
    again = json.loads((run / "eval-test.json").read_text())
    assert {k: again[k] for k in ("accuracy", "confusion", "per_class_accuracy")} == \
        {k: before[k] for k in ("accuracy", "confusion", "per_class_accuracy")}
    assert abs(again["loss"] - before["loss"]) < 1e-6
    # Which weights: the run's own record (its state) and eval's (the metrics it reads) name the same checkpoint.
    assert {k: again[k] for k in ("checkpoint", "epoch", "step")} == {k: before[k] for k in ("checkpoint", "epoch",
                                                                                           "step")}
    best = max((json.loads(r) for r in open(run / "metrics.jsonl")), key=lambda r: r["val_acc"])
    evaluate.main([str(run), "--split", "val", "--no-plot"])
    val = json.loads((run / "eval-val.json").read_text())
    assert val["accuracy"] == best["val_acc"] and val["epoch"] == best["epoch"]
    assert abs(val["loss"] - best["val_loss"]) < 1e-5
    evaluate.main([str(run), "--split", "train", "--weights", "last", "--no-plot"])
    assert json.loads((run / "eval-train-last.json").read_text())["num_samples"] == 3 * 20


def test_eval_with_data_flags_overrides_the_runs_own(folder_run, tmp_path):
    """--data.root where the data moved: the run's other data settings hold."""
    run, root = folder_run
    moved = shutil.copytree(root, tmp_path / "moved")
    evaluate.main([str(run), "--data.root", str(moved), "--no-plot"])
    assert json.loads((run / "eval-test.json").read_text())["accuracy"] == \
        json.loads((run / "results.json").read_text())["test_acc"]


def test_eval_on_two_processes_counts_every_sample_once(tmp_path):
    """33 validation images split over 2 gloo processes (17 + 16, accelerate pads one): the same matrix as one
    process, summing to 33."""
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1, data={"synthetic_size": 330, "val_fraction": 0.1}))
    evaluate.main([str(run), "--split", "val", "--no-plot"])  # one process, here
    single = json.loads((run / "eval-val.json").read_text())
    two = accelerate_launch("-m", "vitdist.evaluate", run, "--split", "val", "--batch-size", "5", "--no-plot",
                            num_processes=2)
    assert two.returncode == 0, two.stderr[-2000:]
    double = json.loads((run / "eval-val.json").read_text())
    assert single["num_samples"] == double["num_samples"] == 33
    assert double["confusion"] == single["confusion"] and double["accuracy"] == single["accuracy"]
    assert abs(double["loss"] - single["loss"]) < 1e-6
    assert two.stdout.count("val: 33 images") == 1  # printed by rank 0 alone
    # Both ranks tear the process group down in order before exiting: left to the interpreter, gloo's threads
    # aborted rank 0 once (SIGABRT) after its work was done, in one of four clean-clone CI runs.
    report = accelerate_launch(REPO / "tests" / "fail_on_rank.py", run, "--split", "val", "--no-plot",
                               num_processes=2, env_extra={"FAIL_MAIN": "vitdist.evaluate", "FAIL_RANK": "none",
                                                           "FAIL_STEP": "0", "REPORT_GROUP": "1"})
    assert report.returncode == 0, report.stderr[-2000:]
    assert report.stdout.count("process group left up: False") == 2, report.stdout


def test_predict_preprocesses_as_the_run_evaluated(folder_run, tmp_path):
    """The test split's files through predict give the probabilities the model gives the run's own decoded
    test tensors; rows follow input order."""
    run, root = folder_run
    model, info = vitdist.load_run(run)
    assert info.classes == list(CLASSES) and info.weights == "best" and info.epoch is not None
    data = load_data(DataConfig(name="imagefolder", root=str(root), train_eval_size=8), 16, 0)
    with torch.no_grad():
        expected = model(info.normalize(data.test.images)).softmax(-1)
    files = sorted((root / "test").rglob("*.png"))  # ImageFolder's order: class folders, then names
    out = tmp_path / "p.jsonl"
    rows = predict.predict(predict.PredictArgs(str(run), (str(root / "test"),), top_k=3, out=str(out)))
    assert [r["path"] for r in rows] == [str(f) for f in files]
    assert [json.loads(line) for line in open(out)] == rows
    for r, p in zip(rows, expected):
        top_p, top_c = p.topk(3)
        assert r["classes"] == [CLASSES[c] for c in top_c.tolist()]
        assert max(abs(a - b) for a, b in zip(r["probs"], top_p.tolist())) < 1e-5


def test_predict_takes_any_image_keeps_order_and_reports_the_unreadable(folder_run, tmp_path, capsys):
    run, _ = folder_run
    Image.new("L", (50, 40), 128).save(tmp_path / "grey.png")
    Image.new("RGBA", (8, 8), (255, 0, 0, 100)).save(tmp_path / "rgba.png")
    Image.new("P", (20, 20)).save(tmp_path / "palette.gif")
    Image.new("RGB", (300, 200), (0, 90, 200)).save(tmp_path / "big.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    order = ["rgba.png", "broken.jpg", "big.jpg", "grey.png", "palette.gif"]
    out = tmp_path / "p.csv"
    predict.main([str(run), *(str(tmp_path / n) for n in order), "--top-k", "2", "--out", str(out)])
    captured = capsys.readouterr()
    rows = list(csv.DictReader(open(out)))
    assert [r["path"] for r in rows] == [str(tmp_path / n) for n in order]
    assert rows[1]["error"] and not rows[1]["class_1"]
    assert all(r["class_1"] in CLASSES and 0 < float(r["prob_1"]) <= 1 and not r["error"]
               for i, r in enumerate(rows) if i != 1)
    assert captured.err.count("vitdist: skipped") == 1 and str(tmp_path / "broken.jpg") in captured.err
    assert "predicted 4 images" in captured.out and "skipped 1 unreadable" in captured.out


def test_bad_input_is_one_line_and_exit_2(folder_run, tmp_path, capsys):
    """Through the command once (what a user sees), then each case through main() (the same handler)."""
    run, _ = folder_run
    (tmp_path / "empty").mkdir()
    proc = run_cli("eval", tmp_path / "empty", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"vitdist: error: {tmp_path / 'empty'} has no config.json: pass a run folder written by `vitdist train` "
        f"(its --run-dir)"], proc.stderr
    stripped = tmp_path / "stripped"
    shutil.copytree(run, stripped, ignore=shutil.ignore_patterns("model.safetensors", "checkpoints"))
    other = image_folder(tmp_path / "other", ("ant", "bee", "dog"), (("train", 4), ("val", 2), ("test", 2)))
    cases = [(evaluate, [stripped], "no model.safetensors and no complete checkpoint"),
             (evaluate, [run, "--data.root", tmp_path / "empty"], "--data.root"),
             (evaluate, [run, "--data.root", other], "are not the run's (ant, bee, cat)"),
             (predict, [tmp_path / "empty", tmp_path], "has no config.json"),
             (predict, [run, tmp_path / "missing.png"], "no such file or folder"),
             (predict, [run, tmp_path / "empty"], "no image files in")]
    for module, args, message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            module.main([str(a) for a in args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err, (args, err)
        assert err.startswith("vitdist: error:") and len(err.strip().splitlines()) == 1, (args, err)


def test_the_model_card_names_the_val_folder_the_run_validated_on(folder_run, tmp_path):
    """Issue 16 (c), a root with val/ (test_after_training_faults.py has the hold-out): that folder, by name; the
    card is published, so no path of this machine."""
    run, root = folder_run
    assert export.main([str(run), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert f"- Source: imagefolder ({root.name})\n" in card and "; validation: the data's val/ folder\n" in card
    assert "hold-out" not in card and str(root) not in card


def test_the_readme_loading_example_runs(folder_run, tmp_path):
    """README's five lines, on this run."""
    run, root = folder_run
    text = (REPO / "README.md").read_text()
    start = text.index("```python\nimport vitdist")
    example = text[start + len("```python\n"):text.index("```", start + 10)]
    image = next((root / "test" / "cat").glob("*.png"))
    namespace = {}
    exec(example.replace('"runs/latest"', repr(str(run))).replace('"cat.png"', repr(str(image))), namespace)
    assert namespace["info"].classes[int(namespace["probs"].argmax())] in CLASSES


def test_wandb_gets_the_confusion_matrix_per_class_accuracy_and_the_model(tmp_path, monkeypatch):
    """Offline: what the run folder's wandb log and media hold match eval-test.json, and the best weights are a
    model artifact."""
    import glob

    from wandb_offline import records

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1, data={"name": "digits"}, log={"wandb": True}))
    scores = json.loads((run / "eval-test.json").read_text())
    (offline,) = glob.glob(str(run / "wandb" / "offline-run-*"))

    def media(name):
        (table,) = glob.glob(f"{offline}/files/media/table/test/{name}_*.json")
        return json.loads(open(table).read())

    per_class = media("per_class_accuracy")
    assert per_class["columns"] == ["class", "accuracy", "images"]
    assert per_class["data"] == [[c, a, n] for c, a, n in zip(scores["classes"], scores["per_class_accuracy"],
                                                            scores["per_class_count"])]
    cells = media("confusion_matrix_table")["data"]  # (actual, predicted, count), row by row
    assert [[int(n) for _, _, n in cells[i * 10:(i + 1) * 10]] for i in range(10)] == scores["confusion"]
    (path,) = glob.glob(f"{offline}/run-*.wandb")
    models = [r.artifact for r in records(path)
              if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
    assert len(models) == 1 and "best" in models[0].aliases
    assert [c.path for c in models[0].manifest.contents] == ["model.safetensors"]
    assert json.loads(models[0].metadata)["epoch"] == json.loads((run / "results.json").read_text())["best_epoch"]
