"""The loop every recipe shares: steps, AMP, clipping, stopping, exact resume, periodic evaluation
with best tracking, logs, stages, runs that start from each other, and torchrun's process groups."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import resolve_device, setup_distributed
from .stages import train_stages
from .stop import TrainingDiverged, TrainingInterrupted
from .trainer import Trainer, train

__all__ = ["CheckpointError", "Trainer", "TrainingDiverged", "TrainingInterrupted", "load_checkpoint", "resolve_device",
           "save_checkpoint", "setup_distributed", "train", "train_stages"]
