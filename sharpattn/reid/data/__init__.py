"""Data for training and evaluation: datasets by name, identity batches, transforms, loaders."""

from .loaders import EpochBatches, SeededImages, eval_loader, train_loader
from .registry import DATASETS, build_dataset, register_dataset, synthetic_root
from .sampler import IdentityBatchSampler
from .transforms import build_test_transform, build_train_transform

__all__ = ["DATASETS", "EpochBatches", "IdentityBatchSampler", "SeededImages", "build_dataset",
           "build_test_transform", "build_train_transform", "register_dataset", "synthetic_root",
           "eval_loader", "train_loader"]
