"""What stops a run cleanly: a signal (Ctrl-C, SIGTERM), and a loss or gradient that is no longer a number.

- SIGINT / SIGTERM during training: the current optimizer step finishes, a checkpoint is written, and `train`
  returns with `interrupted` set; a second signal stops at once (the last checkpoint is kept).
- NaN or inf in the loss (each micro-batch) or the gradient norm (each step, before the optimizer applies
  it): training stops with `NonFiniteLoss`, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading

import torch
from transformers import TrainerCallback


class NonFiniteLoss(Exception):
    """Raised inside training; `train` turns it into a VlmprefError that names the last good checkpoint."""

    def __init__(self, what: str, value: float, step: int):
        super().__init__(f"{what} is {value} at step {step}")
        self.what, self.value, self.step = what, value, step


class FiniteLossCheck:
    """Trainer mixin: stop before an update computed from a NaN or infinite loss or gradient is applied."""

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss("the loss", float(loss.detach().float().mean()), self.state.global_step + 1)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        value = float(grad_norm) if grad_norm is not None else 0.0
        if not math.isfinite(value):
            raise NonFiniteLoss("the gradient norm", value, self.state.global_step + 1)
        return grad_norm


class StopRequest:
    """Set by the signal handler, read by `StopOnSignal` at the end of each optimizer step."""

    def __init__(self):
        self.signal_name: str | None = None


class StopOnSignal(TrainerCallback):
    """After the step in progress when a signal came: save a checkpoint and end training."""

    def __init__(self, request: StopRequest):
        self.request = request

    def on_step_end(self, args, state, control, **kwargs):
        if self.request.signal_name:
            control.should_save = True
            control.should_training_stop = True
        return control


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Within the block, the first SIGINT/SIGTERM asks for a clean stop; a second one stops at once."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield request
        return

    def handler(signum, frame):
        if request.signal_name:
            raise KeyboardInterrupt
        request.signal_name = signal.Signals(signum).name
        print(f"\n{request.signal_name} received: finishing this step and saving a checkpoint "
              "(send it again to stop at once).", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield request
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
