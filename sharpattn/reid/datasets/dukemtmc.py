"""DukeMTMC-reID (Zheng et al., ICCV 2017; from DukeMTMC, Ristani et al., 2016)."""

from __future__ import annotations

import re

from .market1501 import Market1501

__all__ = ["DukeMTMCreID"]


class DukeMTMCreID(Market1501):
    """DukeMTMC-reID: 702 training identities (16,522 images), 702 test identities with 2,228
    queries and 17,661 gallery images (incl. 408 distractor identities), 8 cameras.

    Same folder layout as Market-1501; names are ``<pid>_c<cam>_f<frame>.jpg``.
    """

    folder_names = ("", "DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID")
    pattern = re.compile(r"^(?P<pid>-?\d+)_c(?P<cam>\d+)_f\d+\.(?i:jpg|jpeg|png)$")
    expected_name = "<pid>_c<cam>_f<frame>.jpg, e.g. 0005_c2_f0046985.jpg"
    cam_range = (1, 8)
    source = ("DukeMTMC-reID was released by Zheng et al. (ICCV 2017) as DukeMTMC-reID.zip; the "
              "DukeMTMC project has since withdrawn the data, so use a copy you are licensed to "
              "use and unzip it under the root.")
