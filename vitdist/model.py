"""The Vision Transformer: patch embedding, class token, learned positions, pre-norm blocks.

Knows nothing about distribution or precision: the Accelerator wraps it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from .config import ModelConfig


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a conv whose stride is the patch size."""

    def __init__(self, img_size: int, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, T, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample (timm's drop_path)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, dropout: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VisionTransformer(nn.Module, PyTorchModelHubMixin):
    """The mixin adds save_pretrained / from_pretrained / push_to_hub: it records the __init__ arguments as
    config.json (all plain numbers) and the weights as model.safetensors, under the same names as here."""

    def __init__(self, img_size: int = 32, patch_size: int = 8, in_channels: int = 3, embed_dim: int = 128,
                 num_layers: int = 4, num_heads: int = 4, dim_feedforward: int = 512, num_classes: int = 10,
                 dropout: float = 0.1, drop_path_rate: float = 0.0):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(dropout)
        rates = [drop_path_rate * i / max(num_layers - 1, 1) for i in range(num_layers)]  # linear over depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, dim_feedforward, dropout, rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    @classmethod
    def from_config(cls, cfg: ModelConfig, num_classes: int | None = None) -> "VisionTransformer":
        n = cfg.num_classes or num_classes
        if n is None:
            raise ValueError("num_classes is not set in the config; pass the data set's count")
        return cls(cfg.img_size, cfg.patch_size, cfg.in_channels, cfg.embed_dim, cfg.num_layers, cfg.num_heads,
                   cfg.dim_feedforward, n, cfg.dropout, cfg.drop_path_rate)

    def _init_weights(self):
        # timm's ViT init. The head is not zero-initialised: with a zero head no other parameter
        # would get a gradient on the first step, and the gradient check would (rightly) fail.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (beside biases and norms) that take no weight decay."""
        return {"pos_embed", "cls_token"}

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, (H/p)*(W/p), embed_dim): the patch embedding alone, for shape checks."""
        return self.patch_embed(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 1 + T, embed_dim): all tokens after the final norm (class token first)."""
        x = self.patch_embed(x)  # (B, T, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + T, D)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])  # (B, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
