"""vitdist: train and tune Vision Transformers on small images, from one CPU to many GPUs."""

from .config import TrainConfig
from .model import VisionTransformer

__all__ = ["TrainConfig", "VisionTransformer"]
__version__ = "0.1.0"
