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
import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
import tyro

from ..config import UserError
from ..files import make_readable, require_writable, save_safetensors
from ..model import VisionTransformer
from ..train.record import run_config
from .card import UPLOAD, model_card
from .load import RunInfo, load_run, model_config, preprocessing
from .timm import TIMM_README, timm_config, timm_model


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
    from ..console import exit_on_user_error

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
