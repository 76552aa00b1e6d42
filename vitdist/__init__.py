"""vitdist: train and tune Vision Transformers on small images, from one CPU to many GPUs."""

from .config import TrainConfig
from .model import VisionTransformer
from .runs import RunInfo, load_run

__all__ = ["RunInfo", "TrainConfig", "VisionTransformer", "load_run"]
__version__ = "0.1.0"
