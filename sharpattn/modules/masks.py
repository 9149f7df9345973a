"""Attention gates: the sharp mask generator of SAN and the alternatives it is compared with.

Every gate has the same call, `gate(t, x=None, *, residual, return_mask, return_tv)`, returning
`(F, M or None, per-sample TV of M * T or None)`, where x (t itself when None) is the mask input
and F = (1 + M) * T with residual (cross-feature interaction, eq. 2) or M * T without (eq. 1).

  SharpMask       SAN's sampled mask (eq. 3-5), one fused kernel (sharpattn.functional)
  SoftMask        M = sigmoid(x): gating-based soft attention, the paper's point of comparison
  ThresholdMask   M = 1[p >= lambda] on the normalised p of eq. 3 (Table III, lambda = 0.3)
  PowerMask       M = p ** k (Table III, k = 2 or 3)

The alternatives are plain eager PyTorch: they exist for the ablations, not for speed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _checks, backends, reference
from .. import functional as F

TRAIN_MODES = ("sample", "hard")
EVAL_MODES = ("mean", "hard", "sample")


class SharpMask(nn.Module):
    """The sharp attention mask generator (SAMG) of SAN as a module.

    Training draws a fresh Philox (seed, offset) from PyTorch's default CPU generator at every
    forward, so `torch.manual_seed` reproduces a run on any device, and samples the mask with
    `train_mode` ("sample": the Gumbel-Softmax relaxation; "hard": exact 0/1 masks with the
    relaxed gradient). Evaluation uses `eval_mode`, "mean" (M = p, deterministic) by default.

    `tau` may be set at any time (e.g. every epoch from a TemperatureSchedule): it is held in a
    CPU tensor updated in place, so a compiled model does not recompile for a new value.

    Gradient bounds (training-stability studies, docs/training.md; all off by default, which is
    the spec's formula on the fused kernels). Any of them switches the module to an eager
    PyTorch path with the same Philox noise:

      range_eps     eps grows with the plane: eps + range_eps * (hi - lo) in eq. 3, so no
                    position's logit derivative exceeds ~1 / (range_eps * (hi - lo))
      logit_floor   p is clamped to [logit_floor, 1 - logit_floor] before the logit
      detach_range  no gradient through the plane's min and max (lo, hi)
    """

    def __init__(self, tau: float = 1.0, *, train_mode: str = "sample", eval_mode: str = "mean",
                 eps: float = 1e-6, backend: str | None = None, range_eps: float | None = None,
                 logit_floor: float | None = None, detach_range: bool = False):
        super().__init__()
        if range_eps is not None:
            _checks.positive_finite(range_eps, "range_eps")
        if logit_floor is not None and not 0.0 < logit_floor < 0.5:
            raise ValueError(f"SharpMask: logit_floor must be in (0, 0.5), got {logit_floor}")
        self.range_eps, self.logit_floor, self.detach_range = range_eps, logit_floor, bool(detach_range)
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"SharpMask: train_mode must be one of {TRAIN_MODES}, "
                             f"got {train_mode!r}")
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"SharpMask: eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
        if backend is not None and backend not in backends.NAMES:
            raise ValueError(f"SharpMask: backend must be None or one of {backends.NAMES}, "
                             f"got {backend!r}")
        self.train_mode = train_mode
        self.eval_mode = eval_mode
        self.eps = _checks.positive_finite(eps, "eps")
        self.backend = backend
        # Deliberately not a buffer: it stays on the CPU when the model moves to a GPU (reading
        # it costs no synchronisation) and it is not part of the state_dict (the schedule owns it).
        self._tau = torch.tensor(_checks.positive_finite(tau, "tau"), dtype=torch.float64)

    @property
    def tau(self) -> float:
        return float(self._tau)

    @tau.setter
    def tau(self, value: float) -> None:
        self._tau.fill_(_checks.positive_finite(value, "tau"))

    @property
    def mode(self) -> str:
        return self.train_mode if self.training else self.eval_mode

    def forward(self, t: torch.Tensor, x: torch.Tensor | None = None, *, residual: bool = True,
                return_mask: bool = False, return_tv: bool = False):
        _checks.feature_map(t, "t")
        if x is not None:
            _checks.same_map(t, x, "x")
        name = backends.resolve(self.backend, t.device)
        # The deterministic "mean" mask uses no noise: draw none, so that evaluating a model leaves
        # the random stream of its training untouched.
        rng = F.draw_rng() if self.mode != "mean" else torch.zeros(2, dtype=torch.int64)
        if self.bounded:
            seed, offset = rng.tolist()
            return bounded_sharp_attention(t, x, tau=self.tau, seed=seed, offset=offset, mode=self.mode,
                                           residual=residual, eps=self.eps, range_eps=self.range_eps,
                                           logit_floor=self.logit_floor, detach_range=self.detach_range,
                                           return_mask=return_mask, return_tv=return_tv)
        if name == "reference":
            # The eager reference takes Python numbers (a graph break under torch.compile).
            seed, offset = rng.tolist()
            result = F.sharp_attention(t, x, tau=self.tau, seed=seed, offset=offset,
                                       mode=self.mode, residual=residual, eps=self.eps,
                                       return_mask=True, return_tv=return_tv, backend=name)
            out, mask, tv = result if return_tv else (*result, None)
        else:
            out, mask, tv = F.sharp_attention_tensor_args(
                t, x, self._tau, rng, mode=self.mode, residual=residual, eps=self.eps,
                return_mask=return_mask, return_tv=return_tv, backend=name)
        return out, (mask if return_mask else None), tv

    @property
    def bounded(self) -> bool:
        return self.range_eps is not None or self.logit_floor is not None or self.detach_range

    def extra_repr(self) -> str:
        bounds = "".join(f", {k}={v!r}" for k, v in (("range_eps", self.range_eps),
                                                     ("logit_floor", self.logit_floor),
                                                     ("detach_range", self.detach_range)) if v)
        return (f"tau={self.tau:g}, train_mode={self.train_mode!r}, "
                f"eval_mode={self.eval_mode!r}{bounds}")


def bounded_sharp_attention(t, x, *, tau, seed, offset, mode, residual, eps, range_eps, logit_floor,
                            detach_range, return_mask, return_tv):
    """Eq. 3-5 with SharpMask's gradient bounds, in eager PyTorch; with every bound off it is
    the reference (the same Philox noise for the same seed and offset)."""
    acc = reference.accumulation_dtype(t.dtype)
    t_acc = t.to(acc)
    x_acc = t_acc if x is None else x.to(acc)
    lo = x_acc.amin(dim=(-2, -1), keepdim=True)
    hi = x_acc.amax(dim=(-2, -1), keepdim=True)
    if detach_range:
        lo, hi = lo.detach(), hi.detach()
    e = eps if range_eps is None else eps + range_eps * (hi - lo)
    if mode == "mean":
        m = (x_acc - lo + e) / (hi - lo + 2 * e)
    else:
        if logit_floor is None:
            z = torch.log(x_acc - lo + e) - torch.log(hi - x_acc + e)
        else:
            p = ((x_acc - lo + e) / (hi - lo + 2 * e)).clamp(logit_floor, 1 - logit_floor)
            z = torch.log(p) - torch.log1p(-p)
        z = z + reference.logistic_noise(x_acc.shape, seed=seed, offset=offset, device=x_acc.device,
                                         dtype=acc)
        soft = torch.sigmoid(z / tau)
        m = soft if mode == "sample" else (z > 0).to(acc) + (soft - soft.detach())
    out = ((1 + m) * t_acc if residual else m * t_acc).to(t.dtype)
    tv = F.tv_loss(m * t_acc, backend="reference") if return_tv else None
    return out, (m.detach().to(t.dtype) if return_mask else None), tv


class _EagerGate(nn.Module):
    """Shared forward of the eager alternatives: subclasses define mask(x) in float32+."""

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, t: torch.Tensor, x: torch.Tensor | None = None, *, residual: bool = True,
                return_mask: bool = False, return_tv: bool = False):
        _checks.feature_map(t, "t")
        if x is not None:
            _checks.same_map(t, x, "x")
        acc = reference.accumulation_dtype(t.dtype)
        m = self.mask((t if x is None else x).to(acc))
        t_acc = t.to(acc)
        out = ((1 + m) * t_acc if residual else m * t_acc).to(t.dtype)
        tv = F.tv_loss(m * t_acc, backend="reference") if return_tv else None
        return out, (m.detach().to(t.dtype) if return_mask else None), tv


def normalised(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """p of eq. 3: per-plane min-max normalisation, strictly inside (0, 1)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo + eps) / (hi - lo + 2 * eps)


