"""The model card of a Hub export: the data by name (never a local path), the recipe, the validation and test
accuracy, and which weights these are and how they were chosen."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


from ..config import DataConfig
from ..model import VisionTransformer, count_parameters
from ..train.record import DATA_FILE, read_json, read_jsonl
from .load import EMA_FILE, RunInfo, preprocessing


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

    c = info.config
    data = read_json(info.dir / DATA_FILE) or {}
    name = info.dir.resolve().name
    source = c.data.name + (f" ({data_folder_name(c.data.root)})" if c.data.name == "imagefolder" else "")
    sizes = ", ".join(f"{split} {data[key]:,}" for split, key in
                      (("train", "num_train"), ("validation", "num_val"), ("test", "num_test")) if data.get(key))
    held_out = validation_source(c.data)
    val = val_accuracy(info)
    test, chosen = which_weights(info, held_out)
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


def which_weights(info: RunInfo, held_out: str) -> tuple[str, str]:
    """The card's test cell and its "Which weights" paragraph: the best epoch (raw or EMA), the EMA, or the last
    checkpoint, and whether the test split was scored with them."""
    c, results = info.config, info.results or {}
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
    return test, chosen
