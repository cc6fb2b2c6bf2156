"""Callbacks at step boundaries: fault injection for the reliability tests, and SIGTERM.

Why it exists: the loop must read as the method, not as its test harness. A callback sees the
losses of step n before the update (`on_loss`, may alter them) and the finished step n after its
checkpoint (`on_step_end`, returns True to stop with a checkpoint, as a pre-emption would). The
trainer adds the faults a config or the environment asks for; tests pass their own.
"""
from __future__ import annotations

import os
import signal
import threading

import torch

from ..config import Config

KILL_AT_STEP_ENV = "MOSAIC_FAULT_SIGKILL_AT_STEP"  # fault injection: SIGKILL after step n


class Callback:
    def on_loss(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        pass

    def on_step_end(self, step: int) -> bool:
        return False


class NanAtStep(Callback):
    """The loss of step n becomes NaN (config train.nan_at_step): the NaN guard must stop the run."""

    def __init__(self, step: int):
        self.step = step

    def on_loss(self, step, losses):
        if step == self.step:
            losses["total"] = losses["total"] * float("nan")


class KillAtStep(Callback):
    """The process kills itself after step n ($MOSAIC_FAULT_SIGKILL_AT_STEP): a pre-emption without warning."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
        return False


class StopAfter(Callback):
    """Stop after step n with a checkpoint, as a pre-emption with warning would (train(stop_after=n))."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step):
        return step == self.step


def fault_callbacks(cfg: Config, stop_after: int | None) -> list[Callback]:
    """The faults the config (train.nan_at_step), the environment (KILL_AT_STEP_ENV) or the caller ask for."""
    out: list[Callback] = []
    if cfg.train.nan_at_step:
        out.append(NanAtStep(cfg.train.nan_at_step))
    if int(os.environ.get(KILL_AT_STEP_ENV, 0)):
        out.append(KillAtStep(int(os.environ[KILL_AT_STEP_ENV])))
    if stop_after is not None:
        out.append(StopAfter(stop_after))
    return out


class StopFlag:
    """Set by SIGTERM (pre-emption): the loop checkpoints and returns at the next step boundary."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "set", True))
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
