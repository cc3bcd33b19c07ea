"""Run folders: prepare one for a command's outputs, and read back what a training run saved.

Every stage writes into a folder the user names (`--output-dir`), and later stages read what `vlmpref train` saved
beside an adapter. Both live here, below the stages, so that eval and compare need not import from training:

    out = prepare_output_dir("runs/eval", overwrite=False)     # refuses to mix into another command's outputs
    settings = run_config("runs/dpo/checkpoint-40")             # the run's vlmpref_config.yaml, found in the parent
    base = adapter_base("runs/dpo/checkpoint-40")               # the base model the adapter was trained on
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import yaml

from vlmpref.errors import VlmprefError

RUN_CONFIG = "vlmpref_config.yaml"  # the resolved TrainConfig `vlmpref train` saves; `--resume` reads it back


def prepare_output_dir(path: str | Path, overwrite: bool, clear: Iterable[str] = (), hint: str = "") -> Path:
    """The output folder, created; a non-empty one is refused unless `overwrite`.

    With `overwrite`, the names in `clear` (files, folders or glob patterns of the previous run's own outputs) are
    removed first, so nothing of the old run mixes with the new one; anything else in the folder is left alone.
    `hint` ends the refusal (", or continue that run with ...").
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise VlmprefError(f"--output-dir {out} is a file; choose a folder.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise VlmprefError(f"Output folder {out} is not empty; choose another --output-dir or pass "
                               f"--overwrite{hint}.")
        for pattern in clear:
            for old in out.glob(pattern):
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_folder(adapter: str | Path) -> Path | None:
    """The training run an adapter folder belongs to: the folder itself, or the run above a `checkpoint-N`."""
    folder = Path(adapter).expanduser()
    for place in (folder, folder.parent):
        if (place / RUN_CONFIG).is_file():
            return place
    return None


def run_config(adapter: str | Path | None) -> dict:
    """The options `vlmpref train` saved for the run that made `adapter` ({} when there is none)."""
    if not adapter:
        return {}
    run = run_folder(adapter)
    if run is None:
        return {}
    try:
        saved = yaml.safe_load((run / RUN_CONFIG).read_text())
    except yaml.YAMLError:
        raise VlmprefError(f"{run / RUN_CONFIG} is not valid YAML; restore it from the run or pass the options "
                           "(--model, --quantization) yourself.") from None
    return saved if isinstance(saved, dict) else {}


def adapter_base(adapter: str | Path) -> str | None:
    """The base model of an adapter: the run's saved `model`, else PEFT's `base_model_name_or_path`."""
    saved = run_config(adapter).get("model")
    if saved:
        return str(saved)
    config_file = Path(adapter).expanduser() / "adapter_config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()).get("base_model_name_or_path") or None
    return None


def check_adapter_folder(adapter: str | Path) -> Path:
    """The adapter folder, or one sentence saying what is wrong with the path given to --adapter."""
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise VlmprefError(f"Adapter folder {adapter} does not exist; check the path given to --adapter.")
    if not (folder / "adapter_config.json").is_file():
        raise VlmprefError(f"{adapter} holds no adapter_config.json; point --adapter at the output folder of "
                           "`vlmpref train` (or a checkpoint folder inside it).")
    return folder
