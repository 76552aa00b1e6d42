"""The analytic FLOPs against torch's own count of a real model, and the GPU peak table."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vitdist.config import UserError
from vitdist.flops import PEAK_TFLOPS, flops_per_image, gpu_model, mfu, peak_tflops, train_flops_per_image
from vitdist.model import VisionTransformer
from vitdist.presets import PRESETS

BATCH = 2


def counted_flops(model_cfg, backward: bool, device: str = "meta") -> float:
    """FlopCounterMode's FLOPs per image of a real forward (and backward) of the model on a batch of 32px images.

    On the meta device the model's own code runs and dispatches the same ops, on shapes without data: the same
    count as on the CPU (test_the_meta_count_is_the_cpu_count), in a tenth of the time.
    On CPU, F.scaled_dot_product_attention dispatches to aten._scaled_dot_product_flash_attention_for_cpu, for
    which FlopCounterMode has no formula (it has them for the CUDA flash, efficient and cuDNN kernels): the
    attention would count as 0. The MATH backend decomposes it into two bmm products, which it does count.
    """
    torch.manual_seed(0)
    with torch.device(device):
        model = VisionTransformer.from_config(model_cfg, num_classes=10).train(backward)
        x, y = torch.randn(BATCH, 3, 32, 32), torch.arange(BATCH)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if backward:
            F.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / BATCH


CASES = [pytest.param(name, patch, id=f"{name}-patch{patch}") for name in PRESETS for patch in (8, 4)]

# Equal, not approximately: FlopCounterMode counts each product as 2 x M x N x K (conv, mm, addmm, bmm and their
# backward products) and the elementwise work not at all, as flops.py does term by term; both are integers far
# below 2**53, exact in a float. Any tolerance would hide a term: at tiny, patch 8, the head is 2 x 128 x 10 =
# 2,560 of 28,119,552 forward FLOPs (1e-4), each attention product 1%, the patch embedding 3% (the old
# rel=0.05 let any of them go missing there).


@pytest.mark.parametrize("name, patch_size", CASES)
def test_forward_flops_match_the_flop_counter(name, patch_size):
    model_cfg = replace(PRESETS[name][1].model, img_size=32, patch_size=patch_size)
    assert flops_per_image(model_cfg, 10) == counted_flops(model_cfg, backward=False)


@pytest.mark.parametrize("name, patch_size", CASES)
def test_forward_and_backward_flops_match_the_flop_counter(name, patch_size):
    model_cfg = replace(PRESETS[name][1].model, img_size=32, patch_size=patch_size)
    assert train_flops_per_image(model_cfg, 10) == counted_flops(model_cfg, backward=True)


def test_the_meta_count_is_the_cpu_count():
    model_cfg = replace(PRESETS["tiny"][1].model, patch_size=4)
    assert counted_flops(model_cfg, backward=True, device="cpu") == counted_flops(model_cfg, backward=True)


# Dense bf16 TFLOPS as the vendor prints them, copied by hand (halved where only the sparse figure is printed).
DEVICE_BF16 = {
    "NVIDIA H200": 989.5,
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA H100 80GB HBM3": 989.5,
    "NVIDIA H100 PCIe": 756.5,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA GeForce RTX 4090": 165.2,
    "NVIDIA L40S": 362.05,
    "NVIDIA L4": 121.0,
    "NVIDIA A10": 125.0,
}


@pytest.mark.parametrize("name, bf16", DEVICE_BF16.items())
def test_device_names_find_their_peak(name, bf16):
    assert peak_tflops(name, "bf16") == pytest.approx(bf16)
    assert peak_tflops(name, "fp16") == pytest.approx(bf16)  # the same tensor-core rate on every listed chip


def test_fp32_is_fp32_unless_tf32_is_allowed():
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "no") == 19.5
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "no", tf32=True) == 156.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", "no", tf32=True) == 494.5
    assert peak_tflops("Tesla V100-SXM2-16GB", "no", tf32=True) == 15.7  # Volta has no TF32: fp32 it is
    assert peak_tflops("Tesla V100-SXM2-16GB", "fp16") == 125.0
    assert peak_tflops("Tesla T4", "fp16") == 65.0


@pytest.mark.parametrize("name", [
    None,  # CPU
    "NVIDIA GeForce RTX 4090 Laptop GPU",  # another chip under a similar name
    "NVIDIA A10G",  # not A10, nor A100
    "NVIDIA L40",  # not L40S
    "NVIDIA GH200 480GB",  # not H200
    "NVIDIA H100",  # which H100 is not said
    "NVIDIA A100-SXM4-40GB MIG 3g.20gb",  # a share of the chip
    "AMD Instinct MI300X",
])
def test_no_peak_for_a_cpu_or_an_unknown_gpu(name):
    assert gpu_model(name) is None
    assert peak_tflops(name, "bf16") is None
    assert mfu(100.0, peak_tflops(name, "bf16")) is None


def test_no_bf16_peak_where_the_chip_has_no_bf16_tensor_cores():
    assert peak_tflops("Tesla V100-PCIE-32GB", "bf16") is None
    assert peak_tflops("Tesla T4", "bf16") is None


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="'fp8'"):
        peak_tflops("NVIDIA H200", "fp8")


def test_every_peak_is_ordered_fp32_tf32_bf16():
    for key, peaks in PEAK_TFLOPS.items():
        rates = [peaks[p] for p in ("fp32", "tf32", "bf16") if p in peaks]
        assert rates == sorted(rates), key
        assert peaks.get("bf16", peaks["fp16"]) == peaks["fp16"], key


def test_mfu_is_achieved_over_the_peak_of_all_devices():
    assert mfu(156.0, 312.0) == 0.5
    assert mfu(312.0, 312.0, num_devices=4) == 0.25
    assert mfu(0.0, 312.0) == 0.0


def test_a_peak_given_in_the_environment_is_the_peak_of_any_device(monkeypatch):
    """VITDIST_PEAK_TFLOPS: the user's figure for a chip the table does not list (a CPU here), and in place of
    the table's; anything but a positive number is one line naming the variable."""
    monkeypatch.setenv("VITDIST_PEAK_TFLOPS", "123.5")
    assert peak_tflops(None, "no") == peak_tflops("NVIDIA A10G", "bf16") == peak_tflops("NVIDIA H200", "bf16") == 123.5
    assert mfu(24.7, peak_tflops(None, "no"), num_devices=2) == pytest.approx(0.1)
    for bad in ("fast", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("VITDIST_PEAK_TFLOPS", bad)
        with pytest.raises(UserError, match=f"VITDIST_PEAK_TFLOPS={bad!r}: give one device's dense peak"):
            peak_tflops(None, "bf16")
