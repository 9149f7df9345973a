"""Argument validation shared by the public ops: one clear Python error per mistake."""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
UINT64_LIMIT = 1 << 64


def feature_map(value, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"sharpattn: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"sharpattn: {name} must be float16, bfloat16, float32 or float64, "
                        f"got {value.dtype}")
    if value.dim() != 4:
        raise ValueError(f"sharpattn: {name} must be a 4-D (N, C, H, W) feature map, got shape "
                         f"{tuple(value.shape)}")
    if value.shape[2] == 0 or value.shape[3] == 0:
        raise ValueError(f"sharpattn: {name} must have H >= 1 and W >= 1 (a plane has a min and a "
                         f"max), got shape {tuple(value.shape)}")


def same_map(t: torch.Tensor, other, name: str) -> None:
    feature_map(other, name)
    if other.shape != t.shape:
        raise ValueError(f"sharpattn: {name} must have the shape of t {tuple(t.shape)}, got "
                         f"{tuple(other.shape)}")
    if other.dtype != t.dtype:
        raise TypeError(f"sharpattn: {name} must have the dtype of t ({t.dtype}), got {other.dtype}")
    if other.device != t.device:
        raise ValueError(f"sharpattn: {name} must be on the device of t ({t.device}), got "
                         f"{other.device}")


def positive_finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"sharpattn: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sharpattn: {name} must be finite and > 0, got {value}")
    return value


def counter_int(value, name: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"sharpattn: {name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < limit:
        raise ValueError(f"sharpattn: {name} must be in [0, {limit}), got {value}")
    return value


def as_int64(value: int) -> int:
    """A uint64 seed as the int64 with the same bits (op schemas carry int64)."""
    return value - UINT64_LIMIT if value >= (1 << 63) else value
