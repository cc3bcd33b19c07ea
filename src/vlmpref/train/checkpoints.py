"""Checkpoints that are complete or absent: written to a staging folder, then renamed into place.

transformers writes `checkpoint-N/` file by file (adapter, optimizer, scheduler, RNG state, trainer state); a
run killed half-way leaves a folder that looks like a checkpoint and is not one. Here the folder is written as
`.checkpoint-staging/checkpoint-N`, flushed to disk, and renamed to `checkpoint-N` (a rename is atomic on one
file system), so `last_checkpoint` only ever sees whole checkpoints.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import rotate_checkpoints

STAGING = ".checkpoint-staging"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in `output_dir` (trainer_state.json is written last), or None."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir()
                   if p.is_dir() and (m := _CHECKPOINT.fullmatch(p.name)))
    for _, path in reversed(found):
        if (path / "trainer_state.json").is_file():
            return path
    return None


def remove_partial_checkpoints(output_dir: str | Path) -> None:
    """Delete what a killed run left in the staging folder (it never became a checkpoint), and put back a
    checkpoint that was being replaced when the run died."""
    folder = Path(output_dir)
    shutil.rmtree(folder / STAGING, ignore_errors=True)
    for old in folder.glob(".checkpoint-*-replaced"):
        final = folder / old.name[1:-len("-replaced")]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(final)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and the folder itself, so a power cut after the rename cannot leave empty files."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpoints:
    """Trainer mixin: `_save_checkpoint` writes into the staging folder and renames the result into place."""

    def _save_checkpoint(self, model, trial):
        # Several processes: each writes its own RNG state into the staging folder, the main process the rest;
        # only the main process makes and renames folders, between barriers, so no process writes into a folder
        # that is being moved.
        run_dir = Path(self._get_output_dir(trial=trial))
        staging = run_dir / STAGING
        main = self.args.should_save
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        # transformers builds the checkpoint path from _get_output_dir: point it at the staging folder
        self._get_output_dir = lambda trial=None: str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir  # back to the class's method
        self.accelerator.wait_for_everyone()
        if main:
            self._move_into_place(run_dir, staging)
        self.accelerator.wait_for_everyone()

    def _move_into_place(self, run_dir: Path, staging: Path) -> None:
        name = f"checkpoint-{self.state.global_step}"
        _fsync_tree(staging / name)
        final = run_dir / name
        if final.exists():  # the same step saved again (resumed from it): swap, never leave a gap
            old = run_dir / f".{name}-replaced"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            (staging / name).rename(final)
            shutil.rmtree(old)
        else:
            (staging / name).rename(final)
        _fsync_dir(run_dir)
        shutil.rmtree(staging, ignore_errors=True)
        rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)


class ResumeKeepsPrecision:
    """Trainer mixin: resuming puts the adapter back in the dtypes the run trained it in.

    TRL trains QLoRA adapters (LoRA A/B) in bf16, but transformers resumes a PEFT model through `load_adapter`,
    which upcasts them to float32 (PEFT's autocast_adapter_dtype, huggingface/peft#1706; its opt-out does not
    reach quantized models, peft#2889): the resumed run would continue in another precision and end elsewhere.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = model if model is not None else self.model
        dtypes = {name: p.dtype for name, p in target.named_parameters() if p.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, p in target.named_parameters():
            if name in dtypes and p.dtype != dtypes[name]:
                p.data = p.data.to(dtypes[name])
