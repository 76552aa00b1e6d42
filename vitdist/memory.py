"""The analytic memory estimate of one training step: weights, gradients, optimizer state, activations.

`vitdist autobatch` prints it beside the measured peak; it also sizes the CPU fallback where there is no GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import ModelConfig

# Bucket sizes (elements) of configs/ds_zero*.json: DeepSpeed keeps buffers of this size on the GPU.
DEEPSPEED_BUCKET_ELEMENTS = 50_000_000
GB = 1e9  # decimal, as GPU makers and the checklist's table count


def vit_param_counts(m: ModelConfig, num_classes: int) -> tuple[int, int]:
    """(all parameters, those in matrices): matrices are what autocast copies to 16 bits for each step."""
    d, f, L = m.embed_dim, m.dim_feedforward, m.num_layers
    matrices = m.in_channels * m.patch_size ** 2 * d + L * (4 * d * d + 2 * d * f) + d * num_classes
    vectors = (d  # patch bias
               + d + (m.num_patches + 1) * d  # class token, positions
               + L * (3 * d + d + f + d + 4 * d)  # qkv, proj, fc1, fc2 biases; two LayerNorms
               + 2 * d + num_classes)  # final norm, head bias
    return matrices + vectors, matrices


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step on one rank, as three groups of named parts."""

    fixed: dict[str, float]  # held through the whole step, whatever the batch
    passes_only: dict[str, float]  # held through the forward and backward passes only, whatever the batch
    step_only: dict[str, float]  # added around the optimizer step, when the activations are gone
    per_sample: dict[str, float]  # grows with the micro-batch
    assumption: str  # the kernels and dtypes assumed, printed with the figures

    def peak(self, batch: int) -> float:
        fixed = sum(self.fixed.values())
        passes = fixed + sum(self.passes_only.values()) + batch * sum(self.per_sample.values())
        return max(passes, fixed + sum(self.step_only.values()))

    def max_batch(self, budget: float) -> int:
        fixed = sum(self.fixed.values())
        if budget - fixed < sum(self.step_only.values()):
            return 0
        return max(0, int((budget - fixed - sum(self.passes_only.values())) // sum(self.per_sample.values())))


def estimate_memory(m: ModelConfig, num_classes: int, precision: str, zero_stage: int = 0, world_size: int = 1,
                    offload: bool = False, device_type: str = "cuda") -> MemoryEstimate:
    """Weights, gradients, AdamW state (by precision, ZeRO stage and world size) and activations per sample.

    Stage 0 is what accelerate does without DeepSpeed: fp32 weights, autocast to 16 bits inside the forward
    pass (which saves 16-bit copies of the weights for backward). Stages 1-3 follow DeepSpeed: the model itself
    in 16 bits, fp32 master weights and AdamW moments sharded over the ranks (ZeRO paper, sec. 5).
    Activations count what autograd saves in the model as written (model.py), checked on CPU against the saved
    tensors themselves; the whole step's peak is checked on CPU against PyTorch's MemTracker, which follows
    every live tensor (tests/test_autobatch.py: within 5%; 2% for the presets). On CUDA, SDPA's flash and
    memory-efficient kernels keep no tokens x tokens matrix (only q, k, v, the output and a log-sum-exp), and
    dropout keeps a 1-byte mask; on CPU with dropout, SDPA falls back to its math kernel, which keeps fp32
    copies and three tokens x tokens tensors per head.
    """
    params, matrices = vit_param_counts(m, num_classes)
    mixed = precision in ("bf16", "fp16")
    cuda = device_type == "cuda"
    n = world_size
    fixed, passes_only, step_only = {}, {}, {}
    # AdamW on CUDA runs for_each over a whole parameter group: a temporary the size of the group's tensors
    # (the decayed matrices are the larger group). On CPU it goes tensor by tensor: two of the largest one.
    adamw_temp = 4 * matrices if cuda else 2 * 4 * max(m.embed_dim * m.dim_feedforward, 3 * m.embed_dim ** 2)
    if zero_stage == 0:
        r, a = 4, (2 if mixed else 4)  # residual stream bytes, matmul output bytes
        fixed["weights (fp32)"] = 4 * params
        fixed["AdamW moments (fp32)"] = 8 * params
        if mixed:  # saved for backward, freed with the activations: gone by the optimizer step
            passes_only["16-bit weight copies (autocast)"] = 2 * matrices
        if n > 1:
            fixed["DDP gradient buckets"] = 4 * params
        step_only["gradients (fp32)"] = 4 * params
        step_only["AdamW temporaries"] = adamw_temp
    else:
        r = a = wb = 2 if mixed else 4  # DeepSpeed runs the whole model in its dtype
        bucket = 2 * min(DEEPSPEED_BUCKET_ELEMENTS, params) * wb
        if offload:
            fixed["DeepSpeed buckets (weights, gradients and AdamW in CPU memory)"] = bucket
        else:
            fixed[f"weights ({8 * wb}-bit{', 1/%d' % n if zero_stage == 3 and n > 1 else ''})"] = (
                wb * params / (n if zero_stage == 3 else 1))
            fixed[f"gradients{' 1/%d' % n if zero_stage >= 2 and n > 1 else ''}"] = (
                wb * params / (n if zero_stage >= 2 else 1))
            fixed[f"fp32 master + AdamW{' 1/%d' % n if n > 1 else ''}"] = (12 if mixed else 8) * params / n
            fixed["DeepSpeed buckets"] = bucket
            step_only["AdamW temporaries"] = 4 * params / n  # the ZeRO optimizer steps one flat fp32 partition
    T, d, f, h, L = m.num_patches + 1, m.embed_dim, m.dim_feedforward, m.num_heads, m.num_layers
    dropout = m.dropout > 0
    mask = (1 if cuda else a) if dropout else 0  # CUDA's dropout keeps a bool mask, the CPU's one of x's dtype
    res_mask = (1 if cuda else r) if dropout else 0
    if cuda or not dropout:
        attention = 3 * a * T * d + 4 * h * T  # q, k, v (views of the qkv output), log-sum-exp
        kernel = "SDPA flash/memory-efficient attention (no tokens^2 matrix)"
    else:
        attention = 12 * T * d + 12 * h * T * T  # fp32 q, k, v copies; softmax, dropout mask, dropped weights
        kernel = "SDPA math attention on CPU (tokens^2 terms included)"
    # Per block: two LayerNorm inputs (r each); qkv input, projection input, fc1 input (a each); two
    # dropout masks; fc1 output, its dropout mask, fc2 input.
    block = T * d * (2 * r + 3 * a + 2 * mask) + T * f * (2 * a + mask) + attention
    pixels = m.in_channels * m.img_size ** 2
    edges = (a * pixels if a != 4 else 0) + res_mask * T * d + r * T * d + 12 * num_classes
    per_sample = {"activations saved for backward": L * block + edges,
                  "input batch (fp32)": 4 * pixels,
                  # The peak comes early in backward, in the last block's fc2: its input's gradient, beside the
                  # incoming gradient as the fp32 residual stream hands it to the 16-bit matmul (measured on CPU
                  # with PyTorch's MemTracker). CUDA's flash backward adds a 128-token padded fp32 dq buffer
                  # later, in the attention, once the MLP's tensors are freed: about as large for the presets.
                  "backward working memory": a * T * f + (r - a) * T * d}
    if zero_stage == 0:
        dtypes = f"{precision} autocast over fp32 weights" if mixed else "fp32"
    else:
        dtypes = (f"DeepSpeed ZeRO-{zero_stage}{' + offload' if offload else ''}, "
                  f"the model in {precision if mixed else 'fp32'}")
    return MemoryEstimate(fixed, passes_only, step_only, per_sample, f"{kernel}; {dtypes}")



def human(n: float) -> str:
    for unit, size in (("GB", GB), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def print_estimate(say, est: MemoryEstimate, batch: int, measured_peak: Optional[int] = None) -> None:
    say(f"  memory at micro-batch {batch:,} (analytic; assumes {est.assumption}):")
    rows = [(name, value, "") for name, value in est.fixed.items()]
    rows += [(f"{name} (forward and backward only)", value, "") for name, value in est.passes_only.items()]
    rows += [(name, batch * value, f"   ({human(value)} per sample)") for name, value in est.per_sample.items()]
    rows += [(f"{name} (optimizer step only)", value, "") for name, value in est.step_only.items()]
    rows.append(("estimated peak", est.peak(batch), ""))
    if measured_peak:
        rows[-1] = (*rows[-1][:2], f"   measured peak (torch.cuda.max_memory_allocated) {human(measured_peak)}, "
                                   f"estimate/measured {est.peak(batch) / measured_peak:.2f}")
    width = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        say(f"    {name:<{width}} {human(value):>10}{note}")
