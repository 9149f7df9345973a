"""What a training run measures besides its loss: gradient norms, clipping, mask statistics.

Per step (every step): the global gradient norm before clipping and whether the clip fired.
Per sampled step (every ``train.diagnostics_every`` steps): for each sharp attention block,

  mask_mean        mean of the sampled training mask M
  mask_below_0.1   fraction of M < 0.1 and
  mask_above_0.9   fraction of M > 0.9: together, how "sharp" the masks are (SAN Fig. 2b)
  grad_x_p50/p99/max    |dL/dX|, the gradient through the mask (eq. 3-5) into its input X
  grad_out_p50/p99/max  |dL/dF| arriving at the block's output, for scale

Nothing here draws random numbers (a run with diagnostics resumes exactly), and the epoch
accumulators are plain floats, saved with a mid-epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import math

import torch

from sharpattn import recording_gradients, recording_masks

__all__ = ["EpochDiagnostics", "gradient_statistics", "mask_statistics", "probing"]

QUANTILE_SAMPLE = 1 << 20  # quantiles from at most this many elements (a strided subset)
MASK_KEYS = ("mask_mean", "mask_below_0.1", "mask_above_0.9")
GRAD_KEYS = tuple(f"grad_{w}_{q}" for w in ("x", "out") for q in ("p50", "p99", "max"))


@contextlib.contextmanager
def probing(model, enabled=True):
    """Record the blocks' training masks (forward) and incoming gradients (backward)."""
    if not enabled:
        yield None
        return
    with recording_masks(model) as masks, recording_gradients(model) as grads:
        yield masks, grads


def mask_statistics(masks):
    """``{block: {mask_mean, mask_below_0.1, mask_above_0.9}}`` of recorded masks."""
    out = {}
    for name, m in masks.items():
        m = m.float()
        out[name] = {"mask_mean": float(m.mean()), "mask_below_0.1": float((m < 0.1).float().mean()),
                     "mask_above_0.9": float((m > 0.9).float().mean())}
    return out


def _abs_quantiles(g, scale):
    flat = g.detach().float().abs().flatten()
    if flat.numel() == 0:
        return math.nan, math.nan, math.nan
    peak = float(flat.max()) / scale
    if flat.numel() > QUANTILE_SAMPLE:  # strided, not random: diagnostics draw no random numbers
        flat = flat[:: math.ceil(flat.numel() / QUANTILE_SAMPLE)]
    q = torch.quantile(flat, torch.tensor([0.5, 0.99])) / scale
    return float(q[0]), float(q[1]), peak


def gradient_statistics(grads, scale=1.0):
    """``{block: {grad_x_p50, ..., grad_out_max}}``; ``scale`` undoes a grad scaler's factor."""
    out = {}
    for name, g in grads.items():
        row = {}
        for what, short in (("mask_input", "x"), ("output", "out")):
            if what in g:
                p50, p99, peak = _abs_quantiles(g[what], scale)
                row.update({f"grad_{short}_p50": p50, f"grad_{short}_p99": p99, f"grad_{short}_max": peak})
        out[name] = row
    return out


class EpochDiagnostics:
    """Accumulates one epoch's step statistics in a plain dict (checkpointed mid-epoch).

    ``add_step(grad_norm, clipped)`` every step, ``add_probe(mask_stats, grad_stats)`` on sampled
    steps; ``summary()`` gives the epoch's record: ``grad_norm`` (mean of the finite pre-clip
    norms), ``grad_norm_max``, ``clip_frac`` and per block ``<block>.<key>`` (means over sampled
    steps; the ``*_max`` keys are maxima).
    """

    def __init__(self, state=None):
        self.state = state if state is not None else {"steps": 0, "finite": 0, "norm_sum": 0.0,
                                                      "norm_max": 0.0, "clipped": 0, "probes": 0,
                                                      "blocks": {}}

    def add_step(self, grad_norm, clipped):
        s = self.state
        s["steps"] += 1
        if math.isfinite(grad_norm):
            s["finite"] += 1
            s["norm_sum"] += grad_norm
            s["norm_max"] = max(s["norm_max"], grad_norm)
        s["clipped"] += int(bool(clipped))

    def add_probe(self, mask_stats, grad_stats):
        s = self.state
        s["probes"] += 1
        for name in sorted(set(mask_stats) | set(grad_stats)):
            acc = s["blocks"].setdefault(name, {})
            for key, value in {**mask_stats.get(name, {}), **grad_stats.get(name, {})}.items():
                if key.endswith("_max"):
                    acc[key] = max(acc.get(key, -math.inf), value)
                else:
                    acc[key] = acc.get(key, 0.0) + value

    def summary(self):
        s = self.state
        rec = {"grad_norm": s["norm_sum"] / s["finite"] if s["finite"] else math.nan,
               "grad_norm_max": s["norm_max"] if s["finite"] else math.nan,
               "clip_frac": s["clipped"] / s["steps"] if s["steps"] else 0.0}
        for name, acc in s["blocks"].items():
            for key, value in acc.items():
                rec[f"{name}.{key}"] = value if key.endswith("_max") else value / max(1, s["probes"])
        return rec


def block_columns(history):
    """The per-block diagnostic keys that occur in a history, in a stable order."""
    names = sorted({k.split(".")[0] for h in history for k in h if "." in k and k.split(".")[1] in
                    MASK_KEYS + GRAD_KEYS})
    return [f"{n}.{k}" for n in names for k in MASK_KEYS + GRAD_KEYS
            if any(f"{n}.{k}" in h for h in history)]


def sharpness_line(rec):
    """'layer1 M 0.52 (0.10/0.31) ...': mean mask and the fractions below 0.1 / above 0.9."""
    names = sorted({k.split(".")[0] for k in rec if k.endswith(".mask_mean")})
    return " ".join(f"{n} M {rec[f'{n}.mask_mean']:.2f} ({rec[f'{n}.mask_below_0.1']:.2f}/"
                    f"{rec[f'{n}.mask_above_0.9']:.2f})" for n in names)
