"""A split scored with what a single number hides: loss, accuracy, top-5, per-class accuracy and the confusion
matrix, every sample counted once across ranks (score_split), written as eval-<split>.json with its picture, and
sent to W&B. The run scores its test split with it at the end; `vitdist eval` scores any split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure



TOP_K = 5  # top-5 accuracy, reported from 10 classes up (below that it is near 1 by construction)


def score_split(model, loader, normalize, accelerator, num_classes: int) -> dict:
    """Loss (plain cross-entropy), accuracy, top-5 accuracy, per-class accuracy and the confusion matrix
    (rows: true class, columns: predicted) over a whole split, every sample counted once across all ranks."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    k = min(TOP_K, num_classes)
    sums = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # loss, top-1 hits, top-k hits
    confusion = torch.zeros(num_classes * num_classes, device=accelerator.device, dtype=torch.int64)
    with torch.no_grad():
        for x, y in loader:
            logits = model(normalize(x).to(dtype)).float()
            loss = F.cross_entropy(logits, y, reduction="none")
            top = logits.topk(k, dim=-1).indices  # (B, k), best first
            # gather_for_metrics drops the samples accelerate repeated to even out the ranks' shards.
            loss, top, y = accelerator.gather_for_metrics((loss, top, y))
            sums[0] += loss.double().sum()
            sums[1] += (top[:, 0] == y).sum()
            sums[2] += (top == y[:, None]).any(-1).sum()
            confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes * num_classes)
    model.train(was_training)
    matrix = confusion.view(num_classes, num_classes).tolist()
    per_class = [sum(row) for row in matrix]
    count = sum(per_class)
    loss_sum, hits, top_hits = sums.tolist()
    return {"num_samples": count, "loss": loss_sum / count, "accuracy": hits / count,
            "top5_accuracy": top_hits / count if num_classes >= 10 else None,
            "per_class_accuracy": [matrix[c][c] / n if n else None for c, n in enumerate(per_class)],
            "per_class_count": per_class, "confusion": matrix}


def eval_names(split: str, weights: str) -> tuple[str, str]:
    """The file names of a split's scores and confusion picture; the best weights' go without a suffix."""
    suffix = "" if weights == "best" else f"-{weights}"
    return f"eval-{split}{suffix}.json", f"confusion-{split}{suffix}.png"


def eval_paths(out: Optional[str], run_dir: Path, split: str, weights: str) -> tuple[Path, Path]:
    """(scores, picture): in the run folder; --out FILE.json and FILE.png beside it; --out FOLDER/ with the
    run folder's names."""
    json_name, png_name = eval_names(split, weights)
    if out is None:
        return run_dir / json_name, run_dir / png_name
    path = Path(out)
    return (path, path.with_suffix(".png")) if path.suffix == ".json" else (path / json_name, path / png_name)


def write_eval(run_dir: Path, split: str, weights: str, scores: dict, classes: list[str], about: dict,
               plot: bool = True, out: Optional[str] = None) -> tuple[Path, Optional[Path]]:
    """RUN/eval-<split>.json and, with `plot`, RUN/confusion-<split>.png (or where `out` says: eval_paths)."""

    json_path, png_path = eval_paths(out, run_dir, split, weights)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    record = {"split": split, "weights": weights, **about, "classes": classes, **scores}
    # One key a line, and the matrix one row a line: readable at 100 classes, where indent=2 gives 10,000 lines.
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items() if k != "confusion"]
    lines.append('  "confusion": [\n' + ",\n".join(f"    {json.dumps(row)}" for row in scores["confusion"]) + "\n  ]")
    json_path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    png = None
    if plot:
        png = plot_confusion(scores["confusion"], classes, png_path,
                             f"{run_dir.resolve().name}: {split}, {weights} weights, accuracy "
                             f"{scores['accuracy']:.4f} ({scores['num_samples']:,} images)")
    return json_path, png


def log_to_wandb(run, split: str, scores: dict, classes: list[str], weights: Path, about: dict, step: int) -> None:
    """A split's confusion matrix and per-class accuracy in wandb's own types, and the weights as a model
    artifact (offline, both wait in the run folder for `wandb sync`)."""
    import wandb

    matrix = scores["confusion"]
    y_true = [i for i, row in enumerate(matrix) for j, n in enumerate(row) for _ in range(n)]
    preds = [j for row in matrix for j, n in enumerate(row) for _ in range(n)]
    table = wandb.Table(columns=["class", "accuracy", "images"],
                        data=[[c, a, n] for c, a, n in zip(classes, scores["per_class_accuracy"],
                                                           scores["per_class_count"])])
    run.log({f"{split}/confusion_matrix": wandb.plot.confusion_matrix(y_true=y_true, preds=preds,
                                                                     class_names=classes),
             f"{split}/per_class_accuracy": table}, step=step)
    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={**about, "classes": classes,
                                                                         f"{split}_accuracy": scores["accuracy"]})
    artifact.add_file(str(weights))
    run.log_artifact(artifact, aliases=["best"])


def summary(split: str, scores: dict, classes: list[str], scored: str = "") -> str:
    """Two lines: the split's numbers (and `scored`: which weights), then its weakest and strongest classes."""
    top5 = f", top-5 {scores['top5_accuracy']:.4f}" if scores["top5_accuracy"] is not None else ""
    ranked = sorted((a, c) for a, c in zip(scores["per_class_accuracy"], classes) if a is not None)
    shown = min(3, len(ranked) // 2) or 1
    worst = ", ".join(f"{c} {a:.3f}" for a, c in ranked[:shown])
    best = ", ".join(f"{c} {a:.3f}" for a, c in reversed(ranked[-shown:]))
    return (f"{split}: {scores['num_samples']:,} images, loss {scores['loss']:.4f}, accuracy "
            f"{scores['accuracy']:.4f}{top5}{'; ' + scored if scored else ''}\n  weakest classes: {worst}; "
            f"strongest: {best}")


DPI = 110


def plot_confusion(matrix: list[list[int]], classes: list[str], out: str | Path, title: str) -> Path:
    """The confusion matrix with each true class's row normalized to 1 (so rare classes read like common ones),
    class names on both axes; cell values printed up to 20 classes, and the figure grows with the class count so
    that 100 names stay legible."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    rows = m.sum(1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(classes)
    side = min(max(6.0, 0.22 * n + 3), 30.0)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    font = 9 if n <= 20 else 6  # a cell is 0.22 in wide from 20 classes on: 6 pt names fit it
    ax.set_xticks(range(n), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(n), classes, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if share[i, j] >= 0.005:
                    ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out
