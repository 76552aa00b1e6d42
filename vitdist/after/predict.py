"""`vitdist predict RUN INPUTS...`: class predictions for image files and folders, from a run's saved model.

    vitdist predict runs/latest photo.jpg holiday/ --top-k 3 --out preds.csv

Images of any size and mode (grey, RGBA, palette; PNG, JPEG, ...) are converted to RGB, resized and normalized
as the run's evaluation did (runs.RunInfo), decoded by loader workers and classified in batches on the device.
Rows follow the order of INPUTS (a folder's files sorted by path). A file that cannot be read is said on one
line, kept in the output with its error, and counted at the end: none is dropped silently. When none could be
read, the command says so and exits 1.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import tyro
from torch.utils.data import DataLoader, Dataset

from ..config import UserError
from ..files import require_writable
from .load import load_run


def image_files(inputs: list[str]) -> list[Path]:
    """Each input as given: a file stays itself (whatever its name), a folder becomes its image files (by
    extension, every format Pillow opens, as training takes them: data.is_image_file; recursively, sorted by
    path)."""
    from ..data.images import is_image_file

    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{name}: no such file or folder: pass image files or folders of them")
    if not files:
        raise UserError(f"no image files in {', '.join(inputs)}: pass image files or folders of them")
    return files


class Images(Dataset):
    """(uint8 image, index, error) per file; an unreadable file gives a blank image and its error."""

    def __init__(self, files: list[Path], preprocess, img_size: int):
        self.files, self.preprocess, self.img_size = files, preprocess, img_size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                return self.preprocess(im), i, ""
        except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            return torch.zeros(3, self.img_size, self.img_size, dtype=torch.uint8), i, str(e) or type(e).__name__


@dataclass
class PredictArgs:
    run_dir: tyro.conf.Positional[str]
    """A run folder written by `vitdist train`."""
    inputs: tyro.conf.Positional[tuple[str, ...]]
    """Image files and folders of them (searched recursively)."""
    top_k: int = 5
    """Classes to report per image, most likely first (at most the run's class count)."""
    out: Optional[str] = None
    """Write the predictions to this .csv or .jsonl file; without it they are printed."""
    weights: Literal["best", "last", "ema"] = "best"
    """best: the run's model.safetensors (its best epoch, raw or averaged as results.json says; while it runs, the
    best so far); last: its newest checkpoint's raw weights; ema: that checkpoint's moving average (--ema.decay)."""
    batch_size: int = 256
    """Images per forward."""
    num_workers: Optional[int] = None
    """Decoding workers; default min(8, CPUs)."""

    def __post_init__(self):
        for flag, value, low in (("--top-k", self.top_k, 1), ("--batch-size", self.batch_size, 1),
                                 ("--num-workers", self.num_workers, 0)):
            if value is not None and not (isinstance(value, int) and value >= low):
                raise UserError(f"{flag} must be >= {low}, got {value}")


def predict(args: PredictArgs) -> list[dict]:
    """One row per file, in input order: path, the top-k classes with probabilities, or the error."""
    from tqdm.auto import tqdm

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix not in (".csv", ".jsonl"):
        raise UserError(f"--out {args.out}: name a .csv or a .jsonl file")
    files = image_files(list(args.inputs))
    if out is not None:  # before the work, not after every prediction is made
        require_writable(out, "pass another --out, where you can write")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, info = load_run(args.run_dir, args.weights, device)
    k = min(args.top_k, len(info.classes))
    workers = args.num_workers if args.num_workers is not None else max(1, min(8, os.cpu_count() or 1))
    loader = DataLoader(Images(files, info.preprocess, info.img_size), batch_size=args.batch_size,
                        num_workers=workers, pin_memory=device.type == "cuda")
    # A GPU run in bf16 or fp16 predicts in it; anything else (and any CPU) in fp32.
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(info.config.precision)
    autocast = torch.autocast("cuda", dtype=half) if half and device.type == "cuda" else torch.autocast(
        device.type, enabled=False)
    rows: list[dict] = [{} for _ in files]
    t0 = time.perf_counter()
    with torch.no_grad(), autocast:
        for x, index, errors in tqdm(loader, desc="predicting", unit="batch", leave=False, disable=None):
            probs = model(info.normalize(x.to(device, non_blocking=True))).float().softmax(-1)
            top_p, top_c = probs.topk(k, dim=-1)
            for i, p, c, err in zip(index.tolist(), top_p.tolist(), top_c.tolist(), errors):
                path = str(files[i])
                if err:
                    print(f"vitdist: skipped {path}: not a readable image ({err})", file=sys.stderr)
                    rows[i] = {"path": path, "error": err}
                else:
                    rows[i] = {"path": path, "classes": [info.classes[j] for j in c], "probs": p}
    seconds = time.perf_counter() - t0
    skipped = sum(1 for r in rows if "error" in r)
    if out is not None:
        write_predictions(rows, out, k)
    else:
        for r in rows:
            print(f"{r['path']}\t" + ("unreadable: " + r["error"] if "error" in r else
                                      "  ".join(f"{c} {p:.3f}" for c, p in zip(r["classes"], r["probs"]))))
    done = len(rows) - skipped
    if done == 0:  # main() exits 1: nothing was classified, whatever the file says
        print(f"vitdist: none of the {len(rows)} inputs could be read as an image: nothing predicted",
              file=sys.stderr)
        return rows
    print(f"predicted {done} images in {seconds:.1f} s ({done / seconds:.0f} images/s on {device}, "
          f"{info.weights} weights of {info.dir})" + (f"; skipped {skipped} unreadable" if skipped else "")
          + (f" -> {out}" if out else ""), file=sys.stderr if out is None else sys.stdout)
    return rows


def write_predictions(rows: list[dict], out: Path, k: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        with open(out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        return
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"] + [f"{what}_{i}" for i in range(1, k + 1) for what in ("class", "prob")] + ["error"])
        for r in rows:
            cells = [v for c, p in zip(r.get("classes", []), r.get("probs", [])) for v in (c, f"{p:.6f}")]
            w.writerow([r["path"]] + cells + [""] * (2 * k - len(cells)) + [r.get("error", "")])


def main(argv: list[str] | None = None) -> int:
    from ..console import exit_on_user_error

    with exit_on_user_error():
        args = tyro.cli(PredictArgs, args=argv, prog="vitdist predict",
                        description="Classify image files and folders with a run's saved model: the top-k classes "
                                    "and their probabilities per image, printed or written to a .csv/.jsonl.")
        rows = predict(args)
    return 1 if all("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
