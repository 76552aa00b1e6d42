"""Bad input fails at config time: one line on stderr, exit status 2, naming the flag. Overrides resolve."""

import pytest

from conftest import run_cli
from vitdist.cli import main
from vitdist.presets import PRESETS
from vitdist.train.command import parse_train_config


def fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("vitdist: error: ")
    return err


@pytest.mark.parametrize("argv, words", [
    (["--preset", "huge"], ["--preset", "huge", "tiny, small, base, overfit, demo"]),
    (["--model.embed-dim", "100", "--model.num-heads", "3"], ["--model.embed-dim 100", "--model.num-heads 3"]),
    (["--model.img-size", "32", "--model.patch-size", "5"], ["--model.img-size 32", "--model.patch-size 5"]),
    (["--optim.lr", "-0.001"], ["--optim.lr", "> 0"]),
    (["--optim.lr", "0"], ["--optim.lr"]),
    (["--batch.global-batch-size", "0"], ["--batch.global-batch-size"]),
    (["--batch.global-batch-size", "100", "--batch.micro-batch-size", "32"], ["--batch.micro-batch-size 32"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--data.root", "/no/such/folder"], ["--data.root /no/such/folder", "does not exist"]),
    (["--data.name", "imagefolder"], ["--data.root"]),
])
def test_bad_flags_exit_2_with_one_line(capsys, argv, words):
    err = fails(capsys, "train", *argv)
    for word in words:
        assert word in err


def test_imagefolder_without_splits(capsys, tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    err = fails(capsys, "train", "--data.name", "imagefolder", "--data.root", str(tmp_path))
    assert "train/ and val/ or test/" in err


def test_resume_without_a_checkpoint(capsys, tmp_path):
    err = fails(capsys, "train", "--data.name", "synthetic", "--run-dir", str(tmp_path / "r"), "--resume",
                str(tmp_path))
    assert f"--resume {tmp_path}" in err and "no complete checkpoint" in err


def test_global_batch_not_divisible_by_world(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    err = fails(capsys, "train", "--data.name", "synthetic", "--batch.global-batch-size", "32",
                "--run-dir", str(tmp_path))
    assert "--batch.global-batch-size 32" in err and "3 processes" in err


def test_cifar_missing_offline_says_where_it_looked(capsys, tmp_path):
    err = fails(capsys, "train", "--data.root", str(tmp_path), "--data.no-download", "--run-dir", str(tmp_path / "r"))
    assert str(tmp_path) in err and "--data.root" in err


def test_unknown_command(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_preset_and_overrides_resolve():
    cfg = parse_train_config(["--preset", "small", "--optim.lr", "3e-4", "--model.patch-size", "4", "--epochs", "7",
                              "--data.no-augment"])
    assert (cfg.model.embed_dim, cfg.model.num_layers, cfg.model.num_heads, cfg.model.dim_feedforward) == \
        (256, 6, 8, 1024)
    assert cfg.model.patch_size == 4 and cfg.optim.lr == 3e-4 and cfg.epochs == 7 and not cfg.data.augment
    assert cfg.optim.weight_decay == PRESETS["small"][1].optim.weight_decay  # untouched fields keep the preset's
    assert parse_train_config([]) == PRESETS["tiny"][1]


def test_checklist_defaults():
    cfg = PRESETS["tiny"][1]
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.model.dropout, cfg.batch.global_batch_size, cfg.epochs) == \
        (1e-3, 1e-4, 0.1, 128, 100)
    assert (cfg.optim.warmup_epochs, cfg.optim.min_lr, cfg.label_smoothing, cfg.optim.max_grad_norm,
            cfg.early_stop_patience) == (5.0, 1e-6, 0.1, 1.0, 15)
    overfit = PRESETS["overfit"][1]
    assert (overfit.data.train_subset, overfit.optim.lr, overfit.model.dropout, overfit.optim.weight_decay,
            overfit.data.augment, overfit.epochs * (32 // overfit.batch.global_batch_size)) == \
        (32, 5e-3, 0.0, 0.0, False, 200)


def test_help_shows_the_preset_values():
    out = run_cli("train", "--preset", "base", "--help")
    assert out.returncode == 0
    assert "--model.embed-dim" in out.stdout and "512" in out.stdout


def test_end_to_end_bad_flag_has_no_traceback():
    out = run_cli("train", "--model.embed-dim", "100", "--model.num-heads", "3")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "vitdist: error: --model.embed-dim 100 is not divisible by --model.num-heads 3: choose heads that divide "
        "it (e.g. 4 or 2 or 1)"]


def test_presets_command_lists_real_counts():
    out = run_cli("presets")
    assert out.returncode == 0
    assert "0.82M" in out.stdout and "4.80M" in out.stdout and "19.03M" in out.stdout
    assert "--data.no-augment" in out.stdout
    # the recipes: their sources' sizes (3.7M and 6.3M), what they aim at, and that no run here has measured it
    assert "3.72M" in out.stdout and "6.27M" in out.stdout
    assert out.stdout.count("here: not yet run here") == 2 and "Compact Transformers" in out.stdout


def test_every_entry_point_answers():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "vitdist"  # the console script, installed beside this Python
    for cmd in ([sys.executable, "-m", "vitdist.train", "--help"], [sys.executable, "-m", "vitdist", "--help"],
                [str(script), "train", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (cmd, out.stderr[-2000:])
        assert "--preset" in out.stdout or "train" in out.stdout
