"""A run's model, loaded: its best (or last, or averaged) weights, its class names, its config and the
preprocessing its evaluation used (`vitdist.load_run`), for eval, predict and export.

    model, info = vitdist.load_run("runs/latest")      # the best weights, in eval mode
    x = info.preprocess(PIL.Image.open("cat.png"))     # (3, S, S) uint8, as the run's evaluation saw images
    probs = model(info.normalize(x[None])).softmax(-1)
    print(info.classes[probs.argmax()])
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


from ..config import TrainConfig, UserError
from ..model import VisionTransformer
from ..train.record import DATA_FILE, NOT_A_RUN, STATE_FILE, complete_checkpoints, read_json, read_jsonl, run_config


WEIGHTS = ("best", "last", "ema")
EMA_FILE = "custom_checkpoint_0.pkl"  # accelerate's name for the first object registered for checkpointing: the EMA


@dataclass
class RunInfo:
    """What a run's model needs around it: its config, its class names, which weights were loaded, and the
    preprocessing its evaluation used (resize to img_size, then normalize with the run's mean and std)."""

    dir: Path
    config: TrainConfig
    classes: list[str]
    weights: str  # "best", "last" or "ema"
    weights_file: Path  # the file loaded
    epoch: Optional[int]  # the epochs finished when those weights were saved, where known
    results: Optional[dict]  # results.json (absent until the run ends)
    checkpoint: Optional[str] = None  # the checkpoint folder they are (or were exported) from: epoch_0003, or
    # epoch_0003_step_00000120 inside an epoch
    step: Optional[int] = None  # the optimizer steps taken when they were saved, where known

    @property
    def img_size(self) -> int:
        return self.config.model.img_size

    def preprocess(self, image):
        """A PIL image of any size and mode -> (3, img_size, img_size) uint8, as ImageFolder runs decode their
        files (RGB, resized with antialiasing); sets stored at img_size are taken as they are."""
        from ..data.images import decode

        return decode(image, self.img_size)

    def normalize(self, x):
        """(N, 3, S, S) uint8 -> float, normalized with the run's mean and std (data.BatchAugment.normalize)."""
        import torch

        mean = torch.tensor(self.config.data.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.data.std, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std


def run_classes(run_dir: Path, cfg: TrainConfig, num_classes: int) -> list[str]:
    """The run's class names: data.json's; for runs older than it, the ImageFolder's train folders or the
    class indices."""
    data = read_json(run_dir / DATA_FILE)
    if data and data.get("classes"):
        return list(data["classes"])
    root = Path(cfg.data.root or "").expanduser() / "train"
    if cfg.data.name == "imagefolder" and root.is_dir():
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
        if len(names) == num_classes:
            return names
    return [str(i) for i in range(num_classes)]


def weights_file(run_dir: Path, weights: str) -> tuple[Path, Optional[int], Optional[str], Optional[int]]:
    """(file, epoch, checkpoint, step) of the run's best weights (model.safetensors, written when the run ends;
    while it runs, the best epoch's checkpoint: its moving average where that scored best), its last checkpoint's
    raw weights, or that checkpoint's moving average (ema). checkpoint is the folder name they are from, epoch the
    epochs finished and step the optimizer steps taken when it was saved."""
    if weights not in WEIGHTS:
        raise UserError(f"--weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
    results = read_json(run_dir / "results.json")
    checkpoints = complete_checkpoints(run_dir / "checkpoints")
    if weights == "best" and (run_dir / "model.safetensors").is_file():
        epoch = (results or {}).get("best_epoch")
        rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
        step = next((r.get("step") for r in rows if epoch is not None and r.get("epoch") == epoch), None)
        return run_dir / "model.safetensors", epoch, (f"epoch_{epoch:04d}" if epoch is not None else None), step
    if not checkpoints:
        raise UserError(f"{run_dir} has no model.safetensors and no complete checkpoint: the run has not finished "
                        f"an epoch, or its folder was emptied")
    chosen = checkpoints[-1]
    state = json.loads((chosen / STATE_FILE).read_text())
    averaged = weights == "ema"
    if weights == "best":  # the run has not ended: its best epoch so far, from the newest checkpoint's state
        if state["best_epoch"] < 1:  # a mid-epoch checkpoint of epoch 1 is no epoch's best
            why = (f"the run has not finished an epoch (its newest checkpoint, {chosen.name}, is "
                   f"{state['step_in_epoch']} steps into epoch {state['epoch'] + 1})" if state["epoch"] == 0 else
                   f"none of its {state['epoch']} epochs scored a validation accuracy")
            raise UserError(f"{run_dir} has no best weights: {why}: use --weights last")
        name = f"epoch_{state['best_epoch']:04d}"
        best = next((c for c in checkpoints if c.name == name), None)
        if best is None:
            raise UserError(f"{run_dir}: its best epoch's checkpoint, checkpoints/{name}, is missing: use --weights "
                            f"last")
        averaged = state.get("best_weights") == "ema"  # the average scored best: it is the run's best
        chosen, state = best, json.loads((best / STATE_FILE).read_text())
    if averaged:
        if not (chosen / EMA_FILE).is_file():
            raise UserError(f"--weights {weights}: {chosen} holds no moving average (the run had no --ema.decay)")
        return chosen / EMA_FILE, state["epoch"], chosen.name, state["step"]
    path = chosen / "model.safetensors"
    if not path.is_file():
        raise UserError(f"{chosen} holds no model.safetensors (a DeepSpeed checkpoint keeps sharded weights): "
                        f"use --weights best, the run's exported model.safetensors")
    return path, state["epoch"], chosen.name, state["step"]


def load_run(run_dir: str | Path, weights: str = "best", device="cpu"):
    """(model, info): a run's ViT with its best (or last) weights, in eval mode on `device` without gradients,
    and a RunInfo with its class names, config and preprocessing. Works on any run folder of `vitdist train`."""
    from safetensors.torch import load_file

    from ..model import VisionTransformer

    folder = Path(run_dir)
    cfg = run_config(folder)
    path, epoch, checkpoint, step = weights_file(folder, weights)
    if path.name == EMA_FILE:  # timm's ModelEmaV3 state dict: the averaged model under "module."
        import torch

        state = {k.removeprefix("module."): v for k, v in
                 torch.load(path, map_location=device, weights_only=True).items()}
    else:
        state = load_file(path, device=str(device))
    if "head.weight" not in state:
        raise UserError(f"{path} holds no ViT weights (no head.weight): {NOT_A_RUN}")
    num_classes = state["head.weight"].shape[0]
    model = VisionTransformer.from_config(cfg.model, num_classes)
    model.load_state_dict(state)
    model.to(device).eval().requires_grad_(False)  # for inference; requires_grad_(True) to train it further
    classes = run_classes(folder, cfg, num_classes)
    return model, RunInfo(folder, cfg, classes, weights, path, epoch, read_json(folder / "results.json"), checkpoint,
                          step)


def model_config(model: VisionTransformer, info: RunInfo) -> dict:
    """VisionTransformer's arguments, which are also ModelConfig's fields: num_classes filled in from the head."""
    return dataclasses.asdict(dataclasses.replace(info.config.model, num_classes=model.head.out_features))


def preprocessing(info: RunInfo) -> dict:
    """How an image becomes the model's input; the weights alone do not say it."""
    return {"input_size": [info.config.model.in_channels, info.img_size, info.img_size],
            "mean": list(info.config.data.mean), "std": list(info.config.data.std),
            "how": f"RGB, resized to {info.img_size}x{info.img_size} (antialiased), scaled to [0, 1], "
                   f"then (x - mean) / std per channel"}
