"""`vitdist export RUN --format F`: a run's model in a form other tools load, each checked against the run itself.

    vitdist export runs/latest --format onnx                 # runs/latest/export/model.onnx, any batch size
    vitdist export runs/latest --format hub --out my-vit     # a save_pretrained folder with a model card
    vitdist export runs/latest --format timm --weights last

Formats, and what each export is checked by (logits of the exported model against the run's PyTorch model on
random images, normalized as the run normalizes; a check that fails exits 1 with its figure):
  safetensors  RUN/export/model.safetensors: the state dict, with the model config, class names and
               preprocessing in its metadata; loaded strictly into a fresh VisionTransformer, identical logits.
  timm         RUN/export/timm/: model.safetensors (timm's parameter names), timm_config.json, README.md;
               built by timm's VisionTransformer, max |diff| <= 1e-5 (skipped, and said so, without timm).
  torchscript  RUN/export/model.pt: torch.jit.trace; reloaded and run on another batch size, <= 1e-4.
  onnx         RUN/export/model.onnx: dynamic batch axis, input "images", output "logits"; run by onnxruntime
               on another batch size, <= 1e-4.
  hub          RUN/export/hub/: VisionTransformer.save_pretrained (huggingface_hub's mixin) plus a model card;
               from_pretrained, identical logits. Nothing is uploaded.

Every export holds fp32 weights, in eval mode (dropout off). Nothing already there is replaced without
--overwrite, and a folder that holds anything the format does not write is never used (an upload would push it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
import tyro

from .config import DataConfig, UserError
from .files import require_writable
from .files import make_readable, save_safetensors
from .model import VisionTransformer, count_parameters
from .runs import DATA_FILE, EMA_FILE, RunInfo, load_run, read_json, read_jsonl, run_config

Format = Literal["safetensors", "timm", "torchscript", "onnx", "hub"]
# --out's default, inside RUN/export/: a file for the one-file formats, a folder for the others.
DEFAULT_NAMES = {"safetensors": "model.safetensors", "timm": "timm", "torchscript": "model.pt",
                 "onnx": "model.onnx", "hub": "hub"}
FOLDER_FORMATS = ("timm", "hub")
# What a folder format writes: all --overwrite deletes, and all a folder may hold for the export to go into it.
FOLDER_FILES = {"timm": ("model.safetensors", "timm_config.json", "README.md"),
                "hub": ("model.safetensors", "config.json", "README.md")}

# The bound on max |logit diff| each check holds. The weights-only formats run the very same operations, so
# they must agree bit for bit; timm runs its own (mathematically equal) code; a traced graph and onnxruntime
# may fuse and reorder float operations.
TOLERANCE = {"safetensors": 0.0, "hub": 0.0, "timm": 1e-5, "torchscript": 1e-4, "onnx": 1e-4}
NEEDS_EXTRA = "pip install 'vitdist[export]'"


class CheckFailed(Exception):
    """An exported model that does not reproduce the run's logits (exit 1)."""


@dataclass
class Exported:
    path: Path  # the file or folder written
    max_diff: Optional[float]  # max |logit diff| against the run's model; None when the check could not run
    line: str  # what the command prints


@dataclass
class ExportArgs:
    run_dir: tyro.conf.Positional[str]
    """A run folder written by `vitdist train`."""
    format: Format
    """safetensors: the state dict with config and class names in its metadata; timm: a folder timm's
    VisionTransformer loads; torchscript: a traced model.pt; onnx: model.onnx with a dynamic batch axis; hub: a
    huggingface_hub save_pretrained folder with a model card (not uploaded)."""
    out: Optional[str] = None
    """Where to write. Default: RUN/export/model.safetensors, RUN/export/timm/, RUN/export/model.pt,
    RUN/export/model.onnx or RUN/export/hub/. A folder given to a one-file format gets the file inside it."""
    overwrite: bool = False
    """Replace what is at --out: the file, or an earlier export of the same format in the folder (its files only;
    a folder holding anything else is refused, with or without this flag)."""
    weights: Literal["best", "last", "ema"] = "best"
    """best: the run's model.safetensors (its best epoch, raw or averaged as results.json says; while it runs, the
    best so far); last: its newest checkpoint's raw weights; ema: that checkpoint's moving average (--ema.decay)."""
    check_batch: int = 4
    """Random images in the check's batch (the trace's example for torchscript and onnx, which are then checked
    on check_batch + 3 images: a batch size they did not see)."""


