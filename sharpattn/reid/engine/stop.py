"""Ctrl-C and SIGTERM stop training after the current step, with a checkpoint."""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["StopFlag", "TrainingDiverged", "TrainingInterrupted"]


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or infinite; the message says at which epoch and step.
    The step is not applied, so ``last.pt`` (the last epoch's end) holds finite weights."""


class TrainingInterrupted(Exception):
    """Training stopped early (signal or ``stop_at``); ``last.pt`` holds the state to resume."""

    def __init__(self, checkpoint):
        super().__init__(f"training interrupted; state saved to {checkpoint}")
        self.checkpoint = checkpoint


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop stops after the current step and saves."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.set = True
        print(f"\n[sharpattn] signal {signum}: stopping after this step and saving a checkpoint "
              f"(again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
