"""Training: typed configs, the staged loop, checkpoints, DDP, bundles at the end."""
from ichdet.engine.config import TrainConfig, load_config
from ichdet.engine.train import train

__all__ = ["TrainConfig", "load_config", "train"]
