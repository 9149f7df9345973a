"""AAA-Net's eq. 1-4 (sharpattn.reid.losses) against hand computation."""

import math

import pytest
import torch

from sharpattn.reid.losses import aaa_adversarial_loss, attention_assignment_loss

# One sample worked by hand. M_att has a negative entry where M_occ = 0.5, so eq. 2's
# max(M_att, 0) matters there: (0 - 0.5) * (-1) = 0.5, not (-1 - 0.5) * (-1) = 1.5.
M_ATT = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])
M_OCC = torch.tensor([[[1.0, 0.5], [0.5, 1.0]]])
L_ATT = abs((0.5 - 1.0) * 0.5) + abs((0 - 0.5) * -1.0) + abs((2.0 - 0.5) * 2.0) + 0.0  # 3.75
L_R = math.log(1 + math.exp(-(0.5 + 1.0 + 2.0 + 0.0)))


def test_assignment_loss_by_hand():
    loss = attention_assignment_loss(M_ATT, M_OCC)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(L_ATT + L_R, rel=1e-6)


def test_per_sample_values():
    second = torch.zeros(1, 2, 2)  # L_att = 0, ||M_att||_1 = 0: L_r = log 2
    loss = attention_assignment_loss(torch.cat([M_ATT, second]), torch.cat([M_OCC, second]))
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(L_ATT + L_R, rel=1e-6)
    assert loss[1].item() == pytest.approx(math.log(2), rel=1e-6)


def test_channel_dimension_and_dtypes_accepted():
    loss = attention_assignment_loss(M_ATT.unsqueeze(1).double(), M_OCC.unsqueeze(1).double())
    assert loss.dtype == torch.float64 and loss.item() == pytest.approx(L_ATT + L_R, rel=1e-12)
    half = attention_assignment_loss(M_ATT.bfloat16(), M_OCC.bfloat16())
    assert half.dtype == torch.float32  # summed in float32 at least


def test_regulariser_is_stable_for_large_norms():
    m = torch.full((2, 64, 64), 50.0, requires_grad=True)  # ||M||_1 = 204800
    loss = attention_assignment_loss(m, m.detach())
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(m.grad).all()
    # L_r alone: at M_occ = M = 50 the data term is |(50 - 50) * 50| = 0; exp(-204800) = 0.
    assert loss.abs().max().item() == 0.0


def test_adversarial_loss_by_hand_and_gate():
    m_att, m_occ = M_ATT.repeat(3, 1, 1), M_OCC.repeat(3, 1, 1)
    # Differences p_bf - p_af of 0.375, exactly 0.25 (the boundary) and 0.125; omega = 0.25.
    # All are exact in binary, so the boundary case really is equal.
    p_bf = torch.tensor([0.875, 0.5, 0.25])
    p_af = torch.tensor([0.5, 0.25, 0.125])
    loss = aaa_adversarial_loss(m_att, m_occ, p_bf, p_af, lambda1=0.3, lambda2=1.7, omega=0.25)
    assert loss.shape == (3,)
    assert loss[0].item() == pytest.approx(0.3 * L_R + 1.7 * L_ATT, rel=1e-6)
    assert loss[1].item() == 0.0  # p_bf - p_af == omega: no update (strict >)
    assert loss[2].item() == 0.0


def test_adversarial_defaults_are_the_papers():
    p_bf, p_af = torch.tensor([0.75]), torch.tensor([0.5])  # 0.25 > 0.04
    loss = aaa_adversarial_loss(M_ATT, M_OCC, p_bf, p_af)
    assert loss.item() == pytest.approx(0.3 * L_R + 1.7 * L_ATT, rel=1e-6)
    # 0.5 - 0.46875 = 0.03125 < 0.04: gated off
    assert aaa_adversarial_loss(M_ATT, M_OCC, torch.tensor([0.5]),
                                torch.tensor([0.46875])).item() == 0.0


def test_adversarial_gradient_flows_only_where_the_gate_is_open():
    m = torch.rand(2, 3, 3, requires_grad=True)
    p_bf = torch.tensor([0.9, 0.9], requires_grad=True)
    p_af = torch.tensor([0.1, 0.89], requires_grad=True)
    aaa_adversarial_loss(m, torch.rand(2, 3, 3), p_bf, p_af).sum().backward()
    assert m.grad[0].abs().sum() > 0
    assert m.grad[1].abs().sum() == 0
    assert p_bf.grad is None and p_af.grad is None  # the probabilities only gate


@pytest.mark.parametrize("bad", [
    lambda: attention_assignment_loss(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4)),
    lambda: attention_assignment_loss(torch.zeros(4), torch.zeros(4)),
    lambda: attention_assignment_loss(torch.zeros(0, 3, 3), torch.zeros(0, 3, 3)),
    lambda: aaa_adversarial_loss(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3), torch.zeros(3),
                                 torch.zeros(2)),
    lambda: aaa_adversarial_loss(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3), torch.zeros(2),
                                 torch.zeros(2, 1)),
])
def test_bad_shapes_raise(bad):
    with pytest.raises(ValueError, match="shape|samples"):
        bad()
