import pytest
import torch

from vitdist.model import VisionTransformer, count_parameters
from vitdist.presets import PRESETS


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
@pytest.mark.parametrize("patch_size", [8, 4])
def test_preset_shapes(name, patch_size):
    cfg = PRESETS[name][1].model
    model = VisionTransformer(img_size=32, patch_size=patch_size, embed_dim=cfg.embed_dim,
                              num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                              dim_feedforward=cfg.dim_feedforward, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    tokens = (32 // patch_size) ** 2
    assert model.patch_tokens(x).shape == (2, tokens, cfg.embed_dim)  # (N, 16, D) for patch 8
    assert model.forward_features(x).shape == (2, tokens + 1, cfg.embed_dim)
    assert model(x).shape == (2, 10)


def test_real_parameter_counts():
    """The checklist's ~200K / ~2M / ~10M are rough; these are the real counts (patch 8, 10 classes)."""
    counts = {name: count_parameters(VisionTransformer.from_config(PRESETS[name][1].model, 10))
              for name in ("tiny", "small", "base")}
    assert counts == {"tiny": 821_642, "small": 4_795_658, "base": 19_028_490}


def test_every_parameter_gets_a_gradient():
    model = VisionTransformer(embed_dim=32, num_layers=2, num_heads=2, dim_feedforward=64, num_classes=10,
                              dropout=0.1, drop_path_rate=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_drop_path_rises_linearly_over_depth():
    model = VisionTransformer(embed_dim=32, num_layers=4, num_heads=2, dim_feedforward=64, drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "p", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_eval_is_deterministic_and_train_mode_uses_dropout():
    model = VisionTransformer(embed_dim=32, num_layers=2, num_heads=2, dim_feedforward=64, dropout=0.5)
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
