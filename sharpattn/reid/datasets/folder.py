"""A generic layout for your own data."""

from __future__ import annotations

import re

from .market1501 import Market1501

__all__ = ["ImageFolderReID"]


class ImageFolderReID(Market1501):
    """Custom data in three folders ``root/{train,query,gallery}``.

    Each image name starts with ``<pid>_c<cam>`` (integers, camera 1-based), anything may follow:
    ``12_c3_anything.png``. Identity ``-1`` is junk and dropped, identity ``0`` may be used for
    distractors in the gallery, as in Market-1501.
    """

    folder_names = ("",)
    splits = ("train", "query", "gallery")
    pattern = re.compile(r"^(?P<pid>-?\d+)_c(?P<cam>\d+)(?:[_.\-].*)?\.(?i:jpg|jpeg|png|bmp)$")
    expected_name = "<pid>_c<cam>[_<anything>].<jpg|png|bmp>, e.g. 12_c3_0001.jpg"
    cam_range = (1, 10**6)
    source = "Put your images under <root>/train, <root>/query and <root>/gallery."
