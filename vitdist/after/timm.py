"""A run's model as timm builds it: timm's VisionTransformer keyword arguments, the LayerNorm eps, class names and
preprocessing in timm_config.json, and timm_model(folder) to load such a folder back."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from ..config import UserError
from ..model import VisionTransformer
from .load import RunInfo, preprocessing


def timm_config(model: VisionTransformer, info: RunInfo) -> dict:
    """timm_config.json: timm VisionTransformer's keyword arguments (model_args), the LayerNorm eps to build its
    norm_layer with, the class names and the preprocessing, laid out as timm's own config.json files are."""
    m = info.config.model
    eps = {mod.eps for mod in model.modules() if isinstance(mod, torch.nn.LayerNorm)}
    if len(eps) != 1:  # timm takes one norm_layer for every LayerNorm
        raise ValueError(f"the model's LayerNorms differ in eps ({sorted(eps)}): one norm_layer cannot build them")
    mlp_ratio = m.dim_feedforward / m.embed_dim
    if int(m.embed_dim * mlp_ratio) != m.dim_feedforward:  # timm's Mlp: hidden = int(dim * mlp_ratio)
        raise UserError(f"--format timm: timm sizes the MLP as int(embed_dim * mlp_ratio), which cannot give this "
                        f"run's dim_feedforward {m.dim_feedforward} from embed_dim {m.embed_dim}: use --format "
                        f"safetensors or hub")
    model_args = {
        "img_size": m.img_size, "patch_size": m.patch_size, "in_chans": m.in_channels,
        "num_classes": model.head.out_features, "embed_dim": m.embed_dim, "depth": m.num_layers,
        "num_heads": m.num_heads, "mlp_ratio": mlp_ratio, "qkv_bias": True, "class_token": True,
        "global_pool": "token", "pos_embed": "learn", "no_embed_class": False, "pre_norm": False,
        "final_norm": True, "fc_norm": False,
        # vitdist's one dropout rate is timm's three (positions, attention, projections and MLP); timm's
        # drop_rate (before the head) has no vitdist counterpart. All are off in eval mode.
        "pos_drop_rate": m.dropout, "attn_drop_rate": m.dropout, "proj_drop_rate": m.dropout, "drop_rate": 0.0,
        "drop_path_rate": m.drop_path_rate,
    }
    pre = preprocessing(info)
    return {"architecture": "timm.models.vision_transformer.VisionTransformer", "model_args": model_args,
            # Not 1e-6 (timm's default): vitdist's LayerNorms use 1e-5, and the logits only match with it.
            "norm_layer_eps": eps.pop(), "label_names": info.classes,
            "pretrained_cfg": {"input_size": pre["input_size"], "mean": pre["mean"], "std": pre["std"],
                               "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": len(info.classes)}}


TIMM_README = """# {name}: a vitdist Vision Transformer for timm

`model.safetensors` holds the weights under timm's own names; `timm_config.json` holds the keyword arguments of
`timm.models.vision_transformer.VisionTransformer` (`model_args`), the LayerNorm eps (`norm_layer_eps`: vitdist's
LayerNorms use {eps:g}, not timm's default 1e-6), the class names (`label_names`) and the input normalization
(`pretrained_cfg`). In this folder:

```python
import functools, json, safetensors.torch, torch, timm.models.vision_transformer as vit
cfg = json.load(open("timm_config.json")); norm = functools.partial(torch.nn.LayerNorm, eps=cfg["norm_layer_eps"])
model = vit.VisionTransformer(**cfg["model_args"], norm_layer=norm).eval()
model.load_state_dict(safetensors.torch.load_file("model.safetensors"))
```

Or `vitdist.export.timm_model("{folder}")`. Inputs: (N, {c}, {s}, {s}) float, {how}.
"""


def timm_model(folder: str | Path):
    """timm's VisionTransformer built from a `vitdist export --format timm` folder, weights loaded strictly, in
    eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        import timm.models.vision_transformer as vit
    except ImportError:
        raise UserError("timm_model needs timm: pip install timm") from None
    if not (folder / "timm_config.json").is_file():
        raise UserError(f"{folder} has no timm_config.json: pass a folder written by `vitdist export --format timm`")
    cfg = json.loads((folder / "timm_config.json").read_text())
    model = vit.VisionTransformer(**cfg["model_args"],
                                  norm_layer=functools.partial(torch.nn.LayerNorm, eps=cfg["norm_layer_eps"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()
