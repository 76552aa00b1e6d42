"""Every config dataclass, validated in __post_init__.

Each field's docstring is its `--help` text (tyro reads them). A bad value raises
`ConfigError` naming the flag, what was given and what is allowed; the CLI prints
it on one line and exits 2.

One idea, kept whole past 400 lines: the configuration a run is, every field with its check and its help.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional


class UserError(Exception):
    """A problem the user can fix (a bad flag, missing data). Printed on one line, exit 2."""


class ConfigError(UserError):
    """A config value that is not allowed."""


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _positive(value, flag: str) -> None:
    _require(_number(value) and value > 0, f"{flag} must be > 0, got {value}")


def _number(value) -> bool:
    """A finite int or float (not a bool, not NaN or infinite): what every numeric field must hold."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _in_range(value, lo: float, hi: float, flag: str, hi_open: bool = True) -> None:
    """lo <= value < hi (or <= hi), finite."""
    ok = _number(value) and lo <= value and (value < hi if hi_open else value <= hi)
    _require(ok, f"{flag} must be in [{lo:g}, {hi:g}{')' if hi_open else ']'}, got {value}")


def _at_least(value, lo: float, flag: str) -> None:
    _require(_number(value) and value >= lo, f"{flag} must be a number >= {lo:g}, got {value}")


def _text(value, flag: str, optional: bool = False) -> None:
    ok = (optional and value is None) or (isinstance(value, str) and value.strip() != "")
    _require(ok, f"{flag} must be a non-empty text{' (or left out)' if optional else ''}, got {value!r}")


def _triple(value, flag: str) -> None:
    _require(isinstance(value, (tuple, list)) and len(value) == 3 and all(_number(v) for v in value),
             f"{flag} must be three finite numbers, one per RGB channel, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    img_size: int = 32
    """Input images are img_size x img_size pixels (data is resized to it when needed)."""
    patch_size: int = 8
    """Side of one square patch; img_size must be divisible by it (8 gives 16 tokens on 32px, 4 gives 64)."""
    in_channels: int = 3
    """Channels of the input images: 3, since vitdist decodes every image to RGB (grey images included)."""
    embed_dim: int = 128
    """Width of every token."""
    num_layers: int = 4
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads per block; must divide embed_dim."""
    dim_feedforward: int = 512
    """Hidden width of each block's MLP (the checklist uses 4 x embed_dim)."""
    num_classes: Optional[int] = None
    """Classes of the head; None takes the data set's own count."""
    dropout: float = 0.1
    """Dropout on embeddings, attention weights, attention output and MLP."""
    drop_path_rate: float = 0.0
    """Stochastic depth at the last block; it rises linearly from 0 at the first."""

    def __post_init__(self):
        for name in ("img_size", "patch_size", "in_channels", "embed_dim", "num_layers", "num_heads",
                     "dim_feedforward"):
            _positive(getattr(self, name), f"--model.{name.replace('_', '-')}")
            _require(isinstance(getattr(self, name), int), f"--model.{name.replace('_', '-')} must be a whole number")
        _require(self.in_channels == 3, f"--model.in-channels {self.in_channels}: vitdist decodes every image to RGB "
                                        f"(grey and RGBA ones too), so the model takes 3 channels: leave it at 3")
        _require(self.img_size % self.patch_size == 0,
                 f"--model.img-size {self.img_size} is not divisible by --model.patch-size {self.patch_size}: "
                 f"choose a patch size that divides it (e.g. 4 or 8 for 32)")
        _require(self.embed_dim % self.num_heads == 0,
                 f"--model.embed-dim {self.embed_dim} is not divisible by --model.num-heads {self.num_heads}: "
                 f"choose heads that divide it (e.g. {_divisor_hint(self.embed_dim)})")
        _require(self.num_classes is None or (_number(self.num_classes) and self.num_classes >= 2),
                 f"--model.num-classes must be >= 2 (or None for the data set's count), got {self.num_classes}")
        _in_range(self.dropout, 0.0, 1.0, "--model.dropout")
        _in_range(self.drop_path_rate, 0.0, 1.0, "--model.drop-path-rate")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


def _divisor_hint(n: int) -> str:
    return " or ".join(str(h) for h in (4, 8, 2, 1) if n % h == 0)


DataName = Literal["cifar10", "cifar100", "imagefolder", "digits", "synthetic"]
DATASET_NAMES = ("cifar10", "cifar100", "imagefolder", "digits", "synthetic")
# Classes of each source that has a fixed count (an ImageFolder's is its number of class folders).
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10, "synthetic": 10}
# The checklist's gradient check: a total gradient norm from 0.1 to 10 is reasonable (check, diagnose, plots).
GRAD_NORM_RANGE = (0.1, 10.0)


