"""Reference re-ID package: datasets, identity sampling, transforms and evaluation.

Independent of the sharpattn kernels; needs only torch, torchvision, numpy and Pillow (plus
scipy/h5py for CUHK03 and tqdm for progress bars).
"""

from . import metrics

__all__ = ["metrics"]
