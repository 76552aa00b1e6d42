"""What `vitdist diagnose` advises for each verdict: one change per item, in the order to try them, computed
from the run's own config and moving along the checklist's own ladders (its sweep's learning rates, its dropout
and weight-decay steps, its model table)."""

from __future__ import annotations

from typing import NamedTuple

from .verdicts import DIVERGED, MILD, OSCILLATING, SEVERE, STALLED, STILL_FALLING, UNDERFITTING, VAL_RISING

# --- the steps the advice moves along (the checklist's own values)
LR_LADDER = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2)  # step 1's sweep; oscillating: one down; stalled: one up (1e-3 -> 5e-3)
LR_DIVERGED_FACTOR = 10  # "loss becomes NaN: lower the rate (1e-3 -> 1e-4)"
DROPOUT_UP = (0.1, 0.2, 0.3)  # overfitting: "dropout 0.1 -> 0.2 or 0.3"
WEIGHT_DECAY_UP = (1e-4, 1e-3)  # overfitting: "weight decay 1e-4 -> 1e-3"
DROPOUT_DOWN = (0.0, 0.1)  # underfitting: "dropout 0.3 -> 0.1" (then off: the large-data row allows 0.0)
WEIGHT_DECAY_DOWN = (1e-4,)  # underfitting: "weight decay 1e-3 -> 1e-4", the template's light decay
MODEL_WIDTHS = (128, 256, 512)  # the model table's embed dims: tiny, small, base
MODEL_DEPTHS = (4, 6)  # and its layer counts
MIXING_FLAGS = "--data.mixup-alpha 0.8 --data.cutmix-alpha 1.0"  # the common alphas (config.py's help)
CLIP_NORM = 1.0  # step 3: gradient clipping max_norm 1.0
WARMUP_EPOCHS = 5.0  # the template's warmup
LABEL_SMOOTHING = 0.1  # step 3
DROP_PATH_RATE = 0.1  # stochastic depth: the Lessons' optional trick
EARLY_STOP_PATIENCE = 15  # step 3


class Advice(NamedTuple):
    why: str
    flags: str  # the override flags for the next `vitdist train`


def fmt(x: float) -> str:
    """Numbers as flags and people write them: 0.2, 1e-3, 5e-4, 200."""
    if x == 0:
        return "0"
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    if abs(x) <= 0.01:
        mantissa, exponent = f"{x:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"

def _up(value: float, ladder: tuple) -> float | None:
    return next((v for v in ladder if v > value * (1 + 1e-9)), None)


def _down(value: float, ladder: tuple) -> float | None:
    return next((v for v in reversed(ladder) if v < value * (1 - 1e-9)), None)


def _resize(m: dict, embed: int | None = None, layers: int | None = None) -> str:
    """Flags for a model of another width (MLP ratio kept, heads kept when they divide) or depth."""
    flags = []
    if embed is not None:
        ffn = round(embed * m["dim_feedforward"] / m["embed_dim"])
        flags += [f"--model.embed-dim {embed}", f"--model.dim-feedforward {ffn}"]
        if embed % m["num_heads"]:
            flags.append(f"--model.num-heads {next(h for h in (8, 4, 2, 1) if embed % h == 0)}")
    if layers is not None:
        flags.append(f"--model.num-layers {layers}")
    return " ".join(flags)


