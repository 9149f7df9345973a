"""A torch Dataset over ``(path, pid, camid)`` items."""

from __future__ import annotations

from PIL import Image
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "read_image"]


def read_image(path):
    """Open an image as RGB; an unreadable or missing file raises an error that names it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"image not found: {path}") from e
    except OSError as e:  # PIL.UnidentifiedImageError and truncated files are OSErrors
        raise OSError(f"cannot read image {path}: {e}") from e


class ImageDataset(Dataset):
    """``dataset[i]`` is ``(image, pid, camid, path)``, the image passed through ``transform``."""

    def __init__(self, items, transform=None):
        self.items = list(items)
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, pid, camid = self.items[index]
        img = read_image(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, path
