import numpy as np
import pytest
import torch
from PIL import Image

from sharpattn.reid.evaluation.features import extract_features
from sharpattn.reid.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, RandomAreaAspectCrop,
                                       build_test_transform, build_train_transform)


def test_crop_area_and_aspect_within_paper_ranges():
    torch.manual_seed(0)
    crop = RandomAreaAspectCrop()
    width, height = 300, 400  # roomy enough for most draws to fit
    for _ in range(300):
        top, left, h, w = crop.get_params(width, height)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        # rounding to whole pixels moves area and ratio by at most a pixel
        assert 0.64 * width * height * 0.98 <= h * w <= width * height
        assert 2.0 - 0.05 <= h / w <= 3.0 + 0.05


def test_crop_fallback_on_a_wide_image():
    # A 200 x 100 (w x h) image cannot hold any crop with h/w >= 2 of 64% of its area: the
    # fallback is the largest centred crop with h/w = 2 (clamped from the image's 0.5).
    crop = RandomAreaAspectCrop(attempts=3)
    assert crop.get_params(200, 100) == (0, 75, 100, 50)


def test_train_transform_output():
    torch.manual_seed(0)
    img = Image.fromarray(np.full((128, 64, 3), 255, np.uint8))
    t = build_train_transform()
    x = t(img)
    assert x.shape == (3, 256, 128)
    # a white image normalises to (1 - mean) / std per channel
    expect = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x.mean((1, 2)), expect)


def test_train_transform_flips_sometimes():
    img = np.zeros((128, 64, 3), np.uint8)
    img[:, :32] = 255  # left half white
    img = Image.fromarray(img)
    # the whole image, only flips
    t = build_train_transform(height=32, width=16, area=(1.0, 1.0), aspect=(2.0, 2.0))
    torch.manual_seed(0)
    outs = [t(img)[0] for _ in range(40)]
    left_white = [float(x[:, :8].mean() > x[:, 8:].mean()) for x in outs]
    assert 0 < sum(left_white) < 40


def test_ten_crop_views():
    arr = np.arange(146 * 293 * 3, dtype=np.uint32).reshape(293, 146, 3) % 251
    img = Image.fromarray(arr.astype(np.uint8))  # already at 8/7 x (256 x 128): no resize
    x = build_test_transform()(img)
    assert x.shape == (10, 3, 256, 128)
    norm = lambda a: (torch.from_numpy(a).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    a = arr.astype(np.uint8)
    torch.testing.assert_close(x[0], norm(a[:256, :128]))               # top-left
    torch.testing.assert_close(x[3], norm(a[-256:, -128:]))             # bottom-right
    torch.testing.assert_close(x[4], norm(a[18:274, 9:137]))            # centre
    # views 5..9 are the same five crops of the mirrored image: the mirrored image's top-left
    # is the original's top-right, flipped
    torch.testing.assert_close(x[5], norm(a[:256, -128:][:, ::-1].copy()))
    torch.testing.assert_close(x[9], norm(a[18:274, 9:137][:, ::-1].copy()))
    assert build_test_transform(ten_crop=False)(img).shape == (3, 256, 128)


def test_extract_features_averages_crops():
    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([[1.0, 2.0, 3.0]]).T)

        def forward(self, x):  # per-channel mean projected to 1-D
            return x.mean((2, 3)) @ self.w

    images = torch.randn(4, 10, 3, 8, 4)
    loader = [(images[:2], torch.tensor([1, 2]), torch.tensor([0, 1])),
              (images[2:], torch.tensor([3, 4]), torch.tensor([1, 0]))]
    model = Linear()
    f, pids, cams = extract_features(model, loader, progress=False)
    expect = (images.mean((3, 4)) @ model.w.detach()).mean(1)
    torch.testing.assert_close(f, expect)
    assert pids.tolist() == [1, 2, 3, 4] and cams.tolist() == [0, 1, 1, 0]
    assert model.training  # mode restored
