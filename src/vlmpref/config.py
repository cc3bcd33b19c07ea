"""Config dataclasses as CLI flags and YAML files, with one precedence: flags > YAML > preset > defaults.

Every command has a plain dataclass whose fields carry `metadata={"help": ...}`. This module turns such a
class into argparse flags (spelled with dashes or underscores), reads a YAML file, rejects unknown keys
with the nearest valid name, and writes the resolved config beside the outputs.

Memory presets (`--preset 6gb | 8gb | 12gb | 24gb | 80gb`, one YAML file each in configs/presets/, shipped in
the package, or the path of such a file) choose quantization, adapter targets, image resolution, batch and accumulation and
gradient checkpointing, as the lowest layer above the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from vlmpref.errors import VlmprefError


# A count that vlmpref can also choose itself: `--pairs-per-forward 4` or `--pairs-per-forward auto`
IntOrAuto = typing.Union[int, Literal["auto"]]
# Choices shared by several commands, declared here (a light module every config imports) so each `--help` lists them
Quantization = Literal["none", "8bit", "4bit"]  # base weights: bf16, bitsandbytes LLM.int8() or NF4
LoraScope = Literal["all", "language"]  # adapters on every target module, or on the language model only


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _is_int_or_auto(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and set(get_args(tp)) == {int, Literal["auto"]}


def parse_int_or_auto(text: Any) -> int | str:
    """"auto" or a whole number, from a flag or a YAML value."""
    if isinstance(text, bool):
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {text!r}")
    if isinstance(text, int) or str(text).strip().lower() == "auto":
        return text if isinstance(text, int) else "auto"
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {text!r}") from None


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _declaring_class(cls: type, name: str) -> type:
    """The class in `cls`'s bases that declares field `name` (a config may extend a shared set of options)."""
    for base in reversed(cls.__mro__):
        if name in base.__dict__.get("__annotations__", {}):
            return base
    return cls


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per dataclass field. Defaults are suppressed so only given flags reach the namespace.

    Fields a config inherits from a shared set of options (`vlmpref.plan.options.RunOptions`) are listed in
    `--help` under that set's title, after the command's own options."""
    hints = _field_types(cls)
    groups: dict[type, Any] = {}
    for f in dataclasses.fields(cls):
        owner = _declaring_class(cls, f.name)
        target = parser
        if owner is not cls:
            title = (owner.__doc__ or owner.__name__).strip().splitlines()[0]
            target = groups.setdefault(owner, parser.add_argument_group(title))
        if f.metadata.get("cli") is False:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        names = [f"--{f.name.replace('_', '-')}"]  # --x_y is accepted too: see normalize_flags
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        shown = "auto" if default is None and optional else default
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  # argparse %-formats help strings, and defaults such as train[:6%] hold a %
                                  "help": f"{help_text} (default: {shown})".replace("%", "%%")}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_int_or_auto(tp):
            kwargs["type"] = parse_int_or_auto
            kwargs["metavar"] = "{auto,N}"
        elif get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
            kwargs["metavar"] = "{" + ",".join(map(str, get_args(tp))) + "}"
        elif get_origin(tp) is list:
            (inner,) = get_args(tp)
            kwargs["nargs"] = "+"
            kwargs["type"] = inner
        else:
            kwargs["type"] = tp
        if f.metadata.get("positional"):
            # given by position (`vlmpref compare A B`) or by name (`--before A`), like every other option
            target.add_argument(f.name, nargs="?", default=argparse.SUPPRESS, type=kwargs.get("type", str),
                                help=kwargs["help"])
            kwargs["help"] = f"Same as the positional {f.name.upper()}."
        target.add_argument(*names, **kwargs)


def normalize_flags(argv: list[str]) -> list[str]:
    """Accept transformers-style `--learning_rate` as well as `--learning-rate`."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        out.append(arg)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config values, with one-line errors for a missing or invalid file."""
    path = Path(path)
    if not path.is_file():
        raise VlmprefError(f"Config file {path} does not exist; check the path given to --config.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise VlmprefError(f"Config file {path} is not valid YAML{where}; fix the syntax there.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VlmprefError(f"Config file {path} must hold a mapping of option: value, not a {type(data).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def check_keys(cls: type, values: dict[str, Any], source: str) -> None:
    """Reject keys the config class does not have, suggesting the nearest valid one."""
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else "; valid keys are listed by --help."
            raise VlmprefError(f"Unknown option '{key}' in {source}{hint}")


def _coerce(name: str, tp: Any, value: Any, source: str) -> Any:
    """Convert a YAML value to the field's type, so `learning_rate: 1e-4` (a str in YAML 1.1) works."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise VlmprefError(f"Option '{name}' in {source} cannot be empty; give a value or remove the line.")
    try:
        if base is bool:
            return value if isinstance(value, bool) else _parse_bool(value)
        if _is_int_or_auto(base):
            return parse_int_or_auto(value)
        if get_origin(base) is Literal:
            choices = get_args(base)
            if value not in choices:
                raise VlmprefError(f"Option '{name}' in {source} must be one of {', '.join(map(str, choices))}, "
                                   f"not {value!r}.")
            return value
        if get_origin(base) is list:
            (inner,) = get_args(base)
            items = value if isinstance(value, list) else [value]
            return [inner(v) for v in items]
        if base in (int, float, str):
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return base(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise VlmprefError(f"Option '{name}' in {source} must be of type {getattr(base, '__name__', base)}, "
                           f"not {value!r}.") from None
    return value


def resolve(cls: type, flags: dict[str, Any] | None = None, yaml_path: str | Path | None = None,
            borrowed_from: type | None = None, **overrides: Any):
    """Build a config: dataclass defaults, then a preset, then the YAML file, then flags and keyword overrides.

    A class with a `preset` field takes its preset (a flag or a YAML key) as the layer just above the defaults.
    `borrowed_from`: another command's config class whose YAML keys are read past silently (so
    `vlmpref estimate --config` takes a `vlmpref train` file).
    """
    hints = _field_types(cls)
    values: dict[str, Any] = {}
    borrowed = {f.name for f in dataclasses.fields(borrowed_from)} if borrowed_from else set()
    given = {**(flags or {}), **overrides}
    check_keys(cls, given, "the arguments")
    resume = given.get("resume") if "resume" in hints else None
    if resume:  # the run's saved options take the place of a YAML file
        yaml_path = _resume_file(cls, resume, yaml_path)
    from_yaml: dict[str, Any] = {}
    if yaml_path:
        from_yaml = {k: v for k, v in read_yaml(yaml_path).items() if k in hints or k not in borrowed}
        check_keys(cls, from_yaml, f"config file {yaml_path}")
    preset = given.get("preset") or from_yaml.get("preset")
    if preset and "preset" in hints:

        source = f"preset {preset}"
        from_preset = {k: v for k, v in preset_values(preset).items() if k in hints or k not in borrowed}
        check_keys(cls, from_preset, source)
        values.update({k: _coerce(k, hints[k], v, source) for k, v in from_preset.items()})
    if resume:  # the saved options describe the run; where it lives is where it is now
        from_yaml = {k: v for k, v in from_yaml.items() if k not in ("overwrite", "config", "resume")}
        from_yaml["output_dir"] = str(resume)
    values.update({k: _coerce(k, hints[k], v, f"config file {yaml_path}") for k, v in from_yaml.items()})
    if hasattr(cls, "follow_given"):  # options of the file that described something the flags replaced
        cls.follow_given(values, given)
    values.update(given)
    if "config" in hints and yaml_path and not resume:
        values["config"] = str(yaml_path)
    missing = [f for f in dataclasses.fields(cls) if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        flag = "--" + missing[0].name.replace("_", "-")
        raise VlmprefError(f"{flag} is required ({missing[0].metadata.get('help', '').rstrip('.')}); give it as "
                           f"{flag} or as {missing[0].name}: in a --config file.")
    return cls(**absolute_paths(cls, values))


def absolute_paths(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the fields marked as paths made absolute, so a saved config means the same from any folder.

    A field's `metadata["path"]` says which kind: "out" (a folder to write: always absolute), "in" (a file,
    folder or Hub id: absolute when it exists here, else left as typed, so Hub ids stay ids).
    """
    kinds = {f.name: f.metadata.get("path") for f in dataclasses.fields(cls)}
    out = dict(values)
    for name, value in values.items():
        kind = kinds.get(name)
        if kind and value:
            out[name] = [_absolute(v, kind) for v in value] if isinstance(value, list) else _absolute(value, kind)
    return out


def with_absolute_paths(cfg: Any) -> Any:
    """A config built in Python (not through `resolve`) with its path fields made absolute, as `resolve` does."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    absolute = absolute_paths(type(cfg), values)
    return cfg if absolute == values else dataclasses.replace(cfg, **absolute)


def _absolute(value: str, kind: str) -> str:
    path = os.path.expanduser(str(value))
    if os.path.isabs(path):
        return path
    if kind == "out" or os.path.exists(path):
        return os.path.abspath(path)
    return str(value)


def _resume_file(cls: type, folder: str, yaml_path: str | Path | None) -> Path:
    """The config a run saved in `folder` (`cls.resume_file`), which `--resume` continues with."""
    if yaml_path:
        raise VlmprefError("--resume continues a run with the options it saved; leave out --config.")
    path = Path(folder) / cls.resume_file
    if not Path(folder).is_dir():
        raise VlmprefError(f"--resume {folder}: no such folder; give the --output-dir of the run to continue.")
    if not path.is_file():
        raise VlmprefError(f"{folder} holds no {cls.resume_file}, so no run was started there; start one with "
                           f"--output-dir {folder} (add --overwrite if the folder is not empty).")
    return path


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML; `vlmpref <command> --config` reads it back unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# resolved {type(cfg).__name__}; rerun with: vlmpref <command> --config {path.name}\n"
    path.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


# ---- presets: `--preset 6gb | 8gb | 12gb | 24gb | 80gb`, the layer just above the defaults
PRESETS = ("6gb", "8gb", "12gb", "24gb", "80gb")


def preset_dir() -> Path:
    """The preset YAML files, shipped inside the package (configs/presets in the repository links here)."""
    return Path(__file__).resolve().parent / "assets" / "presets"


def preset_path(name: str) -> Path:
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise VlmprefError(f"Preset file {name} does not exist; check the path given to --preset.")
        return path
    key = name.lower().replace(" ", "")
    if key not in PRESETS:
        raise VlmprefError(f"Unknown preset '{name}'; choose from {', '.join(PRESETS)}, or give a preset YAML file.")
    path = preset_dir() / f"{key}.yaml"
    if not path.is_file():
        raise VlmprefError(f"Preset file {path} is missing from this vlmpref install; reinstall vlmpref or pass "
                           "--preset path/to/preset.yaml.")
    return path


def preset_values(name: str) -> dict:
    """The options a preset sets, as `option: value`."""
    return read_yaml(preset_path(name))


def describe_preset(cfg, name: str) -> str:
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
