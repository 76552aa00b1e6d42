"""vitdist: train and tune Vision Transformers on small images, from one CPU to many GPUs.

The package by its rooms, imports running one way (tests/test_imports.py holds it):
core (config, presets, model, flops, optim, precision, stopping, console, files) <- data <- scale <- train
<- after <- checklist <- cli. The README's "How it is built" is the map, one line per module.
"""

from .after.load import RunInfo, load_run
from .config import TrainConfig
from .model import VisionTransformer

__all__ = ["RunInfo", "TrainConfig", "VisionTransformer", "load_run"]
__version__ = "0.1.0"