@dataclass(frozen=True)
class DataConfig:
    name: DataName = "cifar10"
    """Data source: cifar10 / cifar100 (torchvision), imagefolder (a root with train/ and val/ or test/),
    digits (scikit-learn's 8x8 handwritten digits, shipped with it: the offline demo), synthetic (tests)."""
    root: Optional[str] = None
    """Folder holding the data. cifar*: where torchvision's copy is or goes (default ~/.cache/vitdist/data);
    imagefolder: the root with train/ and val/ or test/."""
    download: bool = True
    """cifar*: download into root when missing."""
    val_fraction: float = 0.1
    """Share of the training split held out for validation (seeded, stratified), when the source has no val/
    split. 0.1 of CIFAR's 50,000 is 5,000."""
    train_subset: Optional[int] = None
    """Train on only this many samples (stratified, seeded): the overfit test uses 32."""
    val_subset: Optional[int] = None
    """Validate on only this many samples (stratified, seeded)."""
    train_eval_size: int = 2048
    """Clean training samples (no augmentation, no dropout) evaluated each epoch: the honest train
    accuracy under Mixup/CutMix."""
    synthetic_size: int = 640
    """synthetic: number of images (before the validation split)."""
    num_workers: Optional[int] = None
    """Loader workers. Default: none for a split held in memory (the training split is then indexed on the
    device), and min(8, this machine's CPUs per process) for image files decoded per batch."""
    skip_corrupt: bool = False
    """imagefolder: leave out images that cannot be read (the header says how many; the run folder lists them
    in skipped_images.txt). Without it, the first such file stops the run with its name."""
    augment: bool = True
    """RandomCrop(img_size, padding=crop_padding) and RandomHorizontalFlip on training batches."""
    crop_padding: int = 4
    """Padding of the random crop, in pixels."""
    color_jitter: bool = False
    """Add ColorJitter(0.2, 0.2, 0.2, 0.1) (a stronger augmentation against overfitting)."""
    rand_augment: Optional[str] = None
    """N,M: RandAugment with N ops at magnitude M of 31 bins (torchvision's ops and tables; e.g. 2,9), each image
    drawing its own ops, on the training device, after crop and flip (vitdist/augment.py)."""
    trivial_augment: bool = False
    """TrivialAugmentWide: one op at a random magnitude per image, drawn per image, on the training device."""
    random_erasing: float = 0.0
    """Erase a random rectangle of each image with this probability (torchvision's RandomErasing, after
    normalization: the erased area is the mean colour); 0 turns it off (0.25 is common)."""
    mixup_alpha: float = 0.0
    """MixUp's Beta(alpha, alpha); 0 turns it off (0.8 is common)."""
    cutmix_alpha: float = 0.0
    """CutMix's Beta(alpha, alpha); 0 turns it off (1.0 is common). With both on, one is picked per batch."""
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Normalization mean per channel."""
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Normalization std per channel."""

    def __post_init__(self):
        # The values only: whether --data.root exists is checked where data is read (check_root), so a run folder
        # whose data has moved can still be read, and a new --data.root given over it.
        _require(self.name in DATASET_NAMES, f"--data.name {self.name!r}: choose one of {', '.join(DATASET_NAMES)}")
        _text(self.root, "--data.root", optional=True)
        _require(self.root is not None or self.name != "imagefolder",
                 "--data.name imagefolder needs --data.root DIR (a folder with train/ and val/ or test/)")
        _in_range(self.val_fraction, 0.0, 1.0, "--data.val-fraction")
        for name in ("train_subset", "val_subset"):
            value = getattr(self, name)
            _require(value is None or (_number(value) and value > 0),
                     f"--data.{name.replace('_', '-')} must be > 0, got {value}")
        _require(_number(self.train_eval_size) and self.train_eval_size >= 1,
                 f"--data.train-eval-size must be >= 1 (the clean training images scored each epoch), got "
                 f"{self.train_eval_size}")
        _require(_number(self.synthetic_size) and self.synthetic_size >= 20,
                 f"--data.synthetic-size must be >= 20 (two images of each of its 10 classes), got "
                 f"{self.synthetic_size}")
        _require(self.num_workers is None or (_number(self.num_workers) and self.num_workers >= 0),
                 f"--data.num-workers must be >= 0, got {self.num_workers}")
        _require(_number(self.crop_padding) and self.crop_padding >= 0,
                 f"--data.crop-padding must be >= 0 pixels (0: no crop), got {self.crop_padding}")
        _require(self.rand_augment is None or self.rand_augment_ops is not None,
                 f"--data.rand-augment {self.rand_augment}: give N,M (ops per image, magnitude 0-30), e.g. 2,9")
        _require(not (self.rand_augment and self.trivial_augment),
                 "--data.rand-augment and --data.trivial-augment are alternatives: pick one")
        _in_range(self.random_erasing, 0.0, 1.0, "--data.random-erasing", hi_open=False)
        _at_least(self.mixup_alpha, 0.0, "--data.mixup-alpha")
        _at_least(self.cutmix_alpha, 0.0, "--data.cutmix-alpha")
        _triple(self.mean, "--data.mean")
        _triple(self.std, "--data.std")
        _require(all(v > 0 for v in self.std), f"--data.std must be > 0 in every channel (images are divided by "
                                                f"it), got {tuple(self.std)}")

    def check_root(self) -> None:
        """That --data.root holds the data, where a command is about to read it (not when a config is built: a
        run folder stays readable when its data moves)."""
        if self.root is None:
            return
        root = Path(self.root).expanduser()
        _require(root.is_dir(), f"--data.root {self.root} does not exist: pass an existing folder"
                                + (" that holds train/" if self.name == "imagefolder" else
                                   " (or leave it out: cifar downloads into ~/.cache/vitdist/data)"))
        if self.name == "imagefolder":
            _require((root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()),
                     f"--data.root {self.root} is not an ImageFolder root: it needs train/ and val/ or test/ "
                     f"(each with one folder per class)")

    @property
    def rand_augment_ops(self) -> Optional[tuple[int, int]]:
        """(N, M) of --data.rand-augment N,M; None when off or malformed."""
        try:
            n, m = (int(v) for v in str(self.rand_augment).split(","))
        except ValueError:
            return None
        return (n, m) if n >= 1 and 0 <= m <= 30 else None

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate of AdamW (reached after warmup)."""
    weight_decay: float = 1e-4
    """AdamW weight decay; never applied to biases, norms, position embedding or class token."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_epochs: float = 5.0
    """Linear warmup from 0 to lr, in epochs (stepped per optimizer step)."""
    min_lr: float = 1e-6
    """Cosine decay ends here, at the last step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off (the norm is still logged)."""

    def __post_init__(self):
        _positive(self.lr, "--optim.lr")
        _at_least(self.weight_decay, 0.0, "--optim.weight-decay")
        _require(isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                 and all(_number(b) and 0 <= b < 1 for b in self.betas),
                 f"--optim.betas must be two numbers in [0, 1) (AdamW's moment decays, e.g. 0.9 0.999), got "
                 f"{self.betas}")
        _at_least(self.warmup_epochs, 0.0, "--optim.warmup-epochs")
        _require(_number(self.min_lr) and 0 <= self.min_lr <= self.lr,
                 f"--optim.min-lr must be in [0, --optim.lr={self.lr}], got {self.min_lr}")
        _at_least(self.max_grad_norm, 0.0, "--optim.max-grad-norm")


