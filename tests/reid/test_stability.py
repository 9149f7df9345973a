"""Bounded updates and training diagnostics: the clip, the logged statistics, the mask probes."""

import csv

import pytest
import torch
from torch import nn

import sharpattn
from sharpattn.reid.engine.diagnostics import EpochDiagnostics, gradient_statistics, mask_statistics
from sharpattn.reid.engine import train
from sharpattn.reid.engine.optim import backward_and_step, clip_gradients


def _toy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(7, 5)
    return model, x


def _true_grads(model, x):
    model.zero_grad()
    model(x).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return grads, torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()


@pytest.mark.parametrize("scaled", [False, True], ids=["no-scaler", "fp16-scaler"])
@pytest.mark.parametrize("max_norm", [None, 0.1, 1e6])
def test_backward_and_step_clips_the_unscaled_gradient(scaled, max_norm):
    model, x = _toy()
    grads, norm = _true_grads(model, x)
    before = [p.detach().clone() for p in model.parameters()]
    # SGD with lr 1: the update is exactly minus the (clipped) gradient.
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled, init_scale=2.0 ** 12)
    got_norm, clipped = backward_and_step(model(x).square().sum(), opt, scaler, list(model.parameters()),
                                          max_norm)
    # the reported norm is the true one, not the loss-scaled one (2^12 larger)
    assert got_norm == pytest.approx(norm, rel=1e-5)
    assert clipped == (max_norm is not None and norm > max_norm)
    factor = max_norm / norm if clipped else 1.0
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(b - p.detach(), factor * g, rtol=1e-5, atol=1e-7)


def test_clip_skips_a_non_finite_norm_and_params_without_grad():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    a.grad = torch.tensor([1.0, float("inf"), 0.0])
    norm, clipped = clip_gradients([a, b], 1.0)
    assert norm == float("inf") and not clipped
    assert a.grad[1] == float("inf")  # left for the grad scaler to skip the step
    assert clip_gradients([b], 1.0) == (0.0, False)


def test_mask_and_gradient_statistics_by_hand():
    m = torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0, 0.2]).view(1, 1, 2, 3)
    st = mask_statistics({"b": m})["b"]
    assert st["mask_mean"] == pytest.approx(2.7 / 6)
    assert st["mask_below_0.1"] == pytest.approx(2 / 6) and st["mask_above_0.9"] == pytest.approx(2 / 6)
    g = -torch.arange(101, dtype=torch.float32)  # |g| = 0..100: median 50, p99 99, max 100
    row = gradient_statistics({"b": {"mask_input": g, "output": 2 * g}}, scale=2.0)["b"]
    assert (row["grad_x_p50"], row["grad_x_p99"], row["grad_x_max"]) == pytest.approx((25, 49.5, 50))
    assert (row["grad_out_p50"], row["grad_out_max"]) == pytest.approx((50, 100))


def test_epoch_diagnostics_means_maxima_and_clip_fraction():
    d = EpochDiagnostics()
    d.add_step(2.0, True)
    d.add_step(float("nan"), False)  # an overflowed fp16 step: counted, not averaged
    d.add_step(4.0, False)
    d.add_probe({"b": {"mask_mean": 0.2}}, {"b": {"grad_x_max": 3.0}})
    d.add_probe({"b": {"mask_mean": 0.4}}, {"b": {"grad_x_max": 1.0}})
    s = EpochDiagnostics(d.state).summary()  # the state round-trips as plain data
    assert s["grad_norm"] == 3.0 and s["grad_norm_max"] == 4.0 and s["clip_frac"] == pytest.approx(1 / 3)
    assert s["b.mask_mean"] == pytest.approx(0.3) and s["b.grad_x_max"] == 3.0


