"""Memory presets as the estimator sees them, and the largest one that fits a card.

    from vlmpref.plan.presets import preset_that_fits
    preset_that_fits(shape, settings, find_gpu("rtx-4070"))    # ("12gb", Estimate(...)) or None
"""

from __future__ import annotations

import dataclasses

from vlmpref.config import PRESETS, preset_values
from vlmpref.errors import VlmprefError
from vlmpref.plan.estimate import Estimate, ModelShape, RunSettings, estimate
from vlmpref.plan.gpus import Gpu


def preset_settings(name: str, base: RunSettings) -> RunSettings:
    """`base` with a preset's choices applied (a preset sets RunOptions by their own names)."""
    names = {f.name for f in dataclasses.fields(RunSettings)}
    return dataclasses.replace(base, **{key: value for key, value in preset_values(name).items() if key in names})


def preset_that_fits(shape: ModelShape, settings: RunSettings, gpu: Gpu,
                     available_gib: float | None = None) -> tuple[str, Estimate] | None:
    """The largest preset whose settings fit, with its estimate: within `gpu`'s memory, or, when given, within
    `available_gib` of free memory for the run's own allocations (the pre-check's budget)."""
    for name in reversed(PRESETS):
        try:
            est = estimate(shape, preset_settings(name, settings), gpu)
        except VlmprefError:
            return None  # preset files not found: no suggestion
        if est.fits if available_gib is None else est.memory.reserved_gib <= available_gib:
            return name, est
    return None
