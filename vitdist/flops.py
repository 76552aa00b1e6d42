"""Model FLOPs of the ViT, and the GPU peaks that turn throughput into MFU.

flops_per_image(): the analytic forward FLOPs of one image, from the model's shape alone (no model is built);
train_flops_per_image(): forward plus backward. Achieved TFLOPS is train_flops_per_image x images trained per
second / 1e12; mfu() divides it by the dense peak of the devices for the run's precision (PEAK_TFLOPS, or
VITDIST_PEAK_TFLOPS where the user gives it), or gives None where the peak is unknown (a CPU, an unlisted GPU, a
MIG slice).

A multiply-add counts as 2 FLOPs, as torch.utils.flop_counter.FlopCounterMode counts it;
tests/test_flops.py holds the analytic count to FlopCounterMode's count of a real forward and backward.
"""

from __future__ import annotations

import math
import os
import re
from typing import Optional

from .config import ModelConfig, UserError

# The dense peak TFLOPS of one device at the run's precision, for a GPU the table below does not list (or a MIG
# slice, or a CPU): set, it is used in place of the table, so MFU is not left null.
PEAK_ENV = "VITDIST_PEAK_TFLOPS"


def flops_per_image(model_cfg: ModelConfig, num_classes: int) -> float:
    """Forward FLOPs of one image: the matrix products of model.VisionTransformer.

    Counted: the patch embedding (a conv that is one matrix product per patch), and in each block the qkv
    projection, the attention scores Q K^T and the attention-weighted values, the output projection, the
    MLP's fc1 and fc2; then the head. Left out: LayerNorms, softmax, GELU, dropout, biases, residual and
    position adds, the attention scale: elementwise work, a few per cent at most, which FlopCounterMode does
    not count either. num_classes is the data set's count; the config's own num_classes wins when set, as in
    VisionTransformer.from_config.
    """
    n_cls = model_cfg.num_classes or num_classes
    d, hidden, patches = model_cfg.embed_dim, model_cfg.dim_feedforward, model_cfg.num_patches
    tokens = patches + 1  # the class token goes through every block with the patches
    linears = 2 * tokens * (3 * d * d + d * d + 2 * d * hidden)  # qkv, proj, fc1, fc2
    attention = 2 * 2 * tokens * tokens * d  # Q K^T and (scores) V: over all heads together, T x T x D each
    head = 2 * d * n_cls  # the head reads the class token only
    return float(_patch_embed_flops(model_cfg) + model_cfg.num_layers * (linears + attention) + head)


def train_flops_per_image(model_cfg: ModelConfig, num_classes: int) -> float:
    """Forward plus backward FLOPs of one image, counted product by product rather than by the 3x rule.

    The backward of a product needs two products of the same size (the gradient of its input and of its
    weight), so it costs twice the forward, except the patch embedding's: its input is the images, which
    need no gradient, so only the weight gradient is computed. That makes it a little under 3x the forward.
    """
    return 3 * flops_per_image(model_cfg, num_classes) - _patch_embed_flops(model_cfg)


def _patch_embed_flops(model_cfg: ModelConfig) -> int:
    # The conv's stride is its kernel: one (in_channels x patch x patch) -> embed_dim product per patch.
    return 2 * model_cfg.num_patches * model_cfg.in_channels * model_cfg.patch_size ** 2 * model_cfg.embed_dim


# Dense (no 2:4 sparsity) peak TFLOPS per GPU and math: "fp32" on the CUDA cores, "tf32", "bf16" and "fp16"
# on the tensor cores (bf16/fp16 with fp32 accumulation, as PyTorch's matmuls accumulate). From NVIDIA's
# datasheets; where a datasheet prints only with-sparsity figures (marked * there) they are halved here,
# written as `/ 2`. A precision the chip has no tensor-core rate for is left out (no bf16 before Ampere).
#   A100 datasheet (SXM4 and PCIe, 40 and 80 GB print the same): FP32 19.5, TF32 156, BF16/FP16 312.
#   H100 datasheet: SXM FP32 67, TF32 989*, BF16/FP16 1,979*; PCIe FP32 51, TF32 756*, BF16/FP16 1,513*.
#   H200 datasheet: SXM as H100 SXM; NVL FP32 60, TF32 835*, BF16/FP16 1,671*.
#   L4 datasheet: FP32 30.3, TF32 120*, BF16/FP16 242*.
#   L40S datasheet: FP32 91.6, TF32 183 (366*), BF16/FP16 362.05 (733*).
#   A10 datasheet: FP32 31.2, TF32 62.5, BF16/FP16 125.
#   RTX 4090: Ada architecture whitepaper, appendix: FP32 82.6, TF32 82.6, FP16/BF16 with FP32 accumulate 165.2
#     (GeForce cards run FP32 accumulation at half the FP16-accumulate rate of 330.3).
#   V100 datasheet: SXM2 FP32 15.7, tensor (FP16) 125; PCIe 14 and 112; V100S PCIe 16.4 and 130.
#   T4 datasheet: FP32 8.1, mixed FP16/FP32 65.
# Not listed, for want of a vendor figure to cite or because one name covers chips that differ: A10G (AWS's
# part), H100 NVL (its datasheet has printed both per-card and per-pair figures), L40, GH200, laptop GPUs.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "H100 SXM": {"fp32": 67.0, "tf32": 989 / 2, "bf16": 1979 / 2, "fp16": 1979 / 2},
    "H100 PCIe": {"fp32": 51.0, "tf32": 756 / 2, "bf16": 1513 / 2, "fp16": 1513 / 2},
    "H200": {"fp32": 67.0, "tf32": 989 / 2, "bf16": 1979 / 2, "fp16": 1979 / 2},
    "H200 NVL": {"fp32": 60.0, "tf32": 835 / 2, "bf16": 1671 / 2, "fp16": 1671 / 2},
    "L4": {"fp32": 30.3, "tf32": 120 / 2, "bf16": 242 / 2, "fp16": 242 / 2},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05},
    "A10": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
    "V100 SXM2": {"fp32": 15.7, "fp16": 125.0},
    "V100 PCIe": {"fp32": 14.0, "fp16": 112.0},
    "V100S PCIe": {"fp32": 16.4, "fp16": 130.0},
    "T4": {"fp32": 8.1, "fp16": 65.0},
}

