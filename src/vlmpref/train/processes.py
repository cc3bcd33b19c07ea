"""Several processes, one per GPU: data parallel training under `accelerate launch` or `torchrun`.

    accelerate launch --num_processes 2 -m vlmpref train --config configs/smolvlm-instruct/dpo-guide.yaml
    torchrun --nproc-per-node 2 -m vlmpref train --config configs/smolvlm-instruct/dpo-guide.yaml

Each process holds the whole model (its own 4-bit base on its own GPU) and trains on its share of every
optimizer step's pairs; gradients are averaged before the update, so N processes end where one process ends
with the same effective batch. What the run writes (output folder, config, rejected rows, checkpoints, logs,
summary, adapter) is written once, by the main process; the others wait for it where they need it.

One process (no launcher) is the same code with every collective step a no-op.
"""

from __future__ import annotations

import contextlib
import os

import torch

from vlmpref.errors import VlmprefError


class ReportedByMain(VlmprefError):
    """The main process stopped on a user error and printed it; the other processes stop quietly."""

    everywhere = True


def finish_together() -> None:
    """After a user error that every process met (`everywhere`): wait for all of them before exiting, or the
    launcher stops the main process, on the first exit, before it has printed the error."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class Processes:
    """This process's place in the run (rank, local rank, number of processes) and the few collective steps
    `train` needs. The process group is set up by accelerate (NCCL on GPUs, gloo on CPUs), the same one the
    Trainer uses."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1:
            from accelerate import PartialState

            PartialState(cpu=not torch.cuda.is_available())

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This process's device: the GPU of its local rank (one per process), else the CPU."""
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if self.world > 1:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cuda")

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def on_main(self, work):
        """`work()` on the main process; its result (or its user error) reaches every process. Used for what
        touches the output folder, so that the others never see it half-made."""
        if self.world == 1:
            return work()
        outcome = [None]
        if self.main:
            try:
                outcome = [("ok", work())]
            except VlmprefError as exc:
                outcome = [("error", str(exc))]
                torch.distributed.broadcast_object_list(outcome, src=0)
                exc.everywhere = True
                raise
        torch.distributed.broadcast_object_list(outcome, src=0)
        kind, value = outcome[0]
        if kind == "error":
            raise ReportedByMain(value)
        return value

    def raise_everywhere(self, exc: VlmprefError):
        """Raise a user error that every process met alike (the same data, the same flags): said once."""
        if self.world > 1 and not self.main:
            raise ReportedByMain(str(exc)) from None
        exc.everywhere = self.world > 1
        raise exc

    @contextlib.contextmanager
    def main_first(self):
        """The main process runs the block first (dataset caches are written once), then the others."""
        if self.world > 1 and not self.main:
            self.barrier()
        yield
        if self.world > 1 and self.main:
            self.barrier()

    def total(self, value: float) -> float:
        """The sum of `value` over the processes."""
        if self.world == 1:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device())
        torch.distributed.all_reduce(tensor)
        return float(tensor.item())

    def any(self, flag: bool) -> bool:
        return self.total(1.0 if flag else 0.0) > 0

    def smallest(self, value: int) -> int:
        if self.world == 1:
            return value
        tensor = torch.tensor([int(value)], dtype=torch.int64, device=self._collective_device())
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
        return int(tensor.item())

    def _collective_device(self) -> torch.device:
        # NCCL moves GPU tensors only; gloo CPU tensors
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")

    def split_accumulation(self, per_device: int, accumulation: int) -> int:
        """Each process's gradient accumulation steps, so that the effective batch (per-device batch x
        accumulation, as configured for one process) stays what the config says."""
        if accumulation % self.world:
            self.raise_everywhere(VlmprefError(
                f"--gradient-accumulation-steps {accumulation} cannot be shared by {self.world} processes (each "
                f"takes an equal part, so that the effective batch stays {per_device * accumulation} pairs); use a "
                f"multiple of {self.world}, e.g. --gradient-accumulation-steps {self.world * max(1, accumulation // self.world)} "
                f"with --per-device-train-batch-size {per_device}."))
        return accumulation // self.world
