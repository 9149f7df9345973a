"""The temperature schedule of SAN (eq. 9)."""

from __future__ import annotations

import math


class TemperatureSchedule:
    """tau(t) = max(tau_min, tau0 * exp(-alpha * t)) for epoch t = 0, 1, ... (SAN eq. 9).

    With the paper's tau0 = 1.0, alpha = 0.008, tau_min = 0.5, tau reaches its floor at epoch 87.
    """

    def __init__(self, tau0: float = 1.0, alpha: float = 0.008, tau_min: float = 0.5):
        for name, value in (("tau0", tau0), ("tau_min", tau_min)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"TemperatureSchedule: {name} must be finite and > 0, got {value}")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"TemperatureSchedule: alpha must be finite and >= 0, got {alpha}")
        self.tau0, self.alpha, self.tau_min = float(tau0), float(alpha), float(tau_min)

    def __call__(self, epoch: float) -> float:
        if epoch < 0:
            raise ValueError(f"TemperatureSchedule: epoch must be >= 0, got {epoch}")
        return max(self.tau_min, self.tau0 * math.exp(-self.alpha * epoch))

    def __repr__(self) -> str:
        return (f"TemperatureSchedule(tau0={self.tau0:g}, alpha={self.alpha:g}, "
                f"tau_min={self.tau_min:g})")
