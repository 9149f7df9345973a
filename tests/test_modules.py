"""SharpMask, the mask alternatives, ContextAwareUnit, SharpAttentionBlock and the schedule."""

import math

import pytest
import torch
import torch._dynamo.testing
from torch import nn

import sharpattn
from sharpattn import reference
from sharpattn import functional as F
from sharpattn.modules.losses import reduce_tv
from sharpattn.modules.masks import PowerMask, SoftMask, ThresholdMask

from helpers import feature_map, with_layout

FIXED_RNG = (123456789, 4242)


@pytest.fixture
def fixed_rng(monkeypatch):
    """Every SharpMask forward draws FIXED_RNG instead of a fresh (seed, offset)."""
    monkeypatch.setattr(F, "draw_rng", lambda: torch.tensor(FIXED_RNG))
    return FIXED_RNG


def small_stage(channels=8):
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels),
                         nn.ReLU())


# --- SharpMask ------------------------------------------------------------------------------

@pytest.mark.parametrize("train_mode", ["sample", "hard"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_sharp_mask_matches_functional(backend_device, fixed_rng, train_mode, layout):
    """The module's tensor-argument op is the functional op with the same tau, seed, offset."""
    backend, device = backend_device
    seed, offset = fixed_rng
    t = with_layout(feature_map((2, 3, 7, 5), device=device, seed=1), layout).requires_grad_()
    x = with_layout(feature_map((2, 3, 7, 5), device=device, seed=2, relu=False),
                    layout).requires_grad_()
    gate = sharpattn.SharpMask(0.7, train_mode=train_mode, backend=backend).train()
    out, mask, tv = gate(t, x, return_mask=True, return_tv=True)
    (out * out).sum().backward(retain_graph=True)
    tv.sum().backward()
    grads = t.grad.clone(), x.grad.clone()
    t.grad = x.grad = None

    want_out, want_mask, want_tv = F.sharp_attention(
        t, x, tau=0.7, seed=seed, offset=offset, mode=train_mode, return_mask=True,
        return_tv=True, backend=backend)
    (want_out * want_out).sum().backward(retain_graph=True)
    want_tv.sum().backward()
    # The same kernels on the same numbers: bit for bit.
    for got, want in [(out, want_out), (mask, want_mask), (tv, want_tv), (grads[0], t.grad),
                      (grads[1], x.grad)]:
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_sharp_mask_eval_is_deterministic_mean(backend_device):
    backend, device = backend_device
    t = feature_map((3, 4, 6, 5), device=device)
    gate = sharpattn.SharpMask(0.5, backend=backend).eval()
    first, mask, _ = gate(t, return_mask=True)
    second, _, _ = gate(t)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    want = F.sharp_attention(t, tau=0.5, seed=0, mode="mean", backend="reference")
    torch.testing.assert_close(first, want, rtol=1e-5, atol=1e-5)
    assert ((mask > 0) & (mask < 1)).all()  # p of eq. 3, never exactly 0 or 1


def test_sharp_mask_training_draws_fresh_masks_and_manual_seed_reproduces():
    t = feature_map((2, 3, 8, 8))
    gate = sharpattn.SharpMask().train()
    torch.manual_seed(7)
    a, _, _ = gate(t)
    b, _, _ = gate(t)
    torch.manual_seed(7)
    c, _, _ = gate(t)
    assert not torch.equal(a, b), "two training steps drew the same mask"
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_sharp_mask_tau_lives_on_cpu_outside_the_state_dict():
    gate = sharpattn.SharpMask(0.9)
    assert gate.tau == pytest.approx(0.9)
    gate.tau = 0.6
    assert gate.tau == pytest.approx(0.6)
    assert gate.state_dict() == {}
    gate.to(torch.float16)
    assert gate._tau.device.type == "cpu" and gate._tau.dtype == torch.float64
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau"):
            gate.tau = bad
    with pytest.raises(ValueError, match="train_mode"):
        sharpattn.SharpMask(train_mode="mean")
    with pytest.raises(ValueError, match="eval_mode"):
        sharpattn.SharpMask(eval_mode="soft")
    with pytest.raises(ValueError, match="backend"):
        sharpattn.SharpMask(backend="opencl")


def test_sharp_mask_empty_batch():
    t = feature_map((0, 3, 5, 4)).requires_grad_()
    out, _, tv = sharpattn.SharpMask().train()(t, return_tv=True)
    assert out.shape == t.shape and tv.shape == (0,)
    out.sum().backward()
    assert t.grad.shape == t.shape


def test_tensor_args_op_opcheck():
    t = feature_map((2, 3, 5, 4), dtype=torch.float64).requires_grad_()
    x = feature_map((2, 3, 5, 4), dtype=torch.float64, seed=3).requires_grad_()
    tau = torch.tensor(0.8, dtype=torch.float64)
    rng = torch.tensor([11, 22])
    for args in [(t, x, tau, rng, "sample", True, 1e-6, True, True, "cpu"),
                 (t, None, tau, rng, "hard", False, 1e-6, False, False, "cpu")]:
        torch.library.opcheck(torch.ops.sharpattn.sharp_attention_tensor_args_forward.default,
                              args)


# --- the alternatives of the paper's ablations ----------------------------------------------

PLANE = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).reshape(1, 1, 2, 2)


@pytest.mark.parametrize("residual", [True, False])
def test_alternative_masks_by_hand(residual):
    t = torch.tensor([[1.0, -2.0], [3.0, 0.5]]).reshape(1, 1, 2, 2)
    eps = 1e-6
    p = (PLANE + eps) / (4 + 2 * eps)  # min 0, max 4
    cases = [(SoftMask(), torch.sigmoid(PLANE)),
             (ThresholdMask(0.3), torch.tensor([[0.0, 0.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)),
             (PowerMask(2), p ** 2),
             (PowerMask(3), p ** 3)]
    for gate, m in cases:
        out, mask, tv = gate(t, PLANE, residual=residual, return_mask=True, return_tv=True)
        torch.testing.assert_close(mask, m)
        torch.testing.assert_close(out, (1 + m) * t if residual else m * t)
        torch.testing.assert_close(tv, reference.tv_loss(m * t))


def test_threshold_mask_passes_gradient_only_through_t():
    t = feature_map((1, 2, 4, 4)).requires_grad_()
    x = feature_map((1, 2, 4, 4), seed=5).requires_grad_()
    out, _, _ = ThresholdMask()(t, x)
    out.sum().backward()
    assert x.grad is None or not x.grad.any()
    assert t.grad.abs().sum() > 0


def test_power_mask_gradient_matches_autograd_of_formula():
    x = feature_map((2, 2, 3, 5), dtype=torch.float64, relu=False).requires_grad_()
    t = feature_map((2, 2, 3, 5), dtype=torch.float64, seed=9).requires_grad_()
    torch.autograd.gradcheck(lambda a, b: PowerMask(3)(a, b)[0], (t, x))


# --- ContextAwareUnit -----------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(64, 32), (7, 5), (1, 1), (2, 3), (9, 8)])
def test_context_unit_keeps_the_input_size(hw):
    unit = sharpattn.ContextAwareUnit(8)
    t = torch.randn(2, 8, *hw)
    assert unit(t).shape == t.shape
    assert unit(t.to(memory_format=torch.channels_last)).shape == t.shape


def test_context_unit_parameters_match_table_ii():
    # Table II lists 0.51 / 2.03 / 8.13 M: the exact counts truncated to two decimals.
    counts = {c: sum(p.numel() for p in sharpattn.ContextAwareUnit(c).parameters())
              for c in (256, 512, 1024)}
    assert counts == {256: 510_464, 512: 2_036_736, 1024: 8_136_704}
    assert [math.floor(counts[c] / 1e4) / 100 for c in (256, 512, 1024)] == [0.51, 2.03, 8.13]
    # ... and the architecture: a stride-2 bottleneck to 2C and a 1x1 stride-2 deconvolution.
    unit = sharpattn.ContextAwareUnit(256)
    assert unit.upsample.kernel_size == (1, 1) and unit.upsample.stride == (2, 2)
    assert unit.upsample.in_channels == 512 and unit.upsample.out_channels == 256


def test_context_unit_rejects_bad_channels():
    with pytest.raises(ValueError, match="even"):
        sharpattn.ContextAwareUnit(7)
    with pytest.raises(ValueError, match="expected"):
        sharpattn.ContextAwareUnit(8)(torch.randn(1, 4, 5, 5))


# --- SharpAttentionBlock --------------------------------------------------------------------

def test_block_wraps_torchvision_stages_at_256x128_and_odd_sizes():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet50()
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    blocks = [sharpattn.SharpAttentionBlock(getattr(net, f"layer{i}"), context_unit=i < 4)
              for i in range(1, 5)]
    assert [b.channels for b in blocks] == [256, 512, 1024, 2048]
    for size, maps in [((256, 128), [(64, 32), (32, 16), (16, 8), (8, 4)]),
                       ((97, 45), [(25, 12), (13, 6), (7, 3), (4, 2)])]:
        y = stem(torch.randn(1, 3, *size))
        for block, hw, c in zip(blocks, maps, [256, 512, 1024, 2048]):
            y = block.train()(y)
            assert y.shape == (1, c, *hw)


def test_block_needs_channels_for_a_context_unit():
    with pytest.raises(ValueError, match="channels"):
        sharpattn.SharpAttentionBlock(nn.Identity(), context_unit=True)
    with pytest.raises(ValueError, match="mask"):
        sharpattn.SharpAttentionBlock(nn.Identity(), mask="gumbel")
    block = sharpattn.SharpAttentionBlock(nn.Identity(), channels=4, context_unit=True)
    assert block.context.channels == 4
    with pytest.raises(ValueError, match="4-D"):
        sharpattn.SharpAttentionBlock(nn.Flatten())(torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("mask", ["sharp", "soft", "threshold", "power"])
def test_tv_collection_is_the_sum_of_the_blocks_tv_of_m_times_t(mask):
    torch.manual_seed(0)
    model = nn.Sequential(
        sharpattn.SharpAttentionBlock(small_stage(8), context_unit=True, mask=mask),
        sharpattn.SharpAttentionBlock(nn.Sequential(nn.Conv2d(8, 6, 3, stride=2), nn.ReLU()),
                                      mask=mask),
    ).train()
    trunks = {}
    for name, block in sharpattn.modules.attention_blocks(model):
        block.stage.register_forward_hook(
            lambda module, args, out, name=name: trunks.__setitem__(name, out))
    with sharpattn.recording_masks(model) as masks:
        model(torch.randn(3, 3, 11, 9))
    assert set(masks) == {"0", "1"}
    want = sum(reduce_tv(reference.tv_loss(masks[n].double() * trunks[n].double()),
                         trunks[n].shape, "mean") for n in masks)
    got = sharpattn.tv_penalty(model)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # Eval computes no TV, and a model without blocks gives 0.
    model.eval()(torch.randn(3, 3, 11, 9))
    assert sharpattn.tv_penalty(model).item() == 0
    assert sharpattn.tv_penalty(nn.Linear(2, 2)).item() == 0


def test_tv_false_keeps_no_penalty_and_recording_stops_after_the_with():
    block = sharpattn.SharpAttentionBlock(small_stage(), tv=False).train()
    with sharpattn.recording_masks(block) as masks:
        block(torch.randn(2, 3, 6, 6))
    assert block.last_tv is None and masks[""].shape == (2, 8, 6, 6)
    block(torch.randn(2, 3, 6, 6))
    assert block._mask_sink is None


def test_block_residual_and_layouts_and_autocast():
    block = sharpattn.SharpAttentionBlock(small_stage(), context_unit=True,
                                          residual=False).eval()
    x = torch.randn(2, 3, 9, 7)
    with sharpattn.recording_masks(block) as masks:
        out = block(x)
    t = block.stage(x)
    torch.testing.assert_close(out, masks[""] * t)
    out_cl = block.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-4)
    block.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert block.context.upsample.weight.grad is not None


# --- TemperatureSchedule and set_temperature ------------------------------------------------

def test_temperature_schedule_is_eq_9():
    schedule = sharpattn.TemperatureSchedule()
    for epoch in range(151):
        assert schedule(epoch) == max(0.5, 1.0 * math.exp(-0.008 * epoch))
    # tau0 e^(-0.008 t) crosses 0.5 between epochs 86 and 87 (ln 2 / 0.008 = 86.6).
    assert schedule(86) > 0.5 and schedule(87) == 0.5
    custom = sharpattn.TemperatureSchedule(tau0=2.0, alpha=0.1, tau_min=0.1)
    assert custom(10) == pytest.approx(2.0 * math.exp(-1.0))
    with pytest.raises(ValueError):
        sharpattn.TemperatureSchedule(tau_min=0)
    with pytest.raises(ValueError):
        schedule(-1)


def test_set_temperature_reaches_every_sharp_mask():
    model = nn.Sequential(sharpattn.SharpAttentionBlock(small_stage()),
                          sharpattn.SharpAttentionBlock(nn.Identity(), mask="soft"),
                          sharpattn.SharpAttentionBlock(nn.Identity()))
    assert sharpattn.set_temperature(model, 0.625) == 2
    assert model[0].gate.tau == model[2].gate.tau == 0.625


def test_compiled_block_follows_tau_without_recompiling(fixed_rng):
    seed, offset = fixed_rng
    torch.manual_seed(0)
    block = sharpattn.SharpAttentionBlock(small_stage(), context_unit=True).train()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(block, backend=counter, fullgraph=True)
    x = torch.randn(2, 3, 9, 7)
    schedule = sharpattn.TemperatureSchedule()
    frames = None
    for epoch in (0, 30, 60, 90):
        tau = schedule(epoch)
        sharpattn.set_temperature(block, tau)
        out = compiled(x)
        (out.sum() + sharpattn.tv_penalty(block)).backward()
        frames = counter.frame_count if frames is None else frames
        t = block.stage(x)
        want = F.sharp_attention(t, block.context(t), tau=tau, seed=seed, offset=offset)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    assert counter.frame_count == frames, "a new tau recompiled the model"


def test_activation_checkpointing_recomputes_the_same_mask():
    torch.manual_seed(0)
    block = sharpattn.SharpAttentionBlock(small_stage(), context_unit=True, tv=False).train()
    x = torch.randn(2, 3, 9, 7)
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(5)
        if checkpointed:
            out = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        else:
            out = block(x)
        block.zero_grad()
        (out * out).sum().backward()
        grads.append([p.grad.clone() for p in block.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-6)