class SoftMask(_EagerGate):
    """Gating-based soft attention: M = sigmoid(x), continuous in (0, 1)."""

    def mask(self, x):
        return torch.sigmoid(x)


class ThresholdMask(_EagerGate):
    """Thresholding (SAN Table III): M = 1 where p >= lambda, else 0; no gradient through M."""

    def __init__(self, threshold: float = 0.3, eps: float = 1e-6):
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"ThresholdMask: threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.eps = eps

    def mask(self, x):
        return (normalised(x.detach(), self.eps) >= self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:g}"


class PowerMask(_EagerGate):
    """Power (SAN Table III): M = p ** exponent (2: square, 3: cube)."""

    def __init__(self, exponent: float = 2, eps: float = 1e-6):
        super().__init__()
        if not (math.isfinite(exponent) and exponent > 0):
            raise ValueError(f"PowerMask: exponent must be finite and > 0, got {exponent}")
        self.exponent = exponent
        self.eps = eps

    def mask(self, x):
        return normalised(x, self.eps) ** self.exponent

    def extra_repr(self) -> str:
        return f"exponent={self.exponent:g}"


def make_gate(kind: str, *, tau: float = 1.0, train_mode: str = "sample",
              eval_mode: str = "mean", threshold: float = 0.3, power: float = 2,
              backend: str | None = None, **bounds) -> nn.Module:
    """The gate of a SharpAttentionBlock by name: "sharp", "soft", "threshold" or "power".

    `bounds` (range_eps, logit_floor, detach_range) go to a SharpMask."""
    if kind == "sharp":
        return SharpMask(tau, train_mode=train_mode, eval_mode=eval_mode, backend=backend, **bounds)
    if any(v not in (None, False) for v in bounds.values()):
        raise ValueError(f"sharpattn: {sorted(bounds)} apply to mask='sharp' only, not {kind!r}")
    if kind == "soft":
        return SoftMask()
    if kind == "threshold":
        return ThresholdMask(threshold)
    if kind == "power":
        return PowerMask(power)
    raise ValueError(f"sharpattn: mask must be one of {MASK_KINDS}, got {kind!r}")


MASK_KINDS = ("sharp", "soft", "threshold", "power")
