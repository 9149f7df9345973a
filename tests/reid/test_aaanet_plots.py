"""The Fig. 4 picture of AAA-Net writes a PNG and leaves the model as it was."""

import pytest
import torch
from PIL import Image

pytest.importorskip("matplotlib")
pytest.importorskip("torchvision")


def test_fig4_picture(tmp_path):
    from sharpattn.models import AAANetResNet50
    from sharpattn.reid.report.aaanet_plots import plot_aaanet_occlusions

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small model; two threads only wait on each other on a busy machine
    try:
        torch.manual_seed(0)
        model = AAANetResNet50(5, occlusion_after=3, attention_channels=8).train()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        out = plot_aaanet_occlusions(model, torch.randn(3, 3, 128, 64), torch.tensor([0, 2, 4]),
                                     tmp_path / "pics" / "aaanet_fig4.png")
    finally:
        torch.set_num_threads(before)
    assert out.is_file() and out.stat().st_size > 5000
    width, height = Image.open(out).size
    assert width > 300 and height > 300
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
