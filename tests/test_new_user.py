"""Issue 16: what a new user broke in an afternoon. Two runs in one folder, a closed pipe, a full disk, a W&B
run without a login, a torn or foreign config.json, data that moved: each is either carried through or stopped
in one line, and the run folder never records what did not happen."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config
from test_faults import image_folder
from test_record import FLAGS, rows
from vitdist.after import evaluate, export, predict
from vitdist import train as train_mod
from vitdist.train import step as step_mod

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def vitdist(*args) -> list[str]:
    return [sys.executable, "-m", "vitdist", *map(str, args)]


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)


# --- 1. one run per folder

def test_a_second_run_on_a_held_folder_stops_in_one_line_and_a_killed_holder_frees_it(tmp_path, capsys):
    """Two real processes: the first trains on; the second (another --optim.lr, --overwrite) is refused in one
    line naming the first's pid, and writes nothing. SIGKILL the first: the kernel releases its lock, and the next
    run in the folder goes ahead."""
    run = tmp_path / "run"
    first = subprocess.Popen(vitdist("train", *FLAGS, "--epochs", "400", "--run-dir", run), cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file() or first.poll() is not None, "the first epoch")
        assert first.poll() is None, first.stderr.read()[-2000:]
        capsys.readouterr()
        with pytest.raises(SystemExit) as refused:
            train_mod.main([*FLAGS, "--run-dir", str(run), "--optim.lr", "2e-3", "--overwrite"])
        err = capsys.readouterr().err.strip()
        assert refused.value.code == 2 and len(err.splitlines()) == 1, err
        assert f"--run-dir {run} is in use by another run (pid {first.pid} " in err, err
        assert first.poll() is None  # the first run goes on, untouched
        assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 1e-3
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert train_mod.main([*FLAGS, "--run-dir", str(run), "--overwrite"]) == 0  # the folder is free again
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in rows(run / "steps.jsonl")] == list(range(1, 25))


# --- 2. a closed stdout never stops a run

def test_a_run_piped_into_head_trains_to_the_end(tmp_path):
    """`vitdist train ... | head -3`, a real pipe: head leaves after three lines; the run trains on to its end,
    writes every record, exits 0, and says once on stderr why it printed no more."""
    run = tmp_path / "run"
    command = " ".join(vitdist("train", *FLAGS, "--run-dir", run)) + " | head -3"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) == 3
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3]
    assert len(rows(run / "steps.jsonl")) == 24
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 3
    assert (run / "model.safetensors").is_file() and (run / "checkpoints" / "epoch_0003").is_dir()
    assert proc.stderr.count("the reader of this output left") == 1 and "Traceback" not in proc.stderr


# --- 6. a full disk: one line naming the last complete checkpoint; resume past a torn line

def test_a_full_disk_in_the_log_writer_stops_in_one_line_and_the_resume_reads_past_the_torn_line(tmp_path, capsys,
                                                                                             monkeypatch):
    run = tmp_path / "run"
    real = step_mod.append_jsonl

    def fills_up(path, records):
        if path.name == "steps.jsonl" and records[0]["step"] > 16:  # epoch 3's first read: half a line, then full
            with open(path, "a") as f:
                f.write(json.dumps(records[0])[:20])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, records)

    monkeypatch.setattr(step_mod, "append_jsonl", fills_up)
    capsys.readouterr()
    assert train_mod.main([*FLAGS, "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"the disk holding {run} is full (No space left on device ({run / 'steps.jsonl'})" in err, err
    assert f"the last complete checkpoint is {run / 'checkpoints' / 'epoch_0002'}" in err, err
    assert "continue with: vitdist train --run-dir" in err
    assert not (run / "steps.jsonl").read_text().endswith("\n")  # the torn line is there

    monkeypatch.setattr(step_mod, "append_jsonl", real)
    assert train_mod.main(["--run-dir", str(run), "--resume", "auto"]) == 0
    assert [r["step"] for r in rows(run / "steps.jsonl")] == list(range(1, 25))
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3]


def test_a_full_disk_in_the_checkpoint_writer_names_the_last_complete_checkpoint(tmp_path, capsys, monkeypatch):
    """torch.save's own error on a full disk (a RuntimeError, errno lost) while epoch 2's checkpoint is written."""
    import torch

    run = tmp_path / "run"
    real_save = torch.save

    def full_in_epoch_2(obj, f, *args, **kwargs):
        if "epoch_0002" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_in_epoch_2)
    capsys.readouterr()
    assert train_mod.main([*FLAGS, "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file write failed" in err, err
    assert f"the last complete checkpoint is {run / 'checkpoints' / 'epoch_0001'}" in err, err


# --- 9. W&B without a login: one line, nothing written

def test_wandb_without_a_login_or_offline_mode_is_one_line_before_anything_is_written(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in ENV.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), WANDB_SILENT="true", XDG_CONFIG_HOME=str(home / ".config"))
    run = tmp_path / "run"
    proc = subprocess.run(vitdist("train", *FLAGS, "--run-dir", run, "--log.wandb"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err[-3000:]
    assert "W&B has no login here" in err and "WANDB_MODE=offline" in err and "wandb login" in err
    assert not run.exists()  # no config.json left behind to refuse the next run


# --- 10. a torn or foreign config.json on resume: one line

@pytest.mark.parametrize("damage, said", [
    (lambda text: text[: len(text) // 2], "is not valid JSON"),
    (lambda text: json.dumps({**json.loads(text), "sharpness_aware": True}),
     "a field this vitdist does not know, 'sharpness_aware': written by another version"),
    (lambda text: json.dumps({**json.loads(text), "optim": {**json.loads(text)["optim"], "lr": -1}}),
     "a value this vitdist does not allow (--optim.lr must be > 0"),
])
def test_a_damaged_config_on_resume_is_one_line(tmp_path, capsys, damage, said):
    run = tmp_path / "run"
    assert train_mod.main([*FLAGS, "--epochs", "1", "--run-dir", str(run)]) == 0
    config = run / "config.json"
    config.write_text(damage(config.read_text()))
    for command in (lambda: train_mod.main(["--run-dir", str(run), "--resume", "auto", "--epochs", "2"]),
                    lambda: evaluate.main([str(run)])):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            command()
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and f"{config}: it " in err and said in err, err


# --- 11. moved data: reading a run never needs its data; a command that reads data takes the new root first

def test_a_run_whose_data_moved_is_read_and_resumed_with_the_new_root(tmp_path, capsys):
    old = image_folder(tmp_path / "data", ("ant", "bee"), (("train", 10), ("val", 4), ("test", 4)), size=16)
    run = tmp_path / "run"
    train_mod.train(tiny_config(run, epochs=1, batch={"global_batch_size": 10}, model={"img_size": 16},
                                data={"name": "imagefolder", "root": str(old), "train_eval_size": 8}))
    new = tmp_path / "moved"
    shutil.move(old, new)
    image = next((new / "test" / "bee").iterdir())

    assert evaluate.main([str(run), "--data.root", str(new)]) == 0  # the README's own form
    assert json.loads((run / "eval-test.json").read_text())["num_samples"] == 8
    assert predict.main([str(run), str(image)]) == 0  # needs no data at all
    assert export.main([str(run), "--format", "safetensors", "--out", str(tmp_path / "x.safetensors")]) == 0
    import vitdist

    model, info = vitdist.load_run(run)
    assert info.classes == ["ant", "bee"]
    capsys.readouterr()
    assert train_mod.main(["--run-dir", str(run), "--resume", "auto", "--epochs", "2", "--data.root", str(new)]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["epoch"] for r in rows(run / "metrics.jsonl")] == [1, 2]
    # Without the new root, the command that needs the data says where it looked, on one line.
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(run)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and f"--data.root {old} does not exist" in err and len(err.splitlines()) == 1, err


# --- 8 (in part). the class count the data has, not another

def test_a_num_classes_other_than_the_datas_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_mod.main([*FLAGS, "--run-dir", str(tmp_path / "run"), "--model.num-classes", "7"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "--model.num-classes 7: the data (synthetic) has 10 classes" in err, err


# --- 16 (d). weights files the user can read as any other

def test_weights_files_have_the_users_usual_mode(tmp_path):
    from vitdist.files import umask

    run = tmp_path / "run"
    assert train_mod.main([*FLAGS, "--epochs", "1", "--run-dir", str(run)]) == 0
    usual = 0o666 & ~umask()
    for path in (run / "model.safetensors", run / "checkpoints" / "epoch_0001" / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == usual, (path, oct(path.stat().st_mode))


# --- 17. Ctrl-C while the data decodes: said once, not once per decoding worker

def test_ctrl_c_while_the_data_decodes_is_said_once_and_ends_in_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the whole foreground process group, the loader workers that decode the
    images included: only the run answers, once; it stops before training with nothing recorded."""
    root = image_folder(tmp_path / "data", ("ant", "bee"), (("train", 30), ("val", 2)), size=16)  # 60: 1.8 s
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fail_on_rank.py"), "--data.name", "imagefolder",
                             "--data.root", str(root), "--model.img-size", "16", "--batch.global-batch-size", "16",
                             "--run-dir", str(run),
                             "--log.no-tensorboard"], cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**ENV, "FAIL_RANK": "all", "FAIL_STEP": "0", "FAIL_WITH": "slow-decode"})
    children = f"/proc/{proc.pid}/task/{proc.pid}/children"
    wait_for(lambda: proc.poll() is not None or len(open(children).read().split()) >= 2, "the decoding workers")
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to every process of the group
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-3000:]
    assert err.count("vitdist: SIGINT: ") == 1 and "the data is still decoding" in err, err[-3000:]
    assert "vitdist: stopped on SIGINT before training began: nothing to save. Start again with: vitdist train " \
        "--data.name imagefolder" in err and "Traceback" not in err, err[-3000:]
    assert not (run / "config.json").exists()
