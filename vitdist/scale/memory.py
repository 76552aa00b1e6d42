"""The memory of one training step, estimated and measured.

estimate_memory(): weights, gradients, optimizer state and activations, by precision, ZeRO stage and world size;
`vitdist autobatch` prints it beside the measured peak, and it sizes the CPU fallback where there is no GPU.
measure(): the largest micro-batch whose real training step runs, found by doubling then bisecting over
StepProbe's steps (find_max_batch), every verdict agreed over all ranks.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..config import ModelConfig, TrainConfig

# Bucket sizes (elements) of configs/ds_zero*.json: DeepSpeed keeps buffers of this size on the GPU.
DEEPSPEED_BUCKET_ELEMENTS = 50_000_000
GB = 1e9  # decimal, as GPU makers and the checklist's table count
# torch.OutOfMemoryError is torch 2.5's device-agnostic name; torch.cuda.OutOfMemoryError is the same class
# there, and the only one in torch 2.4, which vitdist still supports.
OutOfMemoryError = torch.cuda.OutOfMemoryError


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
    """Bytes of one training step on one rank, as four groups of named parts."""

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
    # AdamW on CUDA runs foreach kernels over a whole parameter group: a temporary the size of the group's tensors
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


# --- the search: a pure function of try_batch

@dataclass(frozen=True)
class SearchResult:
    largest: int  # largest micro-batch whose step ran on every rank; 0 when not even 1 did
    capped: bool  # the search reached max_batch: more may fit
    trials: tuple[tuple[int, bool], ...]  # (batch, fitted on every rank), in order


def find_max_batch(try_batch: Callable[[int], bool], max_batch: int, *, tolerance: float = 0.0,
                   reduce_min: Optional[Callable[[int], int]] = None) -> SearchResult:
    """Largest b in [1, max_batch] for which try_batch(b) holds: double from 1, then bisect.

    try_batch returns False or raises OutOfMemoryError when b does not fit. Each verdict goes through
    reduce_min (default: the minimum over torch.distributed ranks when initialised) so that all ranks agree
    on every step of the search. Bisection stops once the bracket is within `tolerance` of the lower end.
    """
    reduce_min = reduce_min or all_ranks_min()
    trials = []

    def fits(b: int) -> bool:
        try:
            ok = bool(try_batch(b))
        except OutOfMemoryError:
            ok = False
        ok = bool(reduce_min(int(ok)))
        trials.append((b, ok))
        return ok

    lo, b = 0, 1  # lo: largest known to fit
    while fits(b):
        lo = b
        if b >= max_batch:
            return SearchResult(lo, True, tuple(trials))
        b = min(2 * b, max_batch)
    hi = b  # smallest known not to fit
    while hi - lo > max(1, int(lo * tolerance)):
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return SearchResult(lo, False, tuple(trials))


def all_ranks_min(device: Optional[torch.device] = None) -> Callable[[int], int]:
    """v -> the minimum of v over all ranks (torch.distributed all_reduce MIN); v itself without a group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return lambda v: v
    on = torch.device("cpu")
    if "gloo" not in str(dist.get_backend()):  # NCCL reduces CUDA tensors only
        on = device if device is not None and device.type == "cuda" else torch.device("cuda",
                                                                                     torch.cuda.current_device())

    def reduce(v: int) -> int:
        t = torch.tensor([v], dtype=torch.int64, device=on)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    return reduce


# --- the measurement: real steps on the GPU

class StepProbe:
    """try_batch for the search: one real training step at batch b; records each batch's peak memory."""

    def __init__(self, cfg: TrainConfig, num_classes: int, device: torch.device):
        from ..model import VisionTransformer
        from ..optim import build_optimizer

        self.cfg, self.num_classes, self.device = cfg, num_classes, device
        self.model = VisionTransformer.from_config(cfg.model, num_classes).to(device).train()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
        self.peaks: dict[int, int] = {}
        self(1)  # the first step creates AdamW's moments: every later trial holds them, as training does

    def step(self, b: int) -> None:
        """Forward, backward, clip, AdamW: as train.py does it under accelerate, without the data loader."""
        m = self.cfg.model
        x = torch.randn(b, m.in_channels, m.img_size, m.img_size, device=self.device)
        y = torch.randint(0, self.num_classes, (b,), device=self.device)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm or math.inf)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, b: int) -> bool:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()  # start each trial unfragmented, as a fresh run does
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            self.step(b)
        except OutOfMemoryError:
            ok = False
        else:
            ok = True
            if cuda:
                self.peaks[b] = torch.cuda.max_memory_allocated(self.device)
        # Out of the except block, the traceback (and the tensors its frames hold) is gone.
        self.optimizer.zero_grad(set_to_none=True)
        if not ok and cuda:
            gc.collect()  # in case a reference cycle still holds some of the failed step's tensors
            torch.cuda.empty_cache()
        return ok

    def close(self) -> None:
        del self.model, self.optimizer
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()


@dataclass(frozen=True)
class Measurement:
    largest: int  # largest micro-batch whose step ran (on every rank); 0: not even 1
    capped: bool  # the search stopped at its cap: more may fit
    peak_bytes: Optional[int]  # torch.cuda.max_memory_allocated during the step at `largest`
    trials: int
    seconds: float
    cached: bool = False


def measure(cfg: TrainConfig, num_classes: int, device: torch.device, max_batch: int,
            memory_gb: Optional[float] = None, tolerance: float = 1 / 32,
            reduce_min: Optional[Callable[[int], int]] = None, progress: bool = False) -> Measurement:
    """Search for the largest micro-batch on `device` (a GPU), within memory_gb if given."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if memory_gb is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_gb * GB / total), device)
    bar = tqdm(desc="autobatch trials", unit="trial", leave=False, disable=not (progress and sys.stderr.isatty()))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # leave the run's RNG alone
        probe = StepProbe(cfg, num_classes, device)
        try:
            def try_batch(b: int) -> bool:
                bar.set_postfix(batch=b)
                bar.update(1)
                return probe(b)

            result = find_max_batch(try_batch, max_batch, tolerance=tolerance,
                                    reduce_min=reduce_min or all_ranks_min(device))
            peak = probe.peaks.get(result.largest)
        finally:
            bar.close()
            probe.close()
            if memory_gb is not None:
                torch.cuda.set_per_process_memory_fraction(1.0, device)
    return Measurement(result.largest, result.capped, peak, len(result.trials), time.perf_counter() - t0)
