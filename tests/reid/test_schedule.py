import math

import pytest

from sharpattn.reid.engine import train
from sharpattn.reid.engine.schedule import LRSchedule, temperature_schedule


def test_lr_schedule_of_the_recipe():
    s = LRSchedule(2e-4)  # 150 epochs, decay from epoch 100 to 1e-3 of lr
    for e in (0, 1, 50, 99, 100):
        assert s(e) == 2e-4
    assert s(125) == pytest.approx(2e-4 * 0.001 ** 0.5)
    assert s(149) == pytest.approx(2e-4 * 0.001 ** (49 / 50))
    assert s(150) == pytest.approx(2e-7)
    values = [s(e) for e in range(100, 151)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_lr_schedule_arguments():
    assert LRSchedule(1.0, epochs=10, decay_start=10)(9) == 1.0
    with pytest.raises(ValueError, match="decay_start"):
        LRSchedule(1.0, epochs=10, decay_start=11)
    with pytest.raises(ValueError, match="lr"):
        LRSchedule(0.0)


def test_tau_schedule_eq9():
    s = temperature_schedule(1.0, 0.008, 0.5)
    assert s(0) == 1.0
    assert s(10) == pytest.approx(math.exp(-0.08))
    assert s(86) == pytest.approx(math.exp(-0.688))  # 0.5026, still above the floor
    assert s(87) == 0.5 and s(149) == 0.5


def test_engine_sets_lr_and_tau_per_epoch(tiny_config, tmp_path):
    cfg = tiny_config("optim.epochs=4", "optim.decay_start=2", "optim.lr=1e-3", "tau.alpha=0.3")
    summary = train(cfg, tmp_path / "run")
    import torch
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    hist = ckpt["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    lr, tau = LRSchedule(1e-3, 4, 2), temperature_schedule(1.0, 0.3, 0.5)
    assert [h["lr"] for h in hist] == pytest.approx([lr(e) for e in range(4)])
    assert [h["tau"] for h in hist] == pytest.approx([tau(e) for e in range(4)])
    assert hist[3]["tau"] == 0.5  # exp(-0.9) = 0.41 is below the floor
    # the masks of the model really carry the last epoch's tau
    import sharpattn
    from sharpattn.reid.modeling import build_model
    model = build_model(summary["model_spec"])
    masks = [m for m in model.modules() if isinstance(m, sharpattn.SharpMask)]
    assert masks, "the tiny SAN model should have a SharpMask"
