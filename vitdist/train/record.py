"""A run folder, read: its logs (metrics.jsonl, steps.jsonl, results.json: diagnose, plots, sweeps), its config and
extensions (config.json) and its checkpoints (what a resume continues from)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig, UserError, from_dict


STATE_FILE = "train_state.json"  # written last into a checkpoint folder: its presence marks it complete
DATA_FILE = "data.json"  # written once with config.json: the data's source, class names and split sizes
NOT_A_RUN = "pass a run folder written by `vitdist train` (its --run-dir)"


@dataclass
class Run:
    dir: Path
    rows: list[dict]  # metrics.jsonl
    config: dict | None  # config.json
    steps: list[dict]  # steps.jsonl ([] when absent)
    results: dict | None  # results.json (absent while running, or after a crash or a divergence)

    @property
    def name(self) -> str:
        """The folder's name; a tune's seed folder (trial_003/seed_1) with its trial's."""
        here = self.dir.resolve()
        return f"{here.parent.name}/{here.name}" if here.name.startswith("seed_") else here.name


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


def run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run folder was trained with; a UserError (one line) when the folder is not a run."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"{run_dir} is not a folder: {NOT_A_RUN}")
    if not (folder / "config.json").is_file():
        raise UserError(f"{run_dir} has no config.json: {NOT_A_RUN}")
    return read_config(folder / "config.json")[0]
