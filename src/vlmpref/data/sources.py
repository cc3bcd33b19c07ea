"""Find and open a dataset: a Hub id, a `save_to_disk` folder, a folder of data files, or one file.

All paths end in `datasets.load_dataset` / `load_from_disk`, so split slicing (`train[:6%]`) means the same
thing everywhere. Errors a user can cause (no such path or id, unknown split) become one-line VlmprefErrors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from typing import TYPE_CHECKING

from vlmpref.errors import VlmprefError

if TYPE_CHECKING:  # datasets loads when data does, so `--help` and default splits stay quick
    from datasets import Dataset, DatasetDict

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# The guide's slices belong to the guide's dataset; any other dataset is used whole unless a slice is given
GUIDE_DATASET = "HuggingFaceH4/rlaif-v_formatted"
GUIDE_SPLITS = {"train": "train[:6%]", "eval": "test[:1%]"}
EVAL_SPLIT_NAMES = ("test", "validation", "valid", "eval", "dev")


def default_split(dataset: str, role: str) -> str:
    """The split `train` (role "train") or `eval` (role "eval") use when none is given.

    The guide's dataset keeps the guide's slices; a single data file is its one split, `train`; a saved dataset
    or folder gives its whole `train` split for training and its first held-out split (test, validation, ...) for
    evaluation; other Hub datasets `train` and `test`.
    """
    if dataset == GUIDE_DATASET:
        return GUIDE_SPLITS[role]
    path = Path(dataset).expanduser()
    if role == "train" or path.is_file():
        return "train"
    names = _saved_split_names(path) if path.is_dir() else []
    if names:
        held_out = [name for name in EVAL_SPLIT_NAMES if name in names]
        if not held_out:
            raise VlmprefError(f"{dataset} has no held-out split ({', '.join(names)}); name the split to evaluate "
                               "with --split, for example --split train.")
        return held_out[0]
    return "test"


def held_out_split(dataset: str) -> str | None:
    """The held-out split `eval` would use, or None when the data has none (a single file, a folder of train data)."""
    path = Path(dataset).expanduser()
    if path.is_file():
        return None
    try:
        return default_split(dataset, "eval")
    except VlmprefError:
        return None


def _saved_split_names(path: Path) -> list[str]:
    """Split names of a `save_to_disk` folder or a folder of data files, without loading any data."""
    if (path / "dataset_dict.json").is_file():
        return list(json.loads((path / "dataset_dict.json").read_text()).get("splits", []))
    if (path / "state.json").is_file():
        return ["train"]
    # datasets names a folder's files by the split word in their names, and calls anything else `train`
    stems = {f.stem.split("-")[0].lower() for f in path.rglob("*") if f.suffix.lower() in FILE_BUILDERS}
    named = sorted(stems & {"train", *EVAL_SPLIT_NAMES})
    return named or (["train"] if stems else [])


def split_name(split: str) -> str:
    """`train[:6%]` -> `train`."""
    return re.split(r"[\[+]", split, maxsplit=1)[0].strip()


def base_folder(dataset: str) -> Path | None:
    """The folder that relative image paths of a local dataset are read from; None for Hub datasets."""
    path = Path(dataset).expanduser()
    if path.is_file():
        return path.parent.resolve()
    if path.is_dir():
        return path.resolve()
    return None


def _select_split(ds: DatasetDict | Dataset, split: str, where: str) -> Dataset:
    from datasets import Dataset, DatasetDict, ReadInstruction

    if isinstance(ds, Dataset):
        ds = DatasetDict({"train": ds})
    name = split_name(split)
    if name not in ds:
        raise VlmprefError(f"Split '{name}' is not in {where}; available splits: {', '.join(ds)}.")
    try:
        instruction = ReadInstruction.from_spec(split)
        (absolute,) = instruction.to_absolute({name: len(ds[name])})
    except (ValueError, AssertionError) as exc:
        raise VlmprefError(f"Split '{split}' is not valid ({exc}); use the form train, train[:100] or train[:6%].") from None
    start = absolute.from_ or 0
    stop = len(ds[name]) if absolute.to is None else absolute.to
    part = ds[name]
    if stop <= start:
        raise VlmprefError(f"Split '{split}' selects no rows of {where} (its '{name}' split has {len(part)} rows); "
                           f"give a larger slice or the whole split, --split {name}.")
    return part if (start, stop) == (0, len(part)) else part.select(range(start, stop))


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _first_bad_line(path: Path) -> str | None:
    """Where a text data file stops being readable: the first line that is not UTF-8 (or not JSON)."""
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        return None
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"line {number} is not valid UTF-8 text (byte 0x{line[exc.start]:02x} at column "
                        f"{exc.start + 1}); re-save the file as UTF-8 or remove that line")
            if path.suffix.lower() == ".jsonl" and text.strip():
                try:
                    json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
                except json.JSONDecodeError as exc:
                    return f"line {number} is not valid JSON ({exc.msg}); fix or remove that line"
                except UnicodeEncodeError:
                    return (f"line {number} holds an escaped character that is not valid Unicode (a lone "
                            "surrogate such as \\ud800); fix or remove that line")
    if path.suffix.lower() == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            return f"it is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix it there"
    return None


def _load_files(path: Path, split: str, builder: str | None = None) -> Dataset:
    """`load_dataset` on one data file (with its builder) or a folder of them, with unreadable text explained."""
    import datasets
    import pyarrow as pa

    try:
        if builder is None:
            loaded = datasets.load_dataset(str(path), split=split)
        else:
            loaded = datasets.load_dataset(builder, data_files=str(path), split=split)
        # Arrow's JSON reader keeps invalid UTF-8 in string columns; it would fail later, row by row
        loaded.data.table.validate(full=True)
        return loaded
    except (UnicodeError, pa.ArrowInvalid, datasets.exceptions.DatasetGenerationError) as exc:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            problem = _first_bad_line(file) if file.is_file() else None
            if problem:
                raise VlmprefError(f"Cannot read dataset file {file}: {problem}.") from None
        cause = exc.__cause__ or exc
        raise VlmprefError(f"Cannot read dataset {path} ({type(cause).__name__}: {str(cause).splitlines()[0][:200]}); "
                           "check that it is valid JSON Lines, JSON, CSV or Parquet.") from None


def load_raw(dataset: str, split: str = "train") -> Dataset:
    """Open `dataset` (Hub id, folder or file) and return the requested split, unmodified."""
    import datasets

    path = Path(dataset).expanduser()
    try:
        if path.is_dir() and _is_saved_dataset(path):
            return _select_split(datasets.load_from_disk(str(path)), split, f"the saved dataset {path}")
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise VlmprefError(f"Cannot read {path}: use a .jsonl, .json, .parquet or .csv file, a folder "
                                   "written by save_to_disk, or a Hub dataset id.")
            if split_name(split) != "train":
                raise VlmprefError(f"A single file is one split called 'train'; use --split train (or a slice "
                                   f"such as train[:10%]) for {path}.")
            return _load_files(path, split, builder)
        if path.exists():
            return _load_files(path, split)
        if dataset.startswith((".", "/", "~")) or dataset.count("/") > 1 or path.suffix in FILE_BUILDERS:
            raise VlmprefError(f"Dataset path {dataset} does not exist; check the path given to --dataset.")
        return datasets.load_dataset(dataset, split=split)
    except VlmprefError:
        raise
    except datasets.exceptions.DatasetNotFoundError:
        raise VlmprefError(f"Dataset '{dataset}' is neither a local path nor a dataset on the Hugging Face Hub; "
                           "check the name, or log in with `hf auth login` if it is private.") from None
    except (ConnectionError, OSError) as exc:
        if "offline" in str(exc).lower() or "connect" in str(exc).lower() or "resolve" in str(exc).lower():
            raise VlmprefError(f"Dataset '{dataset}' is not a local path and the Hugging Face Hub cannot be "
                               "reached; check the path, or connect to the internet to download it.") from None
        raise
    except ValueError as exc:
        text = str(exc)
        if "corresponds to no data" in text:
            raise VlmprefError(f"Split '{split}' selects no rows of dataset '{dataset}'; give a larger slice or the "
                               f"whole split, --split {split_name(split)}.") from None
        if "split" in text.lower():
            raise VlmprefError(f"Split '{split}' does not fit dataset '{dataset}': {text.splitlines()[0]}") from None
        raise