def advice(verdict: str, c: dict, ev: dict) -> tuple[list[Advice], list[str]]:
    """The changes to try for `verdict` (c: the run's settings, ev: the diagnosis's evidence), and notes on the
    checklist's steps the run already has."""
    m, o = c["model"], c["optim"]
    out: list[Advice] = []
    notes: list[str] = []
    still_learning = ev.get("recent_drop", 0) > STILL_FALLING
    longer = Advice(f"train longer: {c['epochs']} -> {2 * c['epochs']} epochs"
                    + (" (the loss was still falling)" if still_learning else ""), f"--epochs {2 * c['epochs']}")

    if verdict == DIVERGED:
        _lr_down(out, o, o["lr"] / LR_DIVERGED_FACTOR, "a 10x lower learning rate")
        _stabilise(out, notes, c)
        notes.append("also check the inputs are normalized (--data.mean / --data.std)")
    elif verdict == OSCILLATING:
        _lr_down(out, o, _down(o["lr"], LR_LADDER) or o["lr"] / 2, "a lower learning rate (one step of the sweep)")
        _stabilise(out, notes, c)
    elif verdict == STALLED:
        out.append(Advice("first, the overfit test (or `vitdist check`): a model that cannot memorise 32 samples "
                          "has a bug", "--preset overfit"))
        if (new := _up(o["lr"], LR_LADDER)) is not None:
            out.append(Advice(f"a larger learning rate: {fmt(o['lr'])} -> {fmt(new)}", f"--optim.lr {fmt(new)}"))
        else:
            notes.append(f"the learning rate {fmt(o['lr'])} is already at the sweep's top")
        if o["warmup_epochs"] >= ev["epochs"] / 2:
            new = max(1.0, ev["epochs"] / 10)
            out.append(Advice(f"a shorter warmup: {fmt(o['warmup_epochs'])} of {ev['epochs']} epochs never "
                              f"reached full rate for long", f"--optim.warmup-epochs {fmt(new)}"))
        _less_regularization(out, c)
    elif verdict in (SEVERE, VAL_RISING):
        _against_overfitting(out, notes, c)
        if c["early_stop_patience"] == 0:
            out.append(Advice(f"early stopping (patience {EARLY_STOP_PATIENCE}): keeps the best epoch",
                              f"--early-stop-patience {EARLY_STOP_PATIENCE}"))
    elif verdict == UNDERFITTING:
        if (new := _up(m["embed_dim"], MODEL_WIDTHS)) is not None:
            out.append(Advice(f"a wider model: embed_dim {m['embed_dim']} -> {new}", _resize(m, embed=new)))
        if (new := _up(m["num_layers"], MODEL_DEPTHS)) is not None:
            out.append(Advice(f"a deeper model: num_layers {m['num_layers']} -> {new}", _resize(m, layers=new)))
        _less_regularization(out, c)
        out.append(longer)
    elif verdict == MILD:
        _against_overfitting(out, notes, c)
        if out:
            out[:] = [Advice(f"optional, for a smaller gap: {out[0].why}", out[0].flags)]
        notes.clear()
        _tricks(out, c)
    else:  # healthy
        if ev.get("best_epoch") == ev["epochs"] and still_learning:
            out.append(longer)
        _tricks(out, c)
    return out, notes


def _lr_down(out: list[Advice], o: dict, new: float, why: str) -> None:
    out.append(Advice(f"{why}: lr {fmt(o['lr'])} -> {fmt(new)}", f"--optim.lr {fmt(new)}"))


def _stabilise(out: list[Advice], notes: list[str], c: dict) -> None:
    o = c["optim"]
    if o["max_grad_norm"] == 0 or o["max_grad_norm"] > CLIP_NORM:
        out.append(Advice(f"clip gradients at {CLIP_NORM}", f"--optim.max-grad-norm {CLIP_NORM}"))
    else:
        notes.append(f"gradients are already clipped at {fmt(o['max_grad_norm'])}")
    if o["warmup_epochs"] < WARMUP_EPOCHS:
        out.append(Advice(f"a longer warmup: {fmt(o['warmup_epochs'])} -> {fmt(WARMUP_EPOCHS)} epochs",
                          f"--optim.warmup-epochs {fmt(WARMUP_EPOCHS)}"))
    if c["precision"] == "fp16":
        out.append(Advice("bf16 instead of fp16 (fp16 overflows more easily)", "--precision bf16"))


