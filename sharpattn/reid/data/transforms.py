"""Image transforms of the SAN paper (section IV-B)."""

from __future__ import annotations

import math

import torch
from torchvision import transforms as T

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RandomAreaAspectCrop", "build_train_transform",
           "build_test_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomAreaAspectCrop:
    """Crop a random part of a PIL image covering a fraction ``area`` of it, with
    height/width ratio ``aspect``, both drawn uniformly (SAN: [0.64, 1.0] and [2, 3]).

    torchvision's RandomResizedCrop draws the ratio log-uniformly and as width/height; this
    follows the paper's wording instead. When a draw does not fit in the image (a large area
    at an extreme ratio), it draws again, up to ``attempts`` times, then takes the largest
    centred crop whose ratio is the image's own ratio clamped to ``aspect``.
    Randomness comes from torch's generator, so DataLoader workers are seeded as usual.
    """

    def __init__(self, area=(0.64, 1.0), aspect=(2.0, 3.0), attempts=10):
        if not (0 < area[0] <= area[1] <= 1):
            raise ValueError(f"area must satisfy 0 < lo <= hi <= 1, got {area}")
        if not (0 < aspect[0] <= aspect[1]):
            raise ValueError(f"aspect must satisfy 0 < lo <= hi, got {aspect}")
        self.area, self.aspect, self.attempts = area, aspect, attempts

    @staticmethod
    def _uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(()).item()

    def get_params(self, width, height):
        """``(top, left, h, w)`` of the crop for an image of this size."""
        for _ in range(self.attempts):
            a = self._uniform(*self.area) * width * height
            r = self._uniform(*self.aspect)
            h, w = round(math.sqrt(a * r)), round(math.sqrt(a / r))
            if 1 <= h <= height and 1 <= w <= width:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                return top, left, h, w
        r = min(max(height / width, self.aspect[0]), self.aspect[1])
        if height / width >= r:
            w, h = width, min(height, max(1, round(width * r)))
        else:
            h, w = height, min(width, max(1, round(height / r)))
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img):
        top, left, h, w = self.get_params(*img.size)
        return img.crop((left, top, left + w, top + h))

    def __repr__(self):
        return f"{type(self).__name__}(area={self.area}, aspect={self.aspect})"


def build_train_transform(height=256, width=128, area=(0.64, 1.0), aspect=(2.0, 3.0), flip_p=0.5,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, erasing_p=0.0):
    """Random area/aspect crop, resize to ``height x width``, horizontal flip, tensor, normalise;
    with ``erasing_p`` > 0, random erasing (Zhong et al. 2020) of a rectangle with zeros, the
    baseline that AAA-Net's Table 5 compares against.

    The paper says "per-pixel mean subtraction"; we also divide by the ImageNet std because
    torchvision's ImageNet-pretrained backbones expect it. Pass ``std=(1, 1, 1)`` for mean
    subtraction alone.
    """
    steps = [RandomAreaAspectCrop(area, aspect), T.Resize((height, width)), T.RandomHorizontalFlip(flip_p),
             T.ToTensor(), T.Normalize(mean, std)]
    if erasing_p > 0:
        steps.append(T.RandomErasing(p=erasing_p, value=0))
    return T.Compose(steps)


class _StackCrops:
    """Tensor-ify and normalise each crop of a TenCrop, stacked to ``(n_crops, C, H, W)``."""

    def __init__(self, mean, std):
        self.to_tensor = T.ToTensor()
        self.normalize = T.Normalize(mean, std)

    def __call__(self, crops):
        return torch.stack([self.normalize(self.to_tensor(c)) for c in crops])


def build_test_transform(height=256, width=128, ten_crop=True, scale=8 / 7, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD):
    """Test transform. With ``ten_crop`` (SAN: "standard 10-crop testing"): resize to ``scale``
    times the input size (8/7, the 256 -> 224 ratio of the classic ImageNet 10-crop), then the
    four corner crops, the centre crop and the horizontal flips of all five, as a
    ``(10, C, height, width)`` tensor; :func:`sharpattn.reid.evaluation.features.extract_features` averages
    their embeddings. Without it: resize to ``height x width``, one ``(C, H, W)`` tensor.
    """
    if not ten_crop:
        return T.Compose([T.Resize((height, width)), T.ToTensor(), T.Normalize(mean, std)])
    big = (round(height * scale), round(width * scale))
    return T.Compose([T.Resize(big), T.TenCrop((height, width)), _StackCrops(mean, std)])
