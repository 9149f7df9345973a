"""The run pictures: attention masks (eval beside sampled) and training curves, on a tiny model."""

import torch
from PIL import Image

import sharpattn
from sharpattn.reid.report.plots import _masks_of, _varied_channels, plot_attention_masks, plot_training_curves

from _tiny import TinyEmbedNet


def _model(**kw):
    torch.manual_seed(0)
    return TinyEmbedNet(blocks=(1,), context=(1,), **kw)


def test_mask_picture_leaves_model_and_random_state_as_they_were(tmp_path):
    model = _model().train()
    sharpattn.set_temperature(model, 0.7)
    images = torch.randn(2, 3, 32, 16)
    bn_before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    out = plot_attention_masks(model, images, tmp_path / "m" / "masks.png", titles=["id 1 cam 1", "id 2 cam 3"])
    assert out.is_file() and Image.open(out).size[0] > 400
    assert torch.equal(torch.get_rng_state(), rng_before)  # no noise drawn from the run's stream
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():  # batch-norm statistics untouched
        assert torch.equal(v, bn_before[k]), k


def test_sampled_masks_differ_from_eval_by_the_sampling_only():
    model = _model()
    images = torch.randn(3, 3, 32, 16)
    ev, ev2 = _masks_of(model, images, sampled=False), _masks_of(model, images, sampled=False)
    sa = _masks_of(model, images, sampled=True)
    assert list(ev) == ["stage"] and torch.equal(ev["stage"], ev2["stage"])  # eval is deterministic
    assert not torch.equal(sa["stage"], ev["stage"])
    # at a very low temperature a sample is 0/1; its mean over many positions tracks p
    sharpattn.set_temperature(model, 1e-3)
    sa = _masks_of(model, images, sampled=True)["stage"]
    assert ((sa < 1e-3) | (sa > 1 - 1e-3)).float().mean() > 0.95
    assert abs(sa.mean() - ev["stage"].mean()) < 0.05


def test_varied_channels_are_those_with_the_largest_spatial_variance():
    m = torch.zeros(4, 3, 3)
    m[1] = (torch.arange(9.0).view(3, 3) % 2)  # a 0/1 checkerboard: variance 20/81
    m[3, 0, 0] = 1.0                          # one 1 among nine 0s: variance 8/81
    m[2] = 0.7                                # constant
    assert _varied_channels(m, 2) == [1, 3]


def test_baseline_has_no_mask_picture_and_curves_without_tau(tmp_path):
    model = TinyEmbedNet(blocks=())
    assert plot_attention_masks(model, torch.randn(1, 3, 32, 16), tmp_path / "none.png") is None
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "triplet": 1.0, "precision": 0.1 * e, "lr": 1e-3}
               for e in range(3)]
    history[-1].update(rank1=0.5, mAP=0.4)
    assert plot_training_curves(history, tmp_path / "curves.png", title="baseline").is_file()
