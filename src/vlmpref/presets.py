"""Memory presets: `--preset 6gb | 8gb | 12gb | 24gb | 80gb`, one YAML file each in configs/presets/.

    vlmpref train --preset 8gb --model HuggingFaceTB/SmolVLM-Instruct --output-dir runs/dpo-8gb
    vlmpref estimate --preset 8gb --gpu rtx-4060

A preset chooses quantization, adapter targets, image resolution, batch and accumulation, and gradient
checkpointing. It is the lowest layer of a command's options: flags > --config YAML > preset > defaults.
`--preset` also takes the path of a YAML file of the same form.
"""

from __future__ import annotations

from pathlib import Path

from vlmpref.errors import VlmprefError

PRESETS = ("6gb", "8gb", "12gb", "24gb", "80gb")


def preset_dir() -> Path | None:
    """configs/presets of the source tree vlmpref runs from (or of the working directory)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        folder = root / "configs" / "presets"
        if folder.is_dir():
            return folder
    return None


def preset_path(name: str) -> Path:
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise VlmprefError(f"Preset file {name} does not exist; check the path given to --preset.")
        return path
    key = name.lower().replace(" ", "")
    if key not in PRESETS:
        raise VlmprefError(f"Unknown preset '{name}'; choose from {', '.join(PRESETS)}, or give a preset YAML file.")
    folder = preset_dir()
    if folder is None or not (folder / f"{key}.yaml").is_file():
        raise VlmprefError(f"Preset files (configs/presets/{key}.yaml) are not found next to this vlmpref install; "
                           "run from a clone of the repository or pass --preset path/to/preset.yaml.")
    return folder / f"{key}.yaml"


def preset_values(name: str) -> dict:
    """The options a preset sets, as `option: value`."""
    from vlmpref.config import read_yaml

    return read_yaml(preset_path(name))


def describe(cfg, name: str) -> str:
    """One line naming the preset and the values now in effect for the options it sets."""
    values = preset_values(name)
    shown = ", ".join(f"{key}={_show(getattr(cfg, key, value))}" for key, value in values.items())
    return f"preset {name}: {shown}"


def _show(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "auto" if value is None else str(value)
