"""A run folder, read. Every command that reads a run uses this module: its logs (diagnose, plots, sweep) and
its model (eval, predict, export, and `vitdist.load_run` in Python).

    model, info = vitdist.load_run("runs/latest")      # the best weights, in eval mode
    x = info.preprocess(PIL.Image.open("cat.png"))     # (3, S, S) uint8, as the run's evaluation saw images
    probs = model(info.normalize(x[None])).softmax(-1)
    print(info.classes[probs.argmax()])
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import TrainConfig, UserError, from_dict

STATE_FILE = "train_state.json"  # written last into a checkpoint folder: its presence marks it complete
DATA_FILE = "data.json"  # written once with config.json: the data's source, class names and split sizes
NOT_A_RUN = "pass a run folder written by `vitdist train` (its --run-dir)"


# --- logs: metrics.jsonl, steps.jsonl, config.json, results.json

@dataclass
class Run:
    dir: Path
    rows: list[dict]  # metrics.jsonl
    config: dict | None  # config.json
    steps: list[dict]  # steps.jsonl ([] when absent)
    results: dict | None  # results.json (absent while running, or after a crash or a divergence)

    @property
    def name(self) -> str:
        return self.dir.resolve().name


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and not text.endswith("\n"):
                break  # a line still being written by a live run
            raise UserError(f"{path} line {i} is not JSON ({e.msg}): pass a run folder written by `vitdist train`")
        if not isinstance(row, dict):
            raise UserError(f"{path} line {i} is not a JSON object: pass a run folder written by `vitdist train`")
        rows.append(row)
    return rows


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg})")


def _nonfinite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isfinite(x)


def read_run(run_dir: str | Path) -> Run:
    """A run folder's logs; a UserError (one line) when it is not one."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"RUN_DIR {run_dir} is not a folder: {NOT_A_RUN}")
    metrics = folder / "metrics.jsonl"
    steps = read_jsonl(folder / "steps.jsonl") if (folder / "steps.jsonl").is_file() else []
    rows = read_jsonl(metrics) if metrics.is_file() else []
    diverged = any(_nonfinite(s.get("loss")) or _nonfinite(s.get("grad_norm")) for s in steps)
    if not rows and not diverged:  # a run that diverged in its first epoch is one, with steps only
        if not metrics.is_file():
            raise UserError(f"RUN_DIR {run_dir} has no metrics.jsonl: {NOT_A_RUN} (it appears after the first "
                            f"epoch)")
        raise UserError(f"{metrics} is empty: the run has not finished an epoch yet")
    for i, row in enumerate(rows, 1):
        if "epoch" not in row:
            raise UserError(f"{metrics} row {i} has no 'epoch': pass a metrics file written by `vitdist train`")
    return Run(folder, rows, read_json(folder / "config.json"), steps, read_json(folder / "results.json"))


# --- the record: config.json and its extensions, checkpoints

def read_config(config_json: Path) -> tuple[TrainConfig, list[dict]]:
    """(config, extensions) from a run's config.json; extensions are its "extended" entries, one per extension.
    A file that is not a vitdist config (torn, edited, or from another version) is a UserError on one line."""
    try:
        d = json.loads(config_json.read_text())
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        extensions = d.pop("extended", [])
        return from_dict(d), extensions
    except json.JSONDecodeError as e:
        why = f"it is not valid JSON ({e.msg}, line {e.lineno})"
    except TypeError as e:  # a field this vitdist does not have: written by another version, or edited
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        what = f"a field this vitdist does not know, {unknown.group(1)!r}" if unknown else str(e)
        why = f"it holds {what}: written by another version of vitdist, or edited"
    except UserError as e:  # a value this vitdist does not allow
        why = f"it holds a value this vitdist does not allow ({e})"
    except (ValueError, AttributeError) as e:
        why = f"it is not a vitdist config ({e})"
    raise UserError(f"{config_json}: {why}: restore the run's own config.json, or start a new run in another "
                    f"--run-dir")


def run_record(resume_dir: Path | None) -> tuple[TrainConfig, list[dict]] | None:
    """(config, extensions) from the config.json of the run a checkpoint belongs to (RUN/checkpoints/epoch_N);
    None for a fresh start or a checkpoint without its run folder."""
    if resume_dir is None or not (path := resume_dir.parent.parent / "config.json").is_file():
        return None
    return read_config(path)


def planned_epochs(saved: TrainConfig, extensions: list[dict]) -> int:
    """How long a run is planned to be: its config.json's epochs, or its last extension's."""
    return extensions[-1]["epochs"] if extensions else saved.epochs


def find_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint folder to resume from, or None. A bad explicit path is the user's error."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir / "checkpoints")
        return found[-1] if found else None
    path = Path(resume)
    if (path / STATE_FILE).is_file():
        return path
    found = complete_checkpoints(path / "checkpoints") or complete_checkpoints(path)
    if found:
        return found[-1]
    raise UserError(f"--resume {resume}: no complete checkpoint there (a checkpoint folder such as "
                    f"RUN_DIR/checkpoints/epoch_0003 holds {STATE_FILE}); pass one, a run folder, or 'auto'")


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders (epoch_NNNN, epoch_NNNN_step_SSSSSSSS) that hold STATE_FILE, oldest first."""
    return sorted(d for d in folder.glob("epoch_*") if (d / STATE_FILE).is_file())


# --- the model: weights, class names, preprocessing

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
        from .data import decode

        return decode(image, self.img_size)

    def normalize(self, x):
        """(N, 3, S, S) uint8 -> float, normalized with the run's mean and std (data.BatchAugment.normalize)."""
        import torch

        mean = torch.tensor(self.config.data.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.data.std, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std


def run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was trained with; a UserError (one line) when the folder is not a run."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"{run_dir} is not a folder: {NOT_A_RUN}")
    if not (folder / "config.json").is_file():
        raise UserError(f"{run_dir} has no config.json: {NOT_A_RUN}")
    return read_config(folder / "config.json")[0]


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

    from .model import VisionTransformer

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

