"""Re-ID datasets as ``(path, pid, camid)`` lists, and a synthetic one for tests and demos."""

from .base import DatasetFormatError, DatasetNotFoundError, ReIDDataset
from .check import UnreadableImageWarning, check_images
from .cuhk03 import CUHK03
from .dukemtmc import DukeMTMCreID
from .folder import ImageFolderReID
from .image_dataset import ImageDataset, read_image
from .market1501 import Market1501
from .msmt17 import MSMT17
from .synthetic import make_synthetic

__all__ = ["CUHK03", "DatasetFormatError", "DatasetNotFoundError", "DukeMTMCreID", "ImageDataset",
           "ImageFolderReID", "MSMT17", "Market1501", "ReIDDataset", "UnreadableImageWarning", "check_images",
           "make_synthetic", "read_image"]
