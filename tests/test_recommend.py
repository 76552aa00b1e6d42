"""`vitdist recommend`: the checklist's tables by data-set size and GPU memory, real parameter counts, flags the
trainer accepts, bad input rejected with one line and exit 2."""

from __future__ import annotations

import pytest

from vitdist.checklist import recommend as rc
from vitdist.scale import plan as batch_plan
from vitdist.model import VisionTransformer, count_parameters
from vitdist.presets import PRESETS
from vitdist.train.command import parse_train_config


def test_the_batch_table_other_commands_import_is_unchanged():
    assert batch_plan.BATCH_BY_GPU_MEMORY_GB == [(16.0, (128, 256)), (8.0, (64, 128)), (4.0, (32, 64))]
    assert [batch_plan.batch_guess(g) for g in (80, 16, 15.9, 8, 4, 3.9)] == \
        [(128, 256), (128, 256), (64, 128), (64, 128), (32, 64), None]


@pytest.mark.parametrize("size,band", [
    (1, "overfit test"), (32, "overfit test"), (33, "small (< 10K)"), (9_999, "small (< 10K)"),
    (10_000, "medium"), (45_000, "medium"), (100_000, "medium"), (100_001, "large (> 100K)"),
])
def test_size_bands(size, band):
    assert rc.size_band(size) == band


# CHECKLIST.md's quick-reference tables, copied here by hand rather than read from recommend.py:
# band -> (learning rate, weight decay, dropout), each (low, high).
CHECKLIST_BY_DATA_SIZE = {
    "overfit test": ((5e-3, 1e-2), (0.0, 0.0), (0.0, 0.0)),
    "small (< 10K)": ((1e-4, 5e-4), (1e-3, 5e-3), (0.3, 0.5)),
    "medium": ((3e-4, 1e-3), (1e-4, 1e-3), (0.1, 0.3)),
    "large (> 100K)": ((1e-3, 5e-3), (1e-5, 1e-4), (0.0, 0.1)),
}
CHECKLIST_TEMPLATE = {"lr": 1e-3, "weight_decay": 1e-4, "dropout": 0.1}  # its "full template values"


def test_the_data_size_table_is_the_checklists():
    assert rc.BY_DATA_SIZE == CHECKLIST_BY_DATA_SIZE


@pytest.mark.parametrize("band", CHECKLIST_BY_DATA_SIZE)
def test_starting_values_lie_in_the_band(band):
    """In the checklist's own range for the band: the checklist's template value, moved to the range's nearer end."""
    values = rc.starting_values(band)
    ranges = dict(zip(CHECKLIST_TEMPLATE, CHECKLIST_BY_DATA_SIZE[band]))
    assert values == {name: min(max(CHECKLIST_TEMPLATE[name], low), high) for name, (low, high) in ranges.items()}


def test_medium_is_the_template_and_small_regularizes_more():
    template = PRESETS["tiny"][1]
    assert rc.starting_values("medium") == {"lr": template.optim.lr, "weight_decay": template.optim.weight_decay,
                                            "dropout": template.model.dropout}
    small, large = rc.starting_values("small (< 10K)"), rc.starting_values("large (> 100K)")
    assert small["dropout"] > large["dropout"] and small["weight_decay"] > large["weight_decay"]
    assert rc.starting_values("overfit test") == {"lr": 5e-3, "weight_decay": 0.0, "dropout": 0.0}


def test_batch_plan():
    assert rc.plan_batch(None, 128)[0] is None and "no GPU" in rc.plan_batch(None, 128)[1]
    assert rc.plan_batch(40, 128)[0] == 128  # the table's 256 capped at the global batch
    assert rc.plan_batch(8, 128)[0] == 128
    micro, why = rc.plan_batch(4, 128)
    assert micro == 64 and "2 accumulation steps" in why
    assert rc.plan_batch(2, 128)[0] == rc.BELOW_TABLE_MICRO_BATCH


def test_model_table_has_real_parameter_counts_matching_the_presets():
    rows = rc.model_table()
    assert [name for name, *_ in rows] == ["tiny", "small", "base"]
    for name, fields, params, _ in rows:
        preset_model = PRESETS[name][1].model
        assert {k: getattr(preset_model, k) for k in fields} == fields
        assert params == count_parameters(VisionTransformer.from_config(preset_model, num_classes=10))
    assert rows[0][2] < rows[1][2] < rows[2][2]


def run_main(argv, capsys, monkeypatch, gpu=None) -> str:
    monkeypatch.setattr(rc, "detect_gpu", lambda: gpu)
    assert rc.main(argv) == 0
    return capsys.readouterr().out


def flag_line(out: str) -> list[str]:
    return out.strip().splitlines()[-1].split()


def test_cli_small_data_on_a_4gb_gpu(capsys, monkeypatch):
    out = run_main(["--train-size", "5000", "--gpu-memory-gb", "4"], capsys, monkeypatch)
    assert "> small (< 10K)" in out and "821,642" in out  # the tiny ViT's real count, not the checklist's ~200K
    cfg = parse_train_config(flag_line(out))
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.model.dropout) == (5e-4, 1e-3, 0.3)
    assert cfg.batch.micro_batch_size == 64 and cfg.batch.global_batch_size == 128


def test_cli_detects_the_gpu_or_says_there_is_none(capsys, monkeypatch):
    out = run_main(["--train-size", "45000"], capsys, monkeypatch, gpu=("Fake GPU", 8.0))
    assert "detected: Fake GPU" in out and ">    8 GB" in out
    cfg = parse_train_config(flag_line(out))
    assert cfg.batch.micro_batch_size is None and cfg == parse_train_config(
        ["--optim.lr", "1e-3"])  # medium on 8 GB: the template itself
    out = run_main(["--train-size", "45000"], capsys, monkeypatch, gpu=None)
    assert "no GPU: the table's guess does not apply (CPU)" in out


def test_cli_overfit_size_points_at_the_overfit_preset(capsys, monkeypatch):
    out = run_main(["--train-size", "32"], capsys, monkeypatch)
    assert flag_line(out) == ["--preset", "overfit"]


@pytest.mark.parametrize("argv,flag", [
    (["--train-size", "0"], "--train-size"),
    (["--train-size", "-5"], "--train-size"),
    (["--train-size", "100", "--gpu-memory-gb", "0"], "--gpu-memory-gb"),
])
def test_bad_input_exits_2_with_one_line(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        rc.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and len(err.splitlines()) == 1
