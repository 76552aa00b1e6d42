"""--precision: what `auto` picks on this device, and what each explicit choice needs."""

from __future__ import annotations

import torch

from .config import UserError


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses on `device`: `auto` is bf16 on a GPU that runs it (compute capability 8.0+),
    fp32 with TF32 matmuls (`tf32`) on an older GPU, and fp32 (`no`) elsewhere. An explicit choice the device
    cannot run is the user's error, said in one line."""
    cuda = device.type == "cuda"
    bf16_gpu = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "auto":
        return "bf16" if bf16_gpu else "tf32" if cuda else "no"
    if precision in ("fp16", "tf32") and not cuda:
        why = "it relies on loss scaling" if precision == "fp16" else "TF32 is a GPU tensor-core format"
        raise UserError(f"--precision {precision} needs a CUDA GPU ({why}) and there is none here: use --precision "
                        f"auto, bf16 or no")
    if precision == "bf16" and cuda and not bf16_gpu:
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} cannot run bf16 (it needs compute "
                        f"capability 8.0+): use --precision auto (TF32), or fp16")
    return precision


def mixed_precision(precision: str) -> str:
    """accelerate's mixed_precision for a resolved precision: tf32 is fp32 storage with TF32 matmuls."""
    return "no" if precision == "tf32" else precision


def use_tf32(precision: str) -> None:
    """TF32 matmuls and convolutions for `tf32`, strict fp32 otherwise (PyTorch's default for matmuls)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