@dataclass(frozen=True)
class BatchConfig:
    global_batch_size: int = 128
    """Images per optimizer step, over all processes and accumulation steps."""
    micro_batch_size: Optional[int] = None
    """Images per process per forward pass; None is global / processes (no accumulation).
    Accumulation steps = global / (micro x processes)."""
    auto: bool = False
    """Measure the largest micro-batch that fits at start (cached) and accumulate to keep the global batch."""

    def __post_init__(self):
        _positive(self.global_batch_size, "--batch.global-batch-size")
        if self.micro_batch_size is not None:
            _positive(self.micro_batch_size, "--batch.micro-batch-size")
            _require(self.global_batch_size % self.micro_batch_size == 0,
                     f"--batch.global-batch-size {self.global_batch_size} is not divisible by "
                     f"--batch.micro-batch-size {self.micro_batch_size}")


@dataclass(frozen=True)
class LogConfig:
    wandb: bool = False
    """Log to Weights & Biases (WANDB_MODE=offline works without a network)."""
    wandb_project: str = "vitdist"
    """W&B project."""
    wandb_name: Optional[str] = None
    """W&B run name; default: the run folder's name."""
    wandb_tags: tuple[str, ...] = ()
    """W&B tags."""
    wandb_group: Optional[str] = None
    """W&B group: runs that belong together (`vitdist tune` puts its trials in one, named after the tune folder)."""
    tensorboard: bool = True
    """Write TensorBoard event files into RUN_DIR/tensorboard."""
    progress: bool = True
    """Progress within each epoch, on rank 0: a live bar at a terminal; elsewhere (a file, a pipe, a SLURM log)
    a plain line every --log.progress-every-s seconds."""
    progress_every_s: float = 30.0
    """Seconds between the plain progress lines written when the output is not a terminal."""
    every_steps: int = 50
    """Read the steps' loss and gradient norm on the host every this many optimizer steps (and at each epoch's
    end): one wait for the device per read, not per step. steps.jsonl still gets every step; a non-finite loss
    stops the run at the read that sees it."""

    def __post_init__(self):
        _positive(self.every_steps, "--log.every-steps")
        _text(self.wandb_project, "--log.wandb-project")
        _text(self.wandb_name, "--log.wandb-name", optional=True)
        _text(self.wandb_group, "--log.wandb-group", optional=True)
        _require(all(isinstance(t, str) and t.strip() for t in self.wandb_tags),
                 f"--log.wandb-tags must be non-empty texts, got {self.wandb_tags}")
        _at_least(self.progress_every_s, 0.0, "--log.progress-every-s")


