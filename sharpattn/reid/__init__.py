"""Reference re-ID package: datasets, identity sampling, transforms, evaluation, and a training
loop shared by recipes (SAN, AAA-Net) with its command lines (``sharpattn-train``, ``sharpattn-eval``).

Layout: ``data/`` (datasets by name, batches, transforms, loaders), ``engine/`` (the loop,
checkpoints, stages, torchrun), ``recipes/`` (one file per method), ``evaluation/`` (features,
protocols, learned metrics), ``report/`` (logs, pictures, report.md); ``metrics/`` holds the
protocol math and ``datasets/`` the dataset readers.

The data and evaluation half (``datasets``, ``metrics``, ``data``, ``evaluation``) has no code
that calls the sharpattn operators (a model it evaluates may), so it works without a built
``sharpattn._C``. It does not avoid importing them: importing any ``sharpattn.reid`` module
first runs ``sharpattn/__init__.py``, which registers the ops and tries to load
``sharpattn._C`` (warning when that fails), and then this file, which also imports the engine,
the recipes and ``sharpattn.models``. Importing it needs torch, torchvision, numpy, Pillow, tqdm
and pyyaml; h5py and scipy only to read CUHK03's .mat files, matplotlib only to draw pictures,
tensorboard (optional) only to write its logs. See docs/reid.md for the protocols and
docs/training.md for training.
"""

from . import datasets, metrics
from .datasets import (CUHK03, MSMT17, DukeMTMCreID, ImageDataset, ImageFolderReID, Market1501,
                       make_synthetic)
from .metrics import (KISSME, XQDA, Euclidean, build_metric, compute_distance_matrix,
                      evaluate_cuhk03_classic, evaluate_rank, metric_from_state_dict, re_ranking)
from .data import IdentityBatchSampler, build_test_transform, build_train_transform, register_dataset
from .config import Config, ConfigError, load_config
from .engine import CheckpointError, Trainer, TrainingInterrupted, load_checkpoint, save_checkpoint, train
from .engine.schedule import LRSchedule, StepSchedule, temperature_schedule
from .evaluation import evaluate, extract_features
from .losses import all_gather_with_grad, batch_hard_triplet_loss
from .modeling import build_model, register_model
from .recipes import Recipe, compute_loss, register_recipe
from .report import plot_attention_masks, plot_ranked_lists, plot_training_curves

__all__ = ["CUHK03", "CheckpointError", "Config", "ConfigError", "DukeMTMCreID", "IdentityBatchSampler",
           "ImageDataset", "ImageFolderReID", "LRSchedule", "MSMT17", "Market1501", "Trainer",
           "TrainingInterrupted", "all_gather_with_grad", "batch_hard_triplet_loss", "build_model",
           "build_test_transform", "build_train_transform", "compute_distance_matrix", "compute_loss",
           "datasets", "evaluate", "evaluate_cuhk03_classic", "evaluate_rank", "extract_features",
           "load_checkpoint", "load_config", "make_synthetic", "metrics", "plot_attention_masks",
           "plot_ranked_lists", "plot_training_curves", "re_ranking", "register_model",
           "save_checkpoint", "temperature_schedule", "train"]
__all__ += ["Recipe", "StepSchedule", "register_dataset", "register_recipe"]
__all__ += ["Euclidean", "KISSME", "XQDA", "build_metric", "metric_from_state_dict"]  # learned metrics
