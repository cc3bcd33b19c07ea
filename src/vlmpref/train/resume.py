"""`vlmpref train --resume OUTPUT_DIR`: continue a run from its last complete checkpoint.

The run's options come back from its saved `vlmpref_config.yaml` (config.resolve reads it as the base layer);
flags may change only the options in `SAFE_ON_RESUME`, which leave the computation alone. The trainer then
restores the adapter, optimizer, scheduler, RNG states and its place in the data order from the checkpoint,
and the fast engine reuses the reference log-probs stored in the folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from transformers import TrainerCallback

from vlmpref import config as config_io
from vlmpref.errors import VlmprefError
from vlmpref.train.checkpoints import last_checkpoint, remove_partial_checkpoints
from vlmpref.train.config import CONFIG_NAME, SAFE_ON_RESUME, TrainConfig

# Where the run is and how it was started, not what it computes
_NOT_COMPARED = set(SAFE_ON_RESUME) | {"resume", "overwrite", "config", "output_dir"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_resumable(cfg: TrainConfig) -> Path | None:
    """Check that `cfg` continues the run saved in `cfg.resume`; return its last complete checkpoint (or None)."""
    folder = Path(cfg.resume)
    saved = config_io.resolve(TrainConfig, resume=str(folder))  # the saved options, as --resume reads them
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_COMPARED:
            continue
        before, now = getattr(saved, f.name), getattr(cfg, f.name)
        if before != now:
            raise VlmprefError(f"{_flag(f.name)} cannot change when resuming (the run in {folder} used {before!r}, "
                               f"not {now!r}); leave it out, or start a new run in another --output-dir. Only "
                               f"{', '.join(map(_flag, SAFE_ON_RESUME))} may change.")
    summary = folder / "train_summary.json"
    if summary.is_file() and not json.loads(summary.read_text()).get("interrupted"):
        raise VlmprefError(f"The run in {folder} already finished; its adapter is there. Start a new run in another "
                           "--output-dir to train further.")
    remove_partial_checkpoints(folder)
    return last_checkpoint(folder)


class StepsFromThisRun(TrainerCallback):
    """Logging, evaluation and save intervals from this run's options, also when resuming.

    transformers restores them from the checkpoint's trainer state, so `--resume RUN --logging-steps 1` would
    keep logging every 10 steps; they are in SAFE_ON_RESUME because they change nothing that is computed.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


def resume_line(output_dir: str | Path) -> str:
    return f"vlmpref train --resume {output_dir}"


__all__ = ["StepsFromThisRun", "check_resumable", "resume_line", "CONFIG_NAME"]