@pytest.mark.parametrize("context", [False, True], ids=["x-is-t", "context-unit"])
def test_recording_gradients_separates_the_mask_path(context):
    torch.manual_seed(0)
    block = sharpattn.SharpAttentionBlock(nn.Conv2d(3, 4, 3, padding=1), 4, context_unit=context, tv=False)
    inp = torch.randn(2, 3, 5, 6)
    w = torch.randn(2, 4, 5, 6)
    torch.manual_seed(7)
    plain = block(inp)
    (plain * w).sum().backward()
    plain_grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    torch.manual_seed(7)
    with sharpattn.recording_gradients(block) as grads:
        probed = block(inp)
        (probed * w).sum().backward()
    assert torch.equal(probed, plain)  # the probe changes nothing in the forward
    for p, g in zip(block.parameters(), plain_grads):  # nor the total gradient (summation order)
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    rec = grads[""]
    assert torch.equal(rec["output"], w)
    # dL/dX by hand: F = (1 + M(X)) T with T fixed, so dL/dX = d(sum(w T M(X)))/dX
    torch.manual_seed(7)
    t = block.stage(inp).detach()
    x = (block.context(t) if context else t).detach().requires_grad_(True)
    seed, offset = sharpattn.functional.draw_rng().tolist()
    expected = torch.autograd.grad((w * t * sharpattn.reference.sharp_mask(x, tau=1.0, seed=seed,
                                                                           offset=offset)).sum(), x)[0]
    torch.testing.assert_close(rec["mask_input"], expected, rtol=1e-4, atol=1e-5)


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_tiny_run_logs_gradient_norms_clipping_and_mask_statistics(tiny_config, tmp_path):
    cfg = tiny_config("optim.epochs=2", "train.diagnostics_every=1", "optim.grad_clip=1e-4")
    train(cfg, tmp_path / "san")
    rows = _rows(tmp_path / "san" / "log.csv")
    for r in rows:
        assert float(r["grad_norm"]) > 1e-4 and float(r["grad_norm_max"]) >= float(r["grad_norm"])
        assert float(r["clip_frac"]) == 1.0  # every step above a clip of 1e-4
        below, above = float(r["stage.mask_below_0.1"]), float(r["stage.mask_above_0.9"])
        assert 0 <= below <= 1 and 0 <= above <= 1 and below + above <= 1
        assert 0 < float(r["stage.mask_mean"]) < 1
        assert 0 <= float(r["stage.grad_x_p50"]) <= float(r["stage.grad_x_p99"]) <= float(r["stage.grad_x_max"])
        assert float(r["stage.grad_out_max"]) > 0 and r["tau"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "san" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/grad_norm", "train/grad_clipped", "mask/stage/mask_above_0.9", "grad/stage/grad_x_p99",
            "train/tau"} <= tags
    steps = len(events.Scalars("train/loss"))  # one value per step
    assert steps > 2 and len(events.Scalars("train/grad_norm")) == steps
    assert len(events.Scalars("grad/stage/grad_x_p99")) == steps  # diagnostics_every=1


def test_baseline_log_has_no_tau_and_no_mask_columns(tiny_config, tmp_path):
    train(tiny_config("model.blocks=[]", "optim.epochs=1", "train.diagnostics_every=1"), tmp_path / "b")
    header = open(tmp_path / "b" / "log.csv").readline().strip().split(",")
    assert "tau" not in header and "grad_norm" in header and not any("mask" in h for h in header)
    assert "tau" not in (tmp_path / "b" / "report.md").read_text()


def test_clipping_under_fp16_amp_reports_unscaled_norms(tiny_config, tmp_path):
    # The same first step with and without fp16 autocast + grad scaler: the logged pre-clip norm is
    # the true gradient's (fp16 rounding aside), not 2^16 times larger.
    common = ("optim.epochs=1", "train.diagnostics_every=0", "optim.grad_clip=1e-3", "data.num_identities=2")
    train(tiny_config(*common), tmp_path / "fp32")
    train(tiny_config(*common, "train.amp=fp16"), tmp_path / "fp16")
    n32 = float(_rows(tmp_path / "fp32" / "log.csv")[0]["grad_norm_max"])
    r16 = _rows(tmp_path / "fp16" / "log.csv")[0]
    assert float(r16["grad_norm_max"]) == pytest.approx(n32, rel=0.2)
    assert float(r16["clip_frac"]) > 0
