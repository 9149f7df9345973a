"""Market-1501 (Zheng et al., ICCV 2015)."""

from __future__ import annotations

import re

from .base import ReIDDataset, find_root, parse_image_dir, relabel

__all__ = ["Market1501"]

JUNK = -1
DISTRACTOR = 0


class Market1501(ReIDDataset):
    """Market-1501: 751 training identities (12,936 images), 750 test identities with 3,368
    queries and 15,913 gallery images (incl. 2,793 distractors, identity 0), 6 cameras.

    ``root`` may be the ``Market-1501-v15.09.15`` folder itself or its parent. Images named
    ``-1_...`` are junk (badly detected boxes) and are dropped everywhere; distractors
    (``0000_...``) stay in the gallery and count as wrong matches.
    """

    folder_names = ("", "Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15")
    splits = ("bounding_box_train", "query", "bounding_box_test")
    pattern = re.compile(r"^(?P<pid>-?\d+)_c(?P<cam>\d+)s\d+_\d+_\d+\.(?i:jpg|jpeg|png)$")
    expected_name = "<pid>_c<cam>s<seq>_<frame>_<box>.jpg, e.g. 0002_c1s1_000451_03.jpg"
    cam_range = (1, 6)
    distractor_pid = DISTRACTOR  # drawn apart in ranked lists
    source = ("Market-1501 is distributed by its authors (Zheng et al., 'Scalable Person "
              "Re-identification: A Benchmark', ICCV 2015) as Market-1501-v15.09.15.zip; unzip it "
              "under the root.")

    def __init__(self, root):
        base = find_root(root, self.folder_names, self.splits, type(self).__name__, self.source)
        parsed = []
        for split in self.splits:
            items = parse_image_dir(base / split, self.pattern, self.expected_name, self.cam_range)
            parsed.append([it for it in items if it[1] != JUNK])
        train, query, gallery = parsed
        self.root = base
        self.split_dirs = {"train": base / self.splits[0], "query": base / self.splits[1],
                           "gallery": base / self.splits[2]}
        super().__init__(relabel(train), query, gallery)
