"""`vitdist check`: the checklist's first page, run before any training.

    vitdist check [--preset NAME] [train overrides ...]

Three checks, one printed line each, PASS or FAIL with the numbers behind it; any FAIL exits 1 with what it
usually means. Each check is a function of a model factory (a callable returning a fresh nn.Module) and data, so
the tests can hand it a model with a planted bug and see it FAIL:

- shapes: input (N, 3, H, W); model.patch_tokens(x) is (N, (H/p)*(W/p), embed_dim); output (N, num_classes).
- gradients: after one backward pass every parameter has a finite, non-zero gradient, and the total gradient
  norm lies in 0.1..10.
- overfit: 32 stratified training samples, full batch, lr 5e-3, no dropout, weight decay, augmentation or label
  smoothing, up to 200 steps: the model must reach 100% training accuracy on them, from the run's seed or, when
  that start falls short, from one of the next two (check_overfit_seeds says why).

The overfit check is its own small loop, not a training run: no checkpoints, trackers or run folder.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Annotated, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

from ..config import GRAD_NORM_RANGE, OptimConfig, TrainConfig

# The checklist's numbers (CHECKLIST.md, "Before any training").
OVERFIT_SAMPLES = 32
OVERFIT_LR = 5e-3
OVERFIT_MAX_STEPS = 200
OVERFIT_MAX_GRAD_NORM = 1.0  # the checklist's clip; keeps lr 5e-3 without warmup from a first-step blow-up
OVERFIT_SEEDS = 3  # starts (initial weights) tried before a FAIL
OVERFIT_RETRY_FROM = 0.75  # a start whose best accuracy ends below this is no near miss: no other start is tried

HINT_SHAPES = ("wrong shapes: check the patch embedding (a conv with kernel = stride = patch_size), the flatten "
               "to (N, tokens, embed_dim), the position embedding's length and the head's output size")
HINT_NO_GRAD = ("parameters without a gradient are never used, or used through a detached tensor: check that "
                "the forward adds the position embedding, prepends the class token and feeds the head without "
                ".detach()")
HINT_GRAD_NORM = ("gradient norm outside 0.1..10: check that inputs are normalized and the initialization "
                  "(a huge norm explodes: lower the rate, clip; a tiny one vanishes: a zero or detached head)")
HINT_OVERFIT = ("this usually means a bug: labels misaligned with images, a detached or unused layer, logits and "
                "labels in the wrong order in the loss; if none is there, the model may need a lower rate "
                "(--overfit-lr) or more steps (--overfit-steps) to memorise its batch")

ModelFactory = Callable[[], nn.Module]
Batches = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]
"""step (0-based) -> (normalized images, labels): the batch the overfit loop trains on at that step."""


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    """The numbers behind the verdict, on one line."""
    hint: str = ""
    """What a FAIL usually means (empty on PASS)."""
    numbers: dict = field(default_factory=dict)

    def line(self) -> str:
        text = f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"
        return text if self.passed else f"{text}\n     -> {self.hint}"


def fixed_batch(images: torch.Tensor, labels: torch.Tensor) -> Batches:
    """The same full batch at every step (the overfit test's data)."""
    return lambda step: (images, labels)


def check_shapes(make_model: ModelFactory, images: torch.Tensor, num_classes: int, patch_size: int,
                 embed_dim: int) -> CheckResult:
    """Input (N, C, H, W), patch tokens (N, (H/p)*(W/p), embed_dim), output (N, num_classes)."""
    n, _, h, w = images.shape if images.ndim == 4 else (len(images), 0, 0, 0)
    want_tokens = (n, (h // patch_size) * (w // patch_size), embed_dim)
    want_out = (n, num_classes)
    numbers = {"input": list(images.shape), "expected_tokens": list(want_tokens), "expected_output": list(want_out)}
    if images.ndim != 4 or images.shape[1] != 3 or h % patch_size or w % patch_size:
        return CheckResult("shapes", False, f"input {tuple(images.shape)} is not (N, 3, H, W) with H and W "
                           f"divisible by patch size {patch_size}", HINT_SHAPES, numbers)
    model = make_model().eval()
    try:
        with torch.no_grad():
            tokens = model.patch_tokens(images)
            out = model(images)
    except Exception as e:  # a shape bug often shows as an error inside the forward
        return CheckResult("shapes", False, f"input {tuple(images.shape)}: the forward raised "
                           f"{type(e).__name__}: {str(e).splitlines()[0][:160]}", HINT_SHAPES, numbers)
    numbers.update(tokens=list(tokens.shape), output=list(out.shape))
    ok = tuple(tokens.shape) == want_tokens and tuple(out.shape) == want_out
    parts = [f"input {tuple(images.shape)}"]
    for what, got, want, formula in (("patch tokens", tuple(tokens.shape), want_tokens,
                                      f"(N, ({h}/{patch_size})*({w}/{patch_size}), embed_dim)"),
                                     ("output", tuple(out.shape), want_out, "(N, num_classes)")):
        parts.append(f"{what} {got} = {formula}" if got == want else f"{what} {got}, expected {want} = {formula}")
    detail = "; ".join(parts)
    return CheckResult("shapes", ok, detail, "" if ok else HINT_SHAPES, numbers)


def check_gradients(make_model: ModelFactory, images: torch.Tensor, labels: torch.Tensor,
                    norm_range: tuple[float, float] = GRAD_NORM_RANGE) -> CheckResult:
    """One forward and backward pass (cross-entropy, train mode): every parameter gets a finite, non-zero
    gradient, and the total norm lies in norm_range."""
    model = make_model().train()
    try:
        F.cross_entropy(model(images).float(), labels).backward()
    except Exception as e:
        return CheckResult("gradients", False, f"the forward/backward raised {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160]}", HINT_NO_GRAD)
    missing, nonfinite, zero, sq = [], [], [], 0.0
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    for name, p in params:
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            nonfinite.append(name)
        else:
            norm = p.grad.double().norm().item()
            if norm == 0.0:
                zero.append(name)
            sq += norm ** 2
    total = math.sqrt(sq) if not nonfinite else math.inf
    lo, hi = norm_range
    bad = len(missing) + len(nonfinite) + len(zero)
    in_range = lo <= total <= hi
    numbers = {"num_params": len(params), "total_norm": total, "no_grad": missing, "non_finite": nonfinite,
               "zero_grad": zero}
    detail = (f"{len(params) - bad}/{len(params)} parameters have a finite, non-zero gradient; total norm "
              f"{total:.3g} ({'in' if in_range else 'OUTSIDE'} {lo:g}..{hi:g})")
    for what, names in (("no gradient", missing), ("non-finite", nonfinite), ("zero gradient", zero)):
        if names:
            detail += f"; {what}: {_names(names)}"
    ok = bad == 0 and in_range
    hint = "" if ok else (HINT_NO_GRAD if bad else HINT_GRAD_NORM)
    return CheckResult("gradients", ok, detail, hint, numbers)


def check_overfit(make_model: ModelFactory, batches: Batches, max_steps: int = OVERFIT_MAX_STEPS,
                  lr: float = OVERFIT_LR, max_grad_norm: float = OVERFIT_MAX_GRAD_NORM) -> CheckResult:
    """Full-batch AdamW at a constant lr, no weight decay: PASS once the batch is classified 100% right.

    Accuracy is read from each step's forward pass, before its update: "after k steps" means k updates.
    """
    from ..optim import build_optimizer

    model = make_model().train()
    optimizer = build_optimizer(model, OptimConfig(lr=lr, weight_decay=0.0, warmup_epochs=0.0, min_lr=0.0))
    losses, best_acc, reached = [], 0.0, None
    t0 = time.perf_counter()
    for step in range(max_steps + 1):  # the last forward only measures the result of the last update
        x, y = batches(step)
        logits = model(x).float()
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean().item()
        losses.append(loss.item())
        best_acc = max(best_acc, acc)
        if acc == 1.0:
            reached = step
            break
        if step == max_steps or not math.isfinite(losses[-1]):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    n = len(y)
    numbers = {"samples": n, "lr": lr, "max_steps": max_steps, "steps_to_100": reached, "best_acc": best_acc,
               "final_acc": acc, "first_loss": losses[0], "final_loss": losses[-1], "losses": losses,
               "time_s": time.perf_counter() - t0}
    if reached is not None:
        detail = (f"100% training accuracy on {n} samples after {reached} steps (lr {lr:g}, limit {max_steps}); "
                  f"loss {losses[0]:.3f} -> {losses[-1]:.4f}")
        return CheckResult("overfit", True, detail, "", numbers)
    detail = (f"training accuracy on {n} samples reached only {best_acc:.1%} (final {acc:.1%}) in {len(losses) - 1} "
              f"steps (lr {lr:g}); loss {losses[0]:.3f} -> {losses[-1]:.4f}")
    return CheckResult("overfit", False, detail, HINT_OVERFIT, numbers)


def check_overfit_seeds(make_model: Callable[[int], nn.Module], batches: Batches, seeds: Sequence[int],
                        max_steps: int = OVERFIT_MAX_STEPS, lr: float = OVERFIT_LR,
                        max_grad_norm: float = OVERFIT_MAX_GRAD_NORM) -> CheckResult:
    """check_overfit from make_model(seed)'s weights, seed by seed, until one start PASSes.

    Why other starts rather than more steps: at lr 5e-3 without warmup most starts of the demo preset reach 100% in
    30-150 steps, but about one in fifteen keeps bouncing (seed 21 on 2 threads: 96.9% at 200 steps, 96.9% still at
    400), and which start is unlucky changes with the machine's thread count. A bug fails from every start, so the
    checklist's bar (100% within 200 steps) stays as it is, for each start; one start falling short says little
    about the code. A start whose best ends below OVERFIT_RETRY_FROM is no near miss (the planted bugs stay at or
    under 50-60%): no other start is tried, and a bug costs one attempt, not three.
    """
    tried: dict[int, CheckResult] = {}
    for seed in seeds:
        result = tried[seed] = check_overfit(lambda: make_model(seed), batches, max_steps, lr, max_grad_norm)
        if result.passed or result.numbers["best_acc"] < OVERFIT_RETRY_FROM:
            break
    best = {s: r.numbers["best_acc"] for s, r in tried.items()}
    numbers = {**result.numbers, "seed": seed, "best_acc_by_seed": best, "best_acc": max(best.values()),
               "time_s": sum(r.numbers["time_s"] for r in tried.values())}
    n, losses = numbers["samples"], numbers["losses"]
    loss = f"loss {losses[0]:.3f} -> {losses[-1]:.4f}"
    if result.passed:
        others = "".join(f"; seed {s} reached {b:.1%}" for s, b in best.items() if s != seed)
        detail = (f"100% training accuracy on {n} samples after {numbers['steps_to_100']} steps with seed {seed} (lr "
                  f"{lr:g}, limit {max_steps}{others}); {loss}")
        return CheckResult("overfit", True, detail, "", numbers)
    names = f"seed{'s' * (len(best) > 1)} {', '.join(map(str, best))}"
    gave_up = " (too far from 100% to be an unlucky start: no other seed tried)" * (len(best) < len(seeds))
    detail = (f"did not reach 100% on {n} samples in {max_steps} steps with {names} (best "
              f"{', '.join(f'{b:.1%}' for b in best.values())}; lr {lr:g}){gave_up}; seed {seed}'s {loss}")
    return CheckResult("overfit", False, detail, HINT_OVERFIT, numbers)


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# --- the command

@dataclass(frozen=True)
class CheckArgs:
    train: Annotated[TrainConfig, tyro.conf.arg(name="")]  # train's own flags, without a prefix
    """The model and data to check (a preset plus overrides, as for `vitdist train`)."""
    overfit_samples: int = OVERFIT_SAMPLES
    """Training samples (stratified) the overfit check must memorise."""
    overfit_steps: int = OVERFIT_MAX_STEPS
    """Full-batch steps the overfit check may take."""
    overfit_lr: float = OVERFIT_LR
    """Constant learning rate of the overfit check."""
    overfit_seeds: int = OVERFIT_SEEDS
    """Starts (initial weights from --seed, --seed + 1, ...) the overfit check may try before it FAILs."""


def run_checks(cfg: TrainConfig, samples: int = OVERFIT_SAMPLES, max_steps: int = OVERFIT_MAX_STEPS,
               lr: float = OVERFIT_LR, print_fn=print, seeds: int = OVERFIT_SEEDS) -> list[CheckResult]:
    """Load `samples` stratified training images of cfg's data, then run the three checks on cfg's model."""
    from accelerate.utils import set_seed

    from ..data.augment import BatchAugment
    from ..data.sources import load_data
    from ..model import VisionTransformer

    t0 = time.perf_counter()
    # No augmentation or mixing: the checks see the samples themselves, normalized as training would.
    data_cfg = replace(cfg.data, train_subset=samples, train_eval_size=samples, augment=False, color_jitter=False,
                       mixup_alpha=0.0, cutmix_alpha=0.0, rand_augment=None, trivial_augment=False,
                       random_erasing=0.0)
    data = load_data(data_cfg, cfg.model.img_size, cfg.seed)
    images = BatchAugment(data_cfg, data.num_classes).normalize(data.train.images)
    labels = data.train.labels
    num_classes = cfg.model.num_classes or data.num_classes
    print_fn(f"vitdist check: {data.source}, {len(labels)} training samples of {data.num_classes} classes "
             f"(loaded in {time.perf_counter() - t0:.1f}s); model embed {cfg.model.embed_dim}, "
             f"{cfg.model.num_layers} layers, patch {cfg.model.patch_size}")

    def factory(model_cfg):
        def make(seed: int = cfg.seed):
            set_seed(seed)  # every check starts from the same initial weights
            return VisionTransformer.from_config(model_cfg, num_classes)
        return make

    make = factory(cfg.model)
    make_plain = factory(replace(cfg.model, dropout=0.0, drop_path_rate=0.0))  # nothing may stop memorising
    results = []
    for run in (lambda: check_shapes(make, images, num_classes, cfg.model.patch_size, cfg.model.embed_dim),
                lambda: check_gradients(make, images, labels),
                lambda: check_overfit_seeds(make_plain, fixed_batch(images, labels),
                                            range(cfg.seed, cfg.seed + seeds), max_steps, lr)):
        results.append(run())
        print_fn(results[-1].line())
    return results


def main(argv: list[str] | None = None) -> int:
    from ..console import exit_on_user_error
    from ..config import UserError
    from ..presets import parse_with_preset

    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        args = parse_with_preset(CheckArgs, argv, "vitdist check",
                                 "Shape, gradient and overfit checks before training (PASS/FAIL, exit 1 on a FAIL).")
        for name in ("overfit_samples", "overfit_steps", "overfit_seeds"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if not args.overfit_lr > 0:
            raise UserError(f"--overfit-lr must be > 0, got {args.overfit_lr}")
        results = run_checks(args.train, args.overfit_samples, args.overfit_steps, args.overfit_lr,
                             seeds=args.overfit_seeds)
    failed = [r.name for r in results if not r.passed]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed"
          + (f"; FAIL: {', '.join(failed)}: fix before training" if failed else ": go on to `vitdist sweep lr`"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
