"""What stops a run cleanly: a signal (Ctrl-C, SIGTERM), and a loss or gradient that is no longer a number.

- SIGINT / SIGTERM during training: the current optimizer step finishes, a checkpoint is written, and `train`
  returns with `interrupted` set; a second signal stops at once (the last checkpoint is kept). In a
  data-parallel run a signal to any process stops all of them after the same step.
- NaN or inf in the loss of any micro-batch or in the gradient norm: checked once per optimizer step, before
  the optimizer applies it (transformers' public `on_pre_optimizer_step` callback), so training stops with
  `NonFiniteLoss` and the last checkpoint stays the last good one. The per-micro-batch losses are combined on
  the GPU and read back once per step, so the host never waits for the GPU in between.
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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._step_losses: torch.Tensor | None = None  # this step's micro-batch losses, summed on the device
        self.add_callback(_CheckBeforeUpdate(self))

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        total = loss.detach().float().sum()
        self._step_losses = total if self._step_losses is None else self._step_losses + total
        return loss


class _CheckBeforeUpdate(TrainerCallback):
    """Before each optimizer update: the step's losses and the adapters' gradient norm must be finite."""

    def __init__(self, trainer: FiniteLossCheck):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        losses, self.trainer._step_losses = self.trainer._step_losses, None
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        loss = losses if losses is not None else torch.zeros((), device=norm.device)
        loss_value, norm_value = torch.stack([loss.to(norm.device), norm.float()]).tolist()  # one read-back
        if not math.isfinite(loss_value):
            raise NonFiniteLoss("the loss", loss_value, state.global_step + 1)
        if not math.isfinite(norm_value):
            raise NonFiniteLoss("the gradient norm", norm_value, state.global_step + 1)


class StopRequest:
    """Set by the signal handler, read by `StopOnSignal` at the end of each optimizer step."""

    def __init__(self):
        self.signal_name: str | None = None


class StopOnSignal(TrainerCallback):
    """After the step in progress when a signal came: save a checkpoint and end training.

    With several processes, `agree` (any process's flag, `Processes.any`) makes every process stop after the same
    step, whichever one received the signal: the checkpoint is written by all of them together."""

    def __init__(self, request: StopRequest, agree=None):
        self.request = request
        self.agree = agree

    def on_step_end(self, args, state, control, **kwargs):
        stop = bool(self.request.signal_name)
        if self.agree is not None:
            stop = self.agree(stop)  # one small all-reduce per optimizer step
            if stop and not self.request.signal_name:
                self.request.signal_name = "a signal to another process"
        if stop:
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