# --- what every format shares

def model_config(model: VisionTransformer, info: RunInfo) -> dict:
    """VisionTransformer's arguments, which are also ModelConfig's fields: num_classes filled in from the head."""
    return dataclasses.asdict(dataclasses.replace(info.config.model, num_classes=model.head.out_features))


def preprocessing(info: RunInfo) -> dict:
    """How an image becomes the model's input; the weights alone do not say it."""
    return {"input_size": [info.config.model.in_channels, info.img_size, info.img_size],
            "mean": list(info.config.data.mean), "std": list(info.config.data.std),
            "how": f"RGB, resized to {info.img_size}x{info.img_size} (antialiased), scaled to [0, 1], "
                   f"then (x - mean) / std per channel"}


def check_images(info: RunInfo, n: int, seed: int) -> torch.Tensor:
    """(n, C, S, S) random uint8 images normalized as the run normalizes them: inputs in the range it saw."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, info.config.model.in_channels, info.img_size, info.img_size), generator=g,
                      dtype=torch.uint8)
    return info.normalize(x)


def max_diff(a, b) -> float:
    return (torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max().item()


def logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def require_close(fmt: str, diff: float, n: int, path: Path, against: str) -> None:
    if not diff <= TOLERANCE[fmt]:  # `not <=`: a NaN fails too
        raise CheckFailed(f"{fmt}: {against} max |logit diff| {diff:.1e} on {n} images is above "
                          f"{TOLERANCE[fmt]:g}: {path} does not reproduce the run's model (left there to inspect)")


def same_logits(fmt: str, loaded, model, info: RunInfo, n: int, path: Path, against: str) -> float:
    """max |logit diff| of a reloaded model against the run's on n check images; CheckFailed above the bound."""
    x = check_images(info, n, seed=0)
    diff = max_diff(logits(loaded, x), logits(model, x))
    require_close(fmt, diff, n, path, against)
    return diff


@contextlib.contextmanager
def running(fmt: str, runtime: str, n: int, path: Path):
    """A runtime that cannot run the export at all (a batch size baked in, say) fails the check, as a wrong
    figure does: exit 1 with its first line, not a traceback."""
    try:
        yield
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckFailed(f"{fmt}: {runtime} could not run {path} on {n} images: {first}") from e


def figure(diff: float) -> str:
    return "0 (identical)" if diff == 0 else f"{diff:.1e}"


def save_state_dict(model: VisionTransformer, path: Path, metadata: dict[str, str]) -> None:
    save_safetensors(model.state_dict(), path, metadata)  # the user's usual file mode, not safetensors' 0600


# --- safetensors

def export_safetensors(model: VisionTransformer, info: RunInfo, out: Path, check_batch: int) -> Exported:
    from safetensors import safe_open
    from safetensors.torch import load_file

    out.parent.mkdir(parents=True, exist_ok=True)
    # "format": "pt" is what transformers and safetensors' own save_model write; loaders look for it.
    save_state_dict(model, out, {"format": "pt", "model_config": json.dumps(model_config(model, info)),
                                 "classes": json.dumps(info.classes),
                                 "preprocessing": json.dumps(preprocessing(info))})
    with safe_open(str(out), "pt") as f:  # rebuilt from the file alone: its metadata must be enough
        meta = f.metadata()
    fresh = VisionTransformer(**json.loads(meta["model_config"])).eval()
    fresh.load_state_dict(load_file(str(out)), strict=True)
    diff = same_logits("safetensors", fresh, model, info, check_batch, out,
                       "a fresh VisionTransformer vs the run's model")
    return Exported(out, diff, f"safetensors: {out} (state dict; model_config, classes and preprocessing in its "
                               f"metadata); strict load into a fresh VisionTransformer, max |logit diff| "
                               f"{figure(diff)} on {check_batch} images")


# --- timm

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


