"""Per-epoch schedules: the learning rate (SAN's and a step decay) and the Gumbel-Softmax temperature.

Learning rate (SAN IV-B follows Hermans et al. 2017): constant ``lr`` for epochs
``0 .. decay_start``, then ``lr * final_factor ** ((epoch - decay_start) / (epochs - decay_start))``,
which reaches ``lr * final_factor`` at ``epoch == epochs`` (SAN: 2e-4, decay from epoch 100 of
150 down to 1e-3 of it). Epochs are counted from 0.

Temperature (SAN eq. 9): ``tau = max(tau_min, tau0 * exp(-alpha * epoch))``, 1.0 -> 0.5 with
alpha = 0.008 (reached at epoch 87): :func:`temperature_schedule` builds
``sharpattn.TemperatureSchedule``.
"""

from __future__ import annotations

__all__ = ["LRSchedule", "StepSchedule", "lr_schedule", "temperature_schedule"]


class LRSchedule:
    """``LRSchedule(lr, epochs=150, decay_start=100, final_factor=0.001)(epoch)`` -> lr."""

    def __init__(self, lr, epochs=150, decay_start=100, final_factor=0.001):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= decay_start <= epochs:
            raise ValueError(f"decay_start must be in 0..epochs={epochs}, got {decay_start}")
        if not 0 < final_factor <= 1:
            raise ValueError(f"final_factor must be in (0, 1], got {final_factor}")
        self.lr, self.epochs, self.decay_start, self.final_factor = lr, epochs, decay_start, final_factor

    def factor(self, epoch):
        if epoch <= self.decay_start or self.epochs == self.decay_start:
            return 1.0
        return self.final_factor ** ((epoch - self.decay_start) / (self.epochs - self.decay_start))

    def __call__(self, epoch):
        return self.lr * self.factor(epoch)

    def __repr__(self):
        return (f"LRSchedule(lr={self.lr}, epochs={self.epochs}, decay_start={self.decay_start}, "
                f"final_factor={self.final_factor})")


def temperature_schedule(tau0=1.0, alpha=0.008, tau_min=0.5):
    """The eq. 9 schedule, ``sharpattn.TemperatureSchedule``."""
    from sharpattn import TemperatureSchedule

    return TemperatureSchedule(tau0=tau0, alpha=alpha, tau_min=tau_min)


class StepSchedule:
    """``StepSchedule(lr, step_size, gamma)(epoch)`` -> ``lr * gamma ** (epoch // step_size)``
    (AAA-Net: 1e-3 x0.1 every 2 epochs, then 1e-4 x0.1 every 3)."""

    def __init__(self, lr, step_size, gamma=0.1):
        if lr <= 0 or step_size < 1 or not 0 < gamma <= 1:
            raise ValueError(f"StepSchedule needs lr > 0, step_size >= 1, 0 < gamma <= 1; got "
                             f"{lr}, {step_size}, {gamma}")
        self.lr, self.step_size, self.gamma = lr, step_size, gamma

    def __call__(self, epoch):
        return self.lr * self.gamma ** (epoch // self.step_size)

    def __repr__(self):
        return f"StepSchedule(lr={self.lr}, step_size={self.step_size}, gamma={self.gamma})"


def lr_schedule(optim_cfg):
    """The config's ``optim.schedule``: "hermans" (:class:`LRSchedule`) or "step"."""
    if optim_cfg.schedule == "step":
        return StepSchedule(optim_cfg.lr, optim_cfg.step_size, optim_cfg.gamma)
    return LRSchedule(optim_cfg.lr, optim_cfg.epochs, optim_cfg.decay_start, optim_cfg.final_lr_factor)
