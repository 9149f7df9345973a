"""Fixtures of the training-engine tests: a tiny synthetic dataset and tiny-model configs."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _tiny  # noqa: E402,F401  (registers the "tiny" and "tiny_nobn" model archs)

from sharpattn.reid.config import load_config  # noqa: E402


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """Where the engine writes (once) the synthetic dataset of ``tiny_config``."""
    return tmp_path_factory.mktemp("reid_data")


# A few seconds per epoch on a CPU: 8 training identities (the easy synthetic variant: 8 outfits,
# larger badges) at 32 x 16, a 2-layer net around one sharp attention block.
TINY = ["model.arch=tiny", "model.blocks=[1]", "model.context=[]", "model.embedding_dim=16",
        "data.height=32", "data.width=16", "data.num_identities=4", "data.num_instances=4",
        "data.workers=0", "data.synthetic.num_ids=16", "data.synthetic.height=64",
        "data.synthetic.width=32", "data.synthetic.num_distractors=4", "data.synthetic.num_junk=2",
        "data.synthetic.outfits=8", "data.synthetic.cue_scale=1.5",
        "optim.epochs=3", "optim.decay_start=1", "tau.alpha=0.2", "train.eval_every=0",
        "train.progress=false", "train.pictures=false", "eval.ten_crop=false", "eval.batch_size=32", "eval.ranked_queries=2",
        "eval.mask_images=2", "name=tiny"]


# TINY's optim.epochs=3 reaches every stage of a staged config (a command-line key wins over a
# stage's): configs/aaanet_tiny.yaml's own stage epochs, set again stage by stage.
AAA_STAGE_EPOCHS = ["stages.classifier.optim.epochs=1", "stages.assignment.optim.epochs=2",
                    "stages.adversarial.optim.epochs=1"]


@pytest.fixture(scope="session")
def tiny_config(data_root):
    def make(*overrides, config=None):
        """``config``: a YAML file whose sections the tiny settings then override."""
        return load_config(config, TINY + [f"data.root={data_root}"] + list(overrides))
    return make