def export_timm(model: VisionTransformer, info: RunInfo, out: Path, check_batch: int) -> Exported:
    cfg = timm_config(model, info)
    out.mkdir(parents=True, exist_ok=True)
    # vitdist names its parameters as timm's VisionTransformer does (cls_token, pos_embed, patch_embed.proj,
    # blocks.N.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2, norm, head), so the state dict goes in unmapped;
    # the strict load in timm_model holds that, names and shapes.
    save_state_dict(model, out / "model.safetensors", {"format": "pt"})
    (out / "timm_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    pre = preprocessing(info)
    (out / "README.md").write_text(TIMM_README.format(
        name=info.dir.resolve().name, eps=cfg["norm_layer_eps"], folder=out, c=pre["input_size"][0],
        s=info.img_size, how=pre["how"]))
    written = f"timm: {out} (model.safetensors, timm_config.json, README.md)"
    try:
        import timm  # noqa: F401
    except ImportError:
        return Exported(out, None, f"{written}; check skipped: timm is not installed (pip install timm)")
    diff = same_logits("timm", timm_model(out), model, info, check_batch, out, "timm vs vitdist")
    return Exported(out, diff, f"{written}; timm vs vitdist max |logit diff| {figure(diff)} on {check_batch} "
                               f"images")


# --- torchscript

@contextlib.contextmanager
def quiet_jit():
    """torch 2.14 deprecates torch.jit: trace, save and load each warn (FutureWarning, "switch to torch.compile or
    torch.export"). TorchScript is still what libtorch (C++) and older serving stacks load, so the format stays;
    only that warning is silenced, here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def export_torchscript(model: VisionTransformer, info: RunInfo, out: Path, check_batch: int) -> Exported:
    out.parent.mkdir(parents=True, exist_ok=True)
    with quiet_jit():
        traced = torch.jit.trace(model, check_images(info, check_batch, seed=1))
        torch.jit.save(traced, str(out))
        loaded = torch.jit.load(str(out))
    n = check_batch + 3  # a batch size the trace never saw: the batch axis must be free, not baked in
    x = check_images(info, n, seed=2)
    with quiet_jit(), running("torchscript", "torch.jit.load", n, out):
        got = logits(loaded, x)
    diff = max_diff(got, logits(model, x))
    require_close("torchscript", diff, n, out, "torch.jit.load vs PyTorch")
    return Exported(out, diff, f"torchscript: {out} (traced on {check_batch} images); torch.jit.load vs PyTorch "
                               f"max |logit diff| {figure(diff)} on {n} images")


# --- onnx

def onnx_modules():
    """(onnx, onnxruntime); a UserError when they (or onnxscript, which torch's exporter runs on) are missing."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(f"--format onnx needs onnx, onnxscript and onnxruntime: {NEEDS_EXTRA}") from None
    return onnx, onnxruntime


def export_onnx(model: VisionTransformer, info: RunInfo, out: Path, check_batch: int) -> Exported:
    onnx, ort = onnx_modules()
    out.parent.mkdir(parents=True, exist_ok=True)
    # The torch.export-based exporter (dynamo=True, torch's default since 2.9 and the one PyTorch maintains; the
    # TorchScript-based one is deprecated). external_data=False: one self-contained file (this path's default
    # puts weights in a side file; models trained here are far below protobuf's 2 GB limit). verbose=False:
    # otherwise it prints its progress.
    torch.onnx.export(model, (check_images(info, check_batch, seed=1),), str(out), input_names=["images"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                      external_data=False, verbose=False)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    n = check_batch + 3  # a batch size the export never saw
    x = check_images(info, n, seed=2)
    with running("onnx", "onnxruntime", n, out):
        got = session.run(["logits"], {"images": x.numpy()})[0]
    diff = max_diff(got, logits(model, x))
    require_close("onnx", diff, n, out, "onnxruntime vs PyTorch")
    return Exported(out, diff, f"onnx: {out} (dynamic batch, opset {opset}); onnxruntime vs PyTorch max |logit "
                               f"diff| {figure(diff)} on {n} images")


# --- hub

UPLOAD = ("huggingface_hub.upload_folder(repo_id=\"USER/NAME\", folder_path=\"{folder}\")")


def recipe(info: RunInfo) -> list[tuple[str, str]]:
    """The run's config as a preset reads: what it trained, on what, how."""
    c, results = info.config, info.results or {}
    m, d, o = c.model, c.data, c.optim
    ran = (f"; {results['epochs_run']} run" + (" (stopped early)" if results.get("stopped_early") else "")
           if "epochs_run" in results else "")
    augment = [f"RandomCrop({m.img_size}, padding {d.crop_padding}) + horizontal flip" if d.augment
               else "no crop or flip"]
    augment += ["ColorJitter(0.2, 0.2, 0.2, 0.1)"] * d.color_jitter
    augment += [f"Mixup alpha {d.mixup_alpha:g}"] * (d.mixup_alpha > 0)
    augment += [f"CutMix alpha {d.cutmix_alpha:g}"] * (d.cutmix_alpha > 0)
    return [
        ("model", f"ViT, patch {m.patch_size} on {m.img_size}x{m.img_size}, embed {m.embed_dim}, {m.num_layers} "
                  f"layers, {m.num_heads} heads, MLP {m.dim_feedforward}, dropout {m.dropout:g}, drop path "
                  f"{m.drop_path_rate:g}"),
        ("optimizer", f"AdamW, lr {o.lr:g}, betas {tuple(o.betas)}, weight decay {o.weight_decay:g} (not on "
                      f"biases, norms, positions, class token), gradient clip {o.max_grad_norm:g}"),
        ("schedule", f"{o.warmup_epochs:g} warmup epochs, then cosine to {o.min_lr:g}; {c.epochs} epochs "
                     f"planned{ran}; early stopping patience {c.early_stop_patience or 'off'}"),
        ("batch", f"{c.batch.global_batch_size} images per optimizer step"),
        ("augmentation", ", ".join(augment)),
        ("loss", f"cross-entropy, label smoothing {c.label_smoothing:g}"),
        ("precision, seed", f"{c.precision}, {c.seed}"),
        ("normalization", f"mean {tuple(d.mean)}, std {tuple(d.std)}"),
    ]


def val_accuracy(info: RunInfo) -> Optional[float]:
    """The validation accuracy of the epoch these weights ended, from metrics.jsonl (results.json's for the
    best weights of a finished run)."""
    results = info.results or {}
    if info.weights == "best" and results.get("best_epoch") == info.epoch and "best_val_acc" in results:
        return results["best_val_acc"]
    metrics = info.dir / "metrics.jsonl"
    rows = read_jsonl(metrics) if metrics.is_file() else []
    return next((r.get("val_acc") for r in rows if r.get("epoch") == info.epoch), None)


def data_folder_name(root: Optional[str]) -> str:
    """A data root by its last component: the card is published, the machine's paths are not."""
    path = Path(root or ".").expanduser()
    return path.name or path.resolve().name


def validation_source(d: DataConfig) -> str:
    """The validation split the run used, by data.load_data's rule: an ImageFolder's val/ where the root has one,
    else a seeded, stratified val_fraction of the training split."""
    of = "train/" if d.name == "imagefolder" else "the training split"
    held_out = f"a seeded, stratified {d.val_fraction:.0%} hold-out of {of}"
    if d.name != "imagefolder":
        return held_out
    root = Path(d.root or ".").expanduser()
    if (root / "val").is_dir():
        return "the data's val/ folder"
    if (root / "train").is_dir():
        return f"{held_out} (the data has no val/ folder)"
    return f"the data's val/ folder if it had one, else {held_out} (the data is not here to tell which)"


def model_card(model: VisionTransformer, info: RunInfo, folder: Path) -> str:
    from huggingface_hub import ModelCardData

    c, results = info.config, info.results or {}
    data = read_json(info.dir / DATA_FILE) or {}
    name = info.dir.resolve().name
    source = c.data.name + (f" ({data_folder_name(c.data.root)})" if c.data.name == "imagefolder" else "")
    sizes = ", ".join(f"{split} {data[key]:,}" for split, key in
                      (("train", "num_train"), ("validation", "num_val"), ("test", "num_test")) if data.get(key))
    held_out = validation_source(c.data)
    val = val_accuracy(info)
    tested = info.weights == "best" and results.get("best_epoch") == info.epoch and "test_acc" in results
    if tested:
        test = f"{results['test_acc']:.4f}"
    elif "test_acc" in results:
        test = (f"not measured for these weights (the run's test accuracy, {results['test_acc']:.4f}, is its best "
                f"epoch's, {results['best_epoch']})")
    else:
        test = "not measured"
    if info.weights == "best":
        of = f" of {results['epochs_run']}" if "epochs_run" in results else " (the run had not ended)"
        chosen = (f"The best validation epoch, {info.epoch}{of}: selected by accuracy on the held-out validation "
                  f"split ({held_out}), never on test. "
                  + ("The test split was scored once, with these weights, after training." if tested else
                     "The test split was not scored with them."))
        if results.get("weights") == "ema" or info.weights_file.name == EMA_FILE:
            chosen += (f" They are the moving average of the weights (EMA, decay {info.config.ema.decay:g}), which "
                       f"scored better on validation than the raw weights that epoch.")
        elif c.ema.decay > 0:  # an EMA run whose raw weights won: say so, or the reader cannot tell which these are
            chosen += (f" They are the raw weights, which scored at least as well on validation as their moving "
                       f"average (EMA, decay {c.ema.decay:g}) that epoch." if c.ema.select_best else
                       f" They are the raw weights: the run selected on them only (--ema.no-select-best), not on "
                       f"their moving average (EMA, decay {c.ema.decay:g}).")
    elif info.weights == "ema":
        chosen = (f"The moving average of the weights (EMA, decay {info.config.ema.decay:g}) at the run's last "
                  f"checkpoint, epoch {info.epoch} (`--weights ema`). The test split was not scored with them.")
    else:
        chosen = (f"The run's last checkpoint, epoch {info.epoch}: not selected on validation (`--weights last`). "
                  f"The test split was not scored with them.")
    classes = ", ".join(info.classes[:20]) + (f", ... ({len(info.classes)} in all)" if len(info.classes) > 20 else "")
    meta = ModelCardData(pipeline_tag="image-classification",
                         tags=["vision-transformer", "image-classification", "vitdist", "pytorch_model_hub_mixin",
                               "model_hub_mixin"])
    pre = preprocessing(info)
    rows = "\n".join(f"| {k} | {v} |" for k, v in recipe(info))
    val_cell = f"{val:.4f} (epoch {info.epoch})" if val is not None else "not measured"
    shape = f"(N, {pre['input_size'][0]}, {info.img_size}, {info.img_size})"
    how, mean, std = pre["how"], tuple(pre["mean"]), tuple(pre["std"])
    upload = UPLOAD.format(folder=folder.name)  # the folder's name alone: the card is published, a path is local
    return f"""---
{meta.to_yaml()}
---

# {name}

A Vision Transformer image classifier trained with vitdist: {len(info.classes)} classes, {info.img_size}x\
{info.img_size} RGB input, {count_parameters(model):,} parameters.

## Data

- Source: {source}
- Splits: {sizes or "not recorded"}; validation: {held_out}
- Classes: {classes}

## Recipe

| | |
|---|---|
{rows}

## Results

| split | accuracy |
|---|---|
| validation | {val_cell} |
| test | {test} |

## Which weights

{chosen}

## Use

```python
import json
from vitdist.model import VisionTransformer

model = VisionTransformer.from_pretrained("{folder.name}")  # this folder: no network (or "USER/NAME" once uploaded)
classes = json.load(open("{folder.name}/config.json"))["classes"]
probs = model(images).softmax(-1)  # images: {shape} float
```

Inputs: {how}, with mean {mean} and std {std}. config.json holds the model's arguments, `classes` and \
`preprocessing`.

## Publishing

This folder was written offline and has not been uploaded. Pushing it to the Hugging Face Hub needs a network \
and a token (`hf auth login`, or HF_TOKEN): `{upload}` uploads it as it is, this card and the class names \
included. `model.push_to_hub("USER/NAME")` also works, but writes its own config.json (without the class names \
unless given `config=`) and a generic card.
"""


def export_hub(model: VisionTransformer, info: RunInfo, out: Path, check_batch: int) -> Exported:
    # The class names and preprocessing go into config.json (the mixin's config= argument), beside the model's
    # arguments: one file says everything, and from_pretrained passes on only the keys __init__ takes.
    config = {**model_config(model, info), "classes": info.classes, "preprocessing": preprocessing(info)}
    model.save_pretrained(out, config=config)
    make_readable(out / "model.safetensors")  # written by safetensors (0600) inside save_pretrained
    # save_pretrained keeps an existing README.md: written after it, ours replaces its generic card.
    (out / "README.md").write_text(model_card(model, info, out))
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints "Loading weights from local ..."
        loaded = VisionTransformer.from_pretrained(str(out), strict=True).eval()
    diff = same_logits("hub", loaded, model, info, check_batch, out, "from_pretrained vs the run's model")
    return Exported(out, diff, f"hub: {out} (model.safetensors, config.json with classes, README.md model card); "
                               f"from_pretrained max |logit diff| {figure(diff)} on {check_batch} images; not "
                               f"uploaded: {UPLOAD.format(folder=out)} needs a network and a token")


EXPORTERS: dict[str, Callable[[VisionTransformer, RunInfo, Path, int], Exported]] = {
    "safetensors": export_safetensors, "timm": export_timm, "torchscript": export_torchscript,
    "onnx": export_onnx, "hub": export_hub}


# --- the command

def output_path(fmt: str, out: Optional[str], run_dir: Path, overwrite: bool = False) -> Path:
    """Where a format writes: --out or RUN/export/<name>; a UserError where that cannot be, or where it would
    replace something without `overwrite`, or would go into a folder that holds what the format does not write."""
    path = Path(out) if out is not None else run_dir / "export" / DEFAULT_NAMES[fmt]
    if fmt in FOLDER_FORMATS:
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} is a file: --format {fmt} writes a folder (model.safetensors and more): "
                            f"pass a folder path (a new one is created)")
        folder = path
    else:
        if path.is_dir():
            path = path / DEFAULT_NAMES[fmt]
        folder = path.parent
    blocking = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise UserError(f"--out {out}: {blocking} is a file, so no folder can be made there: pass another path")
    run = run_dir.resolve()
    where = folder.resolve()
    if where == run or where == run / "checkpoints" or run / "checkpoints" in where.parents:
        raise UserError(f"--out {path} would write into the run's own record ({run_dir}), over its config.json "
                        f"or weights: pass a path under {run_dir / 'export'} or outside the run")
    if fmt in FOLDER_FORMATS and path.is_dir() and any(path.iterdir()):
        held = sorted(p.name + "/" * p.is_dir() for p in path.iterdir())
        foreign = [n for n in held if n not in FOLDER_FILES[fmt]]
        if foreign:  # not an earlier export of this format: nothing here is vitdist's to delete
            raise UserError(f"{path} holds {', '.join(foreign[:5])}{' ...' * (len(foreign) > 5)}, which no --format "
                            f"{fmt} export writes (an upload would push it): pass --out a new or empty folder")
        if not overwrite:
            raise UserError(f"{path} holds an earlier --format {fmt} export ({', '.join(held)}): pass --overwrite "
                            f"to replace it, or --out a new folder")
    elif fmt not in FOLDER_FORMATS and path.exists() and not overwrite:
        raise UserError(f"{path} exists: pass --overwrite to replace it, or --out another path")
    require_writable(path, "pass --out PATH where you can write")
    return path


def export_run(args: ExportArgs) -> Exported:
    """Export a run's model in one format and check it; a UserError (one line) on bad input, CheckFailed when
    the export does not reproduce the run's logits."""
    if args.check_batch < 1:
        raise UserError(f"--check-batch must be >= 1, got {args.check_batch}")
    if args.format == "onnx":
        onnx_modules()  # before loading the run: missing packages say so first
    run_config(args.run_dir)  # a folder that is not a run says so first
    out = output_path(args.format, args.out, Path(args.run_dir), args.overwrite)  # refused before the work
    model, info = load_run(args.run_dir, args.weights)
    if args.format in FOLDER_FORMATS:  # output_path allowed nothing else in it: an earlier export, its own files
        for name in FOLDER_FILES[args.format]:
            (out / name).unlink(missing_ok=True)
    model.float()  # exports hold fp32 (a bf16 run's weights upcast exactly): what every runtime here accepts
    return EXPORTERS[args.format](model, info, out, args.check_batch)


def main(argv: list[str] | None = None) -> int:
    from .cli import exit_on_user_error

    argv = sys.argv[1:] if argv is None else argv
    description = ("Export a run's model as safetensors, a timm folder, TorchScript, ONNX or a Hugging Face Hub "
                   "folder, and check the export's logits against the run's model.")
    with exit_on_user_error():
        args = tyro.cli(ExportArgs, args=argv, prog="vitdist export", description=description)
        try:
            exported = export_run(args)
        except CheckFailed as e:
            print(f"vitdist: export check failed: {e}", file=sys.stderr)
            return 1
        print(exported.line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