def _less_regularization(out: list[Advice], c: dict) -> None:
    m, d, o = c["model"], c["data"], c["optim"]
    if (new := _down(m["dropout"], DROPOUT_DOWN)) is not None:
        out.append(Advice(f"less dropout: {fmt(m['dropout'])} -> {fmt(new)}", f"--model.dropout {fmt(new)}"))
    if (new := _down(o["weight_decay"], WEIGHT_DECAY_DOWN)) is not None:
        out.append(Advice(f"less weight decay: {fmt(o['weight_decay'])} -> {fmt(new)}",
                          f"--optim.weight-decay {fmt(new)}"))
    if d["mixup_alpha"] > 0 or d["cutmix_alpha"] > 0:
        out.append(Advice("no Mixup/CutMix", "--data.mixup-alpha 0 --data.cutmix-alpha 0"))
    if m["drop_path_rate"] > 0:
        out.append(Advice(f"no stochastic depth ({fmt(m['drop_path_rate'])} -> 0)", "--model.drop-path-rate 0"))


def _against_overfitting(out: list[Advice], notes: list[str], c: dict) -> None:
    m, d, o = c["model"], c["data"], c["optim"]
    if (new := _up(m["dropout"], DROPOUT_UP)) is not None:
        out.append(Advice(f"more dropout: {fmt(m['dropout'])} -> {fmt(new)}", f"--model.dropout {fmt(new)}"))
    else:
        notes.append(f"dropout is already {fmt(m['dropout'])} (the checklist goes to {DROPOUT_UP[-1]})")
    if (new := _up(o["weight_decay"], WEIGHT_DECAY_UP)) is not None:
        out.append(Advice(f"more weight decay: {fmt(o['weight_decay'])} -> {fmt(new)}",
                          f"--optim.weight-decay {fmt(new)}"))
    else:
        notes.append(f"weight decay is already {fmt(o['weight_decay'])} (the checklist goes to "
                     f"{fmt(WEIGHT_DECAY_UP[-1])})")
    if not d["augment"]:
        out.append(Advice("augmentation on (RandomCrop + flip): a ViT needs it", "--data.augment"))
    if not d["color_jitter"]:
        out.append(Advice("stronger augmentation: ColorJitter(0.2, 0.2, 0.2, 0.1)", "--data.color-jitter"))
    else:
        notes.append("ColorJitter is already on")
    if d["mixup_alpha"] == 0 and d["cutmix_alpha"] == 0:
        out.append(Advice("stronger still: Mixup/CutMix (diagnose then reads the clean train accuracy)",
                          MIXING_FLAGS))
    else:
        notes.append("Mixup/CutMix is already on")
    if (new := _down(m["embed_dim"], MODEL_WIDTHS)) is not None:
        out.append(Advice(f"a narrower model: embed_dim {m['embed_dim']} -> {new}", _resize(m, embed=new)))
    if (new := _down(m["num_layers"], MODEL_DEPTHS)) is not None:
        out.append(Advice(f"a shallower model: num_layers {m['num_layers']} -> {new}", _resize(m, layers=new)))
    if m["embed_dim"] <= MODEL_WIDTHS[0] and m["num_layers"] <= MODEL_DEPTHS[0]:
        notes.append(f"the model ({m['embed_dim']} wide, {m['num_layers']} layers) is already the checklist's "
                     f"smallest")
    if c["label_smoothing"] == 0:
        out.append(Advice(f"label smoothing {LABEL_SMOOTHING}", f"--label-smoothing {LABEL_SMOOTHING}"))
    if m["drop_path_rate"] == 0:
        out.append(Advice(f"stochastic depth {DROP_PATH_RATE} (optional)",
                          f"--model.drop-path-rate {DROP_PATH_RATE}"))


def _tricks(out: list[Advice], c: dict) -> None:
    if c["label_smoothing"] == 0:
        out.append(Advice(f"label smoothing {LABEL_SMOOTHING} (step 3)", f"--label-smoothing {LABEL_SMOOTHING}"))
    if c["optim"]["max_grad_norm"] == 0:
        out.append(Advice(f"gradient clipping at {CLIP_NORM} (step 3)", f"--optim.max-grad-norm {CLIP_NORM}"))
    if c["early_stop_patience"] == 0:
        out.append(Advice(f"early stopping, patience {EARLY_STOP_PATIENCE} (step 3)",
                          f"--early-stop-patience {EARLY_STOP_PATIENCE}"))
