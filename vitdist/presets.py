"""PRESETS: name -> (one-line description, TrainConfig).

Each preset is the checklist's template with a few fields replaced, one comment per change.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import replace

from .config import BatchConfig, ConfigError, TrainConfig


# The checklist's full template: embed 128, 4 layers, 4 heads, FFN 4 x embed, dropout 0.1, batch 128,
# 100 epochs, AdamW lr 1e-3 / wd 1e-4, clip 1.0, label smoothing 0.1, 5 warmup epochs + cosine,
# early stopping patience 15, RandomCrop(32, 4) + flip + Normalize(0.5, 0.5), on CIFAR-10.
TINY = TrainConfig()
SMALL = replace(TINY, model=replace(TINY.model, embed_dim=256, num_layers=6, num_heads=8,  # wider, deeper
                                    dim_feedforward=1024))
BASE = replace(TINY, model=replace(TINY.model, embed_dim=512, num_layers=6, num_heads=8,  # the checklist's base
                                   dim_feedforward=2048))
OVERFIT = replace(
    TINY,
    model=replace(TINY.model, dropout=0.0),  # nothing may stop memorising
    data=replace(TINY.data, train_subset=32,  # the checklist's 32 samples
                 val_subset=256,  # validation only for the record: keep it cheap
                 augment=False, train_eval_size=32),  # memorise the samples themselves
    optim=replace(TINY.optim, lr=5e-3, weight_decay=0.0,  # the checklist's overfit-test rate, no decay
                  warmup_epochs=0.0),  # one step per epoch: warmup would eat the budget
    batch=BatchConfig(global_batch_size=32),  # the 32 samples are one batch: 200 epochs = 200 steps
    epochs=200,
    label_smoothing=0.0,  # smoothing caps confidence; accuracy is what is tested
    early_stop_patience=0,  # always run all 200 steps
    checkpoint_every_epochs=200,  # one checkpoint, at the end
    run_dir="runs/overfit",
)
DEMO = replace(
    TINY,
    data=replace(TINY.data, name="digits",  # real handwritten digits shipped inside scikit-learn: no download
                 crop_padding=2),  # digits are 8px upscaled 4x: a 4px shift would cut strokes off
    batch=BatchConfig(global_batch_size=64),  # 1,294 training images: more steps per epoch
    epochs=30,  # about a minute and a half on a 2-core CPU
    run_dir="runs/demo",
)
# Recipes: plain ViTs trained from scratch on CIFAR-10 whose results are worth aiming at. Patch 4 (64 tokens),
# the source's width, depth and heads, and its augmentation and regularization as far as vitdist has them
# (AutoAugment is not here: TrivialAugmentWide, its parameter-free successor, stands in). Early stopping is off:
# under heavy augmentation validation accuracy still creeps up late, and the best epoch is picked on validation.
VIT_LITE_7_4 = replace(
    TINY,
    model=replace(TINY.model, patch_size=4,  # 64 tokens of 4x4 pixels
                  embed_dim=256, num_layers=7, num_heads=4, dim_feedforward=512,  # ViT-Lite-7/4: 3.7M
                  dropout=0.0, drop_path_rate=0.1),  # stochastic depth instead of dropout
    data=replace(TINY.data, trivial_augment=True,  # AutoAugment's stand-in
                 mixup_alpha=0.8, cutmix_alpha=1.0),  # one of the two per batch
    optim=replace(TINY.optim, lr=5e-4, weight_decay=3e-2,  # the compact-transformer recipe's AdamW
                  warmup_epochs=10.0),
    epochs=300,
    early_stop_patience=0,
    run_dir="runs/vit-lite-7-4",
)
VIT_CIFAR_6M = replace(
    TINY,
    model=replace(TINY.model, patch_size=4,  # 64 tokens
                  embed_dim=384, num_layers=7, num_heads=12, dim_feedforward=384,  # 6.3M
                  dropout=0.0),
    data=replace(TINY.data, trivial_augment=True),  # AutoAugment's stand-in; label smoothing 0.1 as tiny
    optim=replace(TINY.optim, weight_decay=5e-5),  # lr 1e-3, 5 warmup epochs as tiny
    epochs=200,
    early_stop_patience=0,
    run_dir="runs/vit-cifar-6m",
)
# What each recipe aims at and where that figure comes from; the third item is a run of ours that measured it
# (the run's test accuracy and where it is recorded), None until one has.
RECIPE_TARGETS: dict[str, tuple[str, str, "str | None"]] = {
    "vit-lite-7-4": ("91.4% CIFAR-10 test accuracy",
                     "ViT-Lite-7/4 in Hassani et al. 2021, 'Escaping the Big Data Paradigm with Compact "
                     "Transformers' (3.7M parameters, 300 epochs, AutoAugment, Mixup/CutMix, label smoothing)", None),
    "vit-cifar-6m": ("about 91% CIFAR-10 test accuracy",
                     "github.com/omihub777/ViT-CIFAR (6.3M parameters, 200 epochs, AutoAugment, label smoothing)",
                     None),
}
PRESETS: dict[str, tuple[str, TrainConfig]] = {
    "tiny": ("checklist base config: ViT 128/4/4/512, patch 8, CIFAR-10, 100 epochs", TINY),
    "small": ("ViT 256/6/8/1024 on CIFAR-10, otherwise tiny's recipe", SMALL),
    "base": ("ViT 512/6/8/2048 on CIFAR-10, otherwise tiny's recipe", BASE),
    "overfit": ("the overfit test: 32 samples, lr 5e-3, no dropout/decay/augmentation, 200 steps", OVERFIT),
    "demo": ("offline demo: tiny ViT on scikit-learn's handwritten digits, 30 epochs, minutes on a CPU", DEMO),
    "vit-lite-7-4": ("recipe: ViT-Lite-7/4, patch 4, TrivialAugment + Mixup/CutMix, stochastic depth, 300 epochs",
                     VIT_LITE_7_4),
    "vit-cifar-6m": ("recipe: ViT 384/7/12/384, patch 4, TrivialAugment, label smoothing, 200 epochs", VIT_CIFAR_6M),
}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r} is unknown: choose one of {', '.join(PRESETS)}")
    return PRESETS[name][1]


def changed_fields(cfg: TrainConfig, base: TrainConfig = TINY, prefix: str = "") -> dict[str, tuple]:
    """Flat {'optim.lr': (base value, cfg value)} for every field where cfg differs from base."""
    out = {}
    for f in dataclasses.fields(cfg):
        a, b = getattr(base, f.name), getattr(cfg, f.name)
        if dataclasses.is_dataclass(a):
            out.update(changed_fields(b, a, prefix + f.name + "."))
        elif a != b:
            out[prefix + f.name] = (a, b)
    return out


def parse_with_preset(cls, argv: list[str] | None, prog: str, summary: str, **command_defaults):
    """tyro.cli(cls) where `--preset NAME` (default tiny) picks the defaults and every other flag overrides one
    field. cls is TrainConfig itself, or a command's arguments dataclass whose `train` field holds one.
    `command_defaults` replace the preset's own for this command (a sweep's short trials: epochs=5), so that
    --help shows what the command runs."""
    import argparse

    import tyro

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="tiny")
    known, rest = pre.parse_known_args(argv)
    base = dataclasses.replace(get_preset(known.preset), **command_defaults)
    return tyro.cli(cls, default=base if cls is TrainConfig else cls(train=base), args=rest, prog=prog,
                    description=f"{summary} --preset NAME picks the defaults shown below ({', '.join(PRESETS)}; "
                                f"now: {known.preset}); each flag overrides one field.")


def main(argv: list[str] | None = None) -> int:
    """`vitdist presets`: each preset, its parameter count (10 classes) and the fields it changes from tiny."""
    from .model import VisionTransformer, count_parameters

    if argv:
        print("usage: vitdist presets   (takes no arguments)", file=sys.stderr)
        return 0 if argv[0] in ("-h", "--help") else 2
    for name, (desc, cfg) in PRESETS.items():
        params = count_parameters(VisionTransformer.from_config(cfg.model, num_classes=10))
        changes = changed_fields(cfg)
        print(f"{name:<12} {params / 1e6:6.2f}M params  {desc}")
        if name in RECIPE_TARGETS:
            target, source, measured = RECIPE_TARGETS[name]
            print(f"{'':<14}aims at {target}: {source}; here: {measured or 'not yet run here'}")
        for key, (_, value) in changes.items():
            print(f"{'':<14}{as_flag(key, value)}")
    return 0


def as_flag(key: str, value) -> str:
    """The override flag that sets `key` to `value`, as tyro spells it."""
    head, _, name = key.rpartition(".")
    prefix = f"--{head}." if head else "--"
    if isinstance(value, bool):
        return f"{prefix}{'' if value else 'no-'}{name.replace('_', '-')}"
    if isinstance(value, tuple):
        value = " ".join(map(str, value))
    return f"{prefix}{name.replace('_', '-')} {value}"