@dataclass(frozen=True)
class EmaConfig:
    decay: float = 0.0
    """Keep an exponential moving average of the weights, updated after every optimizer step with this decay
    (e.g. 0.999; 0: off). It is evaluated each epoch beside the raw weights (val_acc_ema) and saved in every
    checkpoint; timm's ModelEmaV3, kept in fp32."""
    warmup: bool = True
    """Warm the decay up, 1 - (1 + step)^(-2/3) until it reaches --ema.decay (timm's schedule): early on the
    average follows the weights instead of holding on to the random start."""
    select_best: bool = True
    """The run's best epoch, early stopping and model.safetensors take the better of the raw and the EMA
    validation accuracy (results.json's "weights" says which); without it, the raw weights only."""

    def __post_init__(self):
        _in_range(self.decay, 0.0, 1.0, "--ema.decay")


Precision = Literal["auto", "no", "tf32", "bf16", "fp16"]
PRECISIONS = ("auto", "no", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    epochs: int = 100
    """Training epochs (full passes over the training split)."""
    precision: Precision = "auto"
    """auto: bf16 on a GPU that runs it, else fp32 with TF32 matmuls on a GPU (tf32), else fp32 (no); the
    header and config.json say which. bf16 and fp16 (loss scaling, GPU only) run through accelerate's autocast;
    no is strict fp32."""
    compile: bool = False
    """torch.compile the model (in place: checkpoints and model.safetensors keep plain names, and load into an
    uncompiled model). The first steps and evaluations wait for the compiler. Off by default until measured
    on a GPU: on a CPU it is no faster. Not with DeepSpeed."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy (combined with Mixup/CutMix's soft targets)."""
    early_stop_patience: int = 15
    """Stop after this many epochs without a better validation accuracy; 0 turns it off."""
    seed: int = 0
    """Seeds the model, the data split and order, and augmentation."""
    run_dir: str = "runs/latest"
    """Folder for config.json, metrics.jsonl, checkpoints/ and trackers' files."""
    resume: Optional[str] = None
    """'auto' continues from RUN_DIR's last complete checkpoint if there is one; a path continues from that
    checkpoint folder."""
    checkpoint_every_epochs: int = 1
    """Save a checkpoint every this many epochs (and always at the last)."""
    checkpoint_every_steps: int = 0
    """Also save one every this many optimizer steps, inside epochs (a resume continues mid-epoch exactly);
    0: only at epoch ends. Ctrl-C and SIGTERM save one wherever the run is."""
    overwrite: bool = False
    """Start afresh in a RUN_DIR that holds an earlier run, deleting its logs and checkpoints (without this, such
    a folder is refused: continue it with --resume auto, or pick another --run-dir)."""
    test_at_end: bool = True
    """Evaluate the best checkpoint on the test split once, at the end. Sweeps turn it off: tuning must not
    look at test data."""
    extend_lr: Optional[float] = None
    """When a resume extends the run (--resume auto --epochs beyond its plan): warm the rate up again, from where
    it is to this peak over a tenth of the added epochs, then cosine down to --optim.min-lr. Without it the rate
    goes on from where it is (a finished run's is min_lr, which barely moves the weights)."""

    def __post_init__(self):
        _positive(self.epochs, "--epochs")
        _require(self.precision in PRECISIONS, f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        _in_range(self.label_smoothing, 0.0, 1.0, "--label-smoothing")
        _at_least(self.early_stop_patience, 0, "--early-stop-patience")
        # numpy's seed (accelerate's set_seed seeds it too) takes 0 .. 2**32 - 1.
        _require(_number(self.seed) and 0 <= self.seed < 2**32, f"--seed must be in [0, 2**32), got {self.seed}")
        _text(self.run_dir, "--run-dir")
        _text(self.resume, "--resume", optional=True)
        _positive(self.checkpoint_every_epochs, "--checkpoint-every-epochs")
        _at_least(self.checkpoint_every_steps, 0, "--checkpoint-every-steps")
        _require(self.extend_lr is None or (_number(self.extend_lr) and self.extend_lr > 0),
                 f"--extend-lr must be > 0 (or left out), got {self.extend_lr}")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> TrainConfig:
    """Inverse of to_dict (reads config.json back)."""
    subs = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "batch": BatchConfig, "log": LogConfig,
            "ema": EmaConfig}
    kwargs = {}
    for key, value in d.items():
        if key in subs:
            value = subs[key](**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        kwargs[key] = value
    return TrainConfig(**kwargs)
