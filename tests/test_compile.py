"""--compile: torch.compile of the model, in place. On this CPU it is only checked, never faster: compiled steps
follow eager ones, the weights keep plain names, and runs resume across the two."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from test_distributed import TINY_FLAGS, accelerate_launch, launch_killed_at, steps
from test_train import Crash, plain_eval
from vitdist.train import epoch as epoch_mod
from vitdist.model import VisionTransformer
from vitdist.train.run import train

# 320 training images / global batch 32: 10 steps an epoch, 20 in all.
OVER = dict(data={"synthetic_size": 400})
LOSS_RTOL = 1e-4  # the compiler reorders and fuses fp32 arithmetic: round-off, not another curve


def rows(path):
    return [json.loads(line) for line in open(path)]


def follows(ours: list[dict], ref: list[dict]) -> None:
    assert [r["step"] for r in ours] == [r["step"] for r in ref] == list(range(1, len(ref) + 1))
    for a, b in zip(ours, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (a, b)
        assert a["lr"] == b["lr"]


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eager") / "run"
    train(tiny_config(out, **OVER))
    return out


def test_compiled_steps_follow_eager_and_export_plain_weights(tmp_path, capsys, eager_run):
    from torch._dynamo.utils import counters

    run = tmp_path / "compiled"
    graphs = counters["stats"]["unique_graphs"]
    results = train(tiny_config(run, compile=True, **OVER))
    assert "; compiled; " in capsys.readouterr().out
    assert counters["stats"]["unique_graphs"] > graphs  # the compiler really ran (2 graphs: train, eval)
    assert not counters["graph_break"], dict(counters["graph_break"])  # each the whole model
    follows(rows(run / "steps.jsonl"), rows(eager_run / "steps.jsonl"))
    assert json.loads((run / "config.json").read_text())["compile"] is True

    # No `_orig_mod.` anywhere: the export and every checkpoint load as they are into an uncompiled model.
    names = set(load_file(eager_run / "model.safetensors"))
    exported = load_file(run / "model.safetensors")
    assert set(exported) == names
    for folder in (run / "checkpoints").iterdir():
        assert set(load_file(folder / "model.safetensors")) == names, folder
    plain = VisionTransformer.from_config(tiny_config(run).model, 10)
    plain.load_state_dict(exported, strict=True)
    val_loss, val_acc = plain_eval(run, exported, "val")
    best = rows(run / "metrics.jsonl")[results["best_epoch"] - 1]
    assert val_acc == pytest.approx(best["val_acc"], abs=1e-6)
    assert val_loss == pytest.approx(best["val_loss"], rel=1e-4)


@pytest.mark.parametrize("first,then", [(True, False), (False, True)], ids=["compiled-then-eager",
                                                                            "eager-then-compiled"])
def test_a_run_resumes_across_compiled_and_eager(tmp_path, monkeypatch, capsys, eager_run, first, then):
    """The first epoch one way, a crash right after its checkpoint, the second epoch the other way: the 20 steps
    follow the eager run's."""
    real_save = epoch_mod.save_checkpoint

    def save_then_die(accelerator, run_dir, state):
        real_save(accelerator, run_dir, state)
        raise Crash

    monkeypatch.setattr(epoch_mod, "save_checkpoint", save_then_die)
    run = tmp_path / "run"
    with pytest.raises(Crash):
        train(tiny_config(run, compile=first, **OVER))
    monkeypatch.setattr(epoch_mod, "save_checkpoint", real_save)
    train(tiny_config(run, compile=then, resume="auto", **OVER))
    out = capsys.readouterr().out
    assert "at epoch 1, step 10" in out and ("; compiled; " if then else "; eager; ") in out
    follows(rows(run / "steps.jsonl"), rows(eager_run / "steps.jsonl"))


def test_compiled_under_two_processes_killed_and_resumed(tmp_path):
    """2 gloo processes, compiled, every rank SIGKILLed at step 13 of 15 and resumed: the steps follow an eager
    2-process run's, and the exported weights stay plain. Each rank's micro-batch is the 32 of the tests above,
    so the compiler's cache from them serves here."""
    flags = [*TINY_FLAGS, "--data.synthetic-size", "400", "--batch.global-batch-size", "64", "--epochs", "3"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    proc = accelerate_launch("-m", "vitdist.train", *flags, "--run-dir", eager, num_processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    launch_killed_at(13, *flags, "--compile", "--run-dir", compiled, num_processes=2)
    assert sorted(p.name for p in (compiled / "checkpoints").iterdir()) == ["epoch_0002"]
    proc = accelerate_launch("-m", "vitdist.train", *flags, "--compile", "--run-dir", compiled, "--resume", "auto",
                             num_processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at epoch 2, step 10" in proc.stdout and "; DDP; AdamW fused; compiled;" in proc.stdout
    follows(steps(compiled), steps(eager))
    a, b = load_file(eager / "model.safetensors"), load_file(compiled / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)


def test_compile_is_refused_under_deepspeed(tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional [deepspeed] extra")
    from test_distributed import accelerate_launch as launch

    proc = launch("-m", "vitdist.train", *TINY_FLAGS, "--compile", "--run-dir", tmp_path / "run", num_processes=1,
                  extra=["--use_deepspeed", "--zero_stage", "2"])
    assert proc.returncode != 0 and "exitcode  : 2 " in proc.stderr, proc.stderr[-2000:]  # the launcher's is 1
    assert "vitdist: error: --compile does not run under DeepSpeed" in proc.stderr
    assert "vitdist/train.py" not in proc.stderr  # one line, no traceback
    assert not (tmp_path / "run").exists()