# torch.cuda.get_device_name() -> PEAK_TFLOPS key. Each pattern must match the whole name (after the vendor
# words are stripped), so that "A10" does not take "A10G" or "A100", nor "RTX 4090" the laptop part.
_DEVICE_PATTERNS: list[tuple[str, str]] = [
    (r"A100([- ](SXM4?|PCIE|\d+GB))*", "A100"),  # A100-SXM4-80GB, A100-PCIE-40GB, A100 80GB PCIe
    (r"H100 PCIE", "H100 PCIe"),
    (r"H100 (SXM5? ?)?(80GB)?( HBM3)?", "H100 SXM"),  # H100 80GB HBM3 is the SXM part (the PCIe card is HBM2e)
    (r"H200 NVL", "H200 NVL"),
    (r"H200( SXM| \d+GB| HBM3E)*", "H200"),
    (r"L4", "L4"),
    (r"L40S", "L40S"),
    (r"A10", "A10"),
    (r"RTX 4090", "RTX 4090"),
    (r"V100-SXM2-\d+GB", "V100 SXM2"),
    (r"V100-PCIE-\d+GB", "V100 PCIe"),
    (r"V100S-PCIE-\d+GB", "V100S PCIe"),
    (r"T4", "T4"),
]


def gpu_model(device_name: Optional[str]) -> Optional[str]:
    """The PEAK_TFLOPS key for a torch.cuda.get_device_name() string; None for None, a MIG slice or an unknown
    GPU. A MIG slice has a share of the chip's units, and the name does not say which share."""
    if device_name is None or "MIG" in device_name.upper():
        return None
    name = re.sub(r"^(NVIDIA |TESLA |GEFORCE )+", "", device_name.strip().upper())
    for pattern, key in _DEVICE_PATTERNS:
        if re.fullmatch(pattern, name):
            return key
    return None


def peak_tflops(device_name: Optional[str], precision: str, tf32: bool = False) -> Optional[float]:
    """Dense peak TFLOPS of one device for vitdist's --precision ("no", "bf16", "fp16"); None on a CPU
    (device_name None), an unknown GPU, or a precision the chip has no rate for (bf16 on a V100 or T4).
    $VITDIST_PEAK_TFLOPS, where set, is the peak whatever the device: the user's figure for their chip.

    precision "no" trains in fp32; tf32 says whether PyTorch may run those matmuls as TF32 on the tensor cores
    (pass `torch.get_float32_matmul_precision() != "highest"`; it is off by default). On chips without TF32
    (V100, T4) the flag does nothing and the fp32 rate applies. Convolutions follow torch.backends.cudnn's own
    TF32 flag (on by default); the patch embedding is the only one and a small share, so it is not counted apart.
    """
    if precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"precision must be 'no', 'bf16' or 'fp16', got {precision!r}")
    given = os.environ.get(PEAK_ENV, "").strip()
    if given:
        return _given_peak(given)
    key = gpu_model(device_name)
    if key is None:
        return None
    peaks = PEAK_TFLOPS[key]
    if precision == "no":
        return peaks["tf32"] if tf32 and "tf32" in peaks else peaks["fp32"]
    return peaks.get(precision)  # bf16 and fp16 autocast run every product in that math


def _given_peak(text: str) -> float:
    try:
        peak = float(text)
    except ValueError:
        peak = math.nan
    if not (math.isfinite(peak) and peak > 0):
        raise UserError(f"{PEAK_ENV}={text!r}: give one device's dense peak TFLOPS at the run's precision, a "
                        f"positive number (e.g. {PEAK_ENV}=312 for an A100 in bf16), or unset it")
    return peak


def mfu(achieved_tflops: float, peak: Optional[float], num_devices: int = 1) -> Optional[float]:
    """Model FLOPs utilisation: achieved TFLOPS over the peak of all devices that achieved it (the per-device
    peak times num_devices, when achieved_tflops counts every rank's images). None where the peak is unknown."""
    if peak is None:
        return None
    return achieved_tflops / (peak * num_devices)
