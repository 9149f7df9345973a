"""Reference re-ID package: datasets, identity sampling, transforms and evaluation.

Independent of the sharpattn kernels: it needs torch, torchvision, numpy, Pillow and tqdm
(plus h5py and scipy to read CUHK03's .mat files). See docs/reid.md for the protocols.
"""

from . import datasets, metrics
from .datasets import (CUHK03, MSMT17, DukeMTMCreID, ImageDataset, ImageFolderReID, Market1501,
                       make_synthetic)
from .features import extract_features
from .metrics import (compute_distance_matrix, evaluate_cuhk03_classic, evaluate_rank,
                      re_ranking)
from .sampler import IdentityBatchSampler
from .transforms import build_test_transform, build_train_transform
from .visualize import plot_ranked_lists

__all__ = ["CUHK03", "DukeMTMCreID", "IdentityBatchSampler", "ImageDataset", "ImageFolderReID",
           "MSMT17", "Market1501", "build_test_transform", "build_train_transform",
           "compute_distance_matrix", "datasets", "evaluate_cuhk03_classic", "evaluate_rank",
           "extract_features", "make_synthetic", "metrics", "plot_ranked_lists", "re_ranking"]
