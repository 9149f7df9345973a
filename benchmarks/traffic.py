"""Minimum memory traffic of each benchmarked operator, in bytes.

The achieved bandwidth of a run is ``min_traffic / median time``: the bytes that *any*
implementation must move between memory and the chip, counted as if every input were read
exactly once and every output written exactly once per pass. It is a property of the operator
and the shape, not of the implementation, so the figure is comparable across backends: an
implementation that stores or re-reads intermediates (the eager reference) simply reaches a
lower fraction of the copy bandwidth.

With ``E = N*C*H*W`` elements of ``b`` bytes each (float32 4, bfloat16/float16 2, float64 8),
``s = 4`` bytes for the float32 per-sample losses (8 for float64 input), ``G = gh*gw`` cells:

``sharp_attention`` (sample mode; ``x`` is ``t`` unless ``separate_x``)
    fwd:      read T (+ read X) + write F                         ( + write TV: N*s if ``tv``)
    fwd+bwd:  fwd + read grad_F + read T (+ read X) + write grad_T (+ write grad_X)
                                                                  ( + read grad_TV: N*s if ``tv``)
    i.e. x is t: fwd 2*E*b, fwd+bwd 5*E*b; separate x: fwd 3*E*b, fwd+bwd 8*E*b (plus the
    few N*s bytes of the TV). The backward re-reads the inputs: at these sizes they do not
    stay in any cache between the two passes. The per-plane (min, max) statistics the kernels
    save (N*C*2 floats) and the returned mask are not counted: they are not required outputs.

``tv_loss``
    fwd:      read A + write TV (N*s)
    fwd+bwd:  fwd + read grad_TV (N*s) + read A + write grad_A          = 3*E*b + 2*N*s

``grid_occlusion``
    fwd:      read x + write the G copies (G*E*b)
    fwd+bwd:  fwd + read grad of the copies (G*E*b) + write grad_x      = 2*E*b + 2*G*E*b

``grid_occlusion_pool``
    fwd:      read x + write P (N*G*C*b)
    fwd+bwd:  fwd + read grad_P (N*G*C*b) + write grad_x                = 2*E*b + 2*N*G*C*b
    (grad_x depends only on grad_P and the cell geometry, so x is not re-read.)

``copy`` (the device's copy bandwidth): read + write of the buffer, 2 * nbytes.

Pure Python (no torch import) so that the report script and the tests can use it anywhere.
"""

from __future__ import annotations

import math

ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
OPS = ("sharp_attention", "tv_loss", "grid_occlusion", "grid_occlusion_pool")
PASSES = ("fwd", "fwdbwd")


def element_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name ("float32", "bfloat16", ... or "torch.float32")."""
    return ELEMENT_BYTES[str(dtype).removeprefix("torch.")]


def loss_bytes(dtype: str) -> int:
    """Bytes of one per-sample loss value: float64 for float64 input, float32 otherwise."""
    return 8 if element_bytes(dtype) == 8 else 4


def min_traffic(op: str, shape, dtype: str, pass_: str, *, separate_x: bool = False,
                tv: bool = False, grid=(4, 4)) -> int:
    """Minimum bytes moved by one call (``pass_`` "fwd") or one forward + backward ("fwdbwd")."""
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    n, c, h, w = (int(v) for v in shape)
    e = n * c * h * w
    b = element_bytes(dtype)
    s = loss_bytes(dtype)
    g = math.prod(grid)
    bwd = pass_ == "fwdbwd"
    if op == "sharp_attention":
        inputs = (2 if separate_x else 1) * e * b
        total = inputs + e * b + (n * s if tv else 0)                 # read T(, X), write F(, TV)
        if bwd:
            total += e * b + inputs + inputs + (n * s if tv else 0)   # grad_F, T(, X), grads, grad_TV
        return total
    if op == "tv_loss":
        return e * b + n * s + ((n * s + 2 * e * b) if bwd else 0)
    if op == "grid_occlusion":
        return e * b + g * e * b + ((g * e * b + e * b) if bwd else 0)
    if op == "grid_occlusion_pool":
        pooled = n * g * c * b
        return e * b + pooled + ((pooled + e * b) if bwd else 0)
    raise ValueError(f"unknown op {op!r}; choose from {OPS}")


def copy_traffic(nbytes: int) -> int:
    """Bytes moved by copying a buffer of ``nbytes``: one read and one write."""
    return 2 * int(nbytes)
