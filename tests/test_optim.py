"""AdamW's parameter groups: matrices decay, biases, norms, the position embedding and the class token do not."""

from __future__ import annotations

import torch

from vitdist.config import ModelConfig, OptimConfig
from vitdist.model import VisionTransformer
from vitdist.optim import build_optimizer

LAYERS = 2
# Every parameter of a 2-block ViT by name, sorted by hand into the two groups.
DECAYED = {"patch_embed.proj.weight", "head.weight"} | {
    f"blocks.{i}.{m}.weight" for i in range(LAYERS) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
NOT_DECAYED = {"cls_token", "pos_embed", "patch_embed.proj.bias", "norm.weight", "norm.bias", "head.bias"} | {
    f"blocks.{i}.{m}" for i in range(LAYERS)
    for m in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.bias", "attn.proj.bias",
              "mlp.fc1.bias", "mlp.fc2.bias")}


def tiny_model() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer.from_config(ModelConfig(embed_dim=32, num_layers=LAYERS, num_heads=2,
                                                     dim_feedforward=64), 10)


def test_weight_decay_groups_by_name():
    """Each parameter in exactly one group; the matrices with cfg.weight_decay, everything else with 0."""
    model = tiny_model()
    names = {id(p): name for name, p in model.named_parameters()}
    assert set(names.values()) == DECAYED | NOT_DECAYED and not DECAYED & NOT_DECAYED
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.05))
    grouped = {}
    for group in optimizer.param_groups:
        grouped.setdefault(group["weight_decay"], []).extend(names[id(p)] for p in group["params"])
    assert sorted(grouped) == [0.0, 0.05]
    assert sorted(grouped[0.05]) == sorted(DECAYED) and sorted(grouped[0.0]) == sorted(NOT_DECAYED)


def test_one_step_on_zero_gradients_shrinks_only_the_decayed():
    """With every gradient zero, AdamW's step is its decoupled decay alone: p x (1 - lr x wd) for the matrices,
    nothing for the rest (every parameter made non-zero first, so a decayed bias would show)."""
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        if name in DECAYED:
            assert torch.allclose(p, before[name] * (1 - 0.1 * 0.5)), name
        else:
            assert torch.equal(p, before[name]), name
