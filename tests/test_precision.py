"""--precision auto picks what the device runs best; an explicit choice the device cannot run is refused."""

import json

import pytest
import torch

from conftest import tiny_config
from vitdist.config import UserError
from vitdist.precision import mixed_precision, resolve_precision
from vitdist.train.run import train

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """A stand-in GPU; set .bf16 to say whether it runs bf16 (compute capability 8.0+), .emulated whether torch
    would emulate it (what is_bf16_supported says with including_emulation=True, its default, on an older GPU)."""
    class Gpu:
        bf16 = True
        emulated = False

    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: Gpu.bf16 or (including_emulation and Gpu.emulated))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    return Gpu


def test_auto_is_fp32_on_a_cpu_bf16_on_a_new_gpu_and_tf32_on_an_old_one(gpu):
    assert resolve_precision("auto", CPU) == "no"
    assert resolve_precision("auto", GPU) == "bf16"
    gpu.bf16 = False
    assert resolve_precision("auto", GPU) == "tf32"
    for explicit in ("no", "fp16", "tf32"):
        assert resolve_precision(explicit, GPU) == explicit
    assert [mixed_precision(p) for p in ("no", "tf32", "bf16", "fp16")] == ["no", "no", "bf16", "fp16"]


def test_a_gpu_that_only_emulates_bf16_gets_tf32(gpu):
    """torch says yes to bf16 on a pre-Ampere GPU unless asked without emulation (slow, and not what auto
    promises): auto picks tf32 there, and an explicit bf16 is refused."""
    gpu.bf16, gpu.emulated = False, True
    assert torch.cuda.is_bf16_supported() and not torch.cuda.is_bf16_supported(including_emulation=False)
    assert resolve_precision("auto", GPU) == "tf32"
    with pytest.raises(UserError, match="cannot run bf16"):
        resolve_precision("bf16", GPU)


@pytest.mark.parametrize("precision, device, words", [
    ("fp16", CPU, "--precision fp16 needs a CUDA GPU"), ("tf32", CPU, "--precision tf32 needs a CUDA GPU"),
    ("bf16", GPU, "--precision bf16: Old GPU cannot run bf16"),
])
def test_what_the_device_cannot_run_is_refused_in_one_line(gpu, precision, device, words):
    gpu.bf16 = False
    with pytest.raises(UserError, match=words):
        resolve_precision(precision, device)


def test_the_run_says_and_records_what_auto_chose(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", epochs=1))  # the default: auto
    assert "precision no (auto) (torch.float32 weights)" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "no"
