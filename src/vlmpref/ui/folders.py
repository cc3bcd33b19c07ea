"""The folders the web UI may open: those given with `vlmpref ui --run`, and nothing outside them.

Every path the UI reads or writes goes through `Folders.readable` / `Folders.writable`: it is resolved (`..`
and symlinks followed) and refused unless it lies inside one of the folders given on the command line. The
model shipped with vlmpref (the demo base) may also be read. The pickers list what is found inside.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vlmpref.errors import VlmprefError

# Folders never searched: image dumps, caches, TensorBoard event folders, checkpoint staging
_SKIP = {"images", "image_features", ".checkpoint-staging", "__pycache__", ".git", "node_modules", ".venv"}
# Files of vlmpref's own outputs that hold no preference rows
_NOT_DATA = {"samples.jsonl", "pope.jsonl", "rejected_rows.jsonl", "rejected_rows_eval.jsonl", "eval_log.jsonl",
             "train_log.jsonl", "generations.jsonl"}
_DATA_SUFFIXES = (".jsonl", ".parquet", ".csv")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass
class Found:
    """What a search of the folders found, by kind (absolute paths)."""

    adapters: list[Path] = field(default_factory=list)  # adapter_config.json: finished runs and checkpoints
    runs: list[Path] = field(default_factory=list)  # vlmpref_config.yaml: training runs, finished or not
    evals: list[Path] = field(default_factory=list)  # metrics.json + samples.jsonl: `vlmpref eval` folders
    datasets: list[Path] = field(default_factory=list)  # save_to_disk folders and .jsonl/.parquet/.csv files
    models: list[Path] = field(default_factory=list)  # config.json + safetensors weights, no adapter
    configs: list[Path] = field(default_factory=list)  # .yaml files


class Folders:
    """The allowed folders, path checks, and a bounded search for runs, evaluations, datasets and models."""

    def __init__(self, roots: list[str | Path], read_only: list[str | Path] = (), max_depth: int = 5,
                 max_entries: int = 50_000):
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        self.read_only = [Path(r).expanduser().resolve() for r in read_only]
        self.max_depth, self.max_entries = max_depth, max_entries
        for root in self.roots:
            if not root.is_dir():
                raise VlmprefError(f"--run {root} is not a folder; give folders written by vlmpref (or parents of "
                                   "several), for example runs/demo.")

    def describe(self) -> str:
        return ", ".join(self.show(r) for r in self.roots)

    @staticmethod
    def show(path: str | Path) -> str:
        """A path as the user knows it: relative to the working folder when inside it."""
        path = Path(path)
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def _inside(self, path: Path, places: list[Path]) -> bool:
        return any(path == p or path.is_relative_to(p) for p in places)

    def _resolve(self, text: str | Path, what: str) -> Path:
        if not str(text).strip():
            raise VlmprefError(f"No {what} given; pick one from the list.")
        path = Path(str(text).strip()).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        return path.resolve()  # `..` and symlinks: a link inside a folder may point outside it

    def readable(self, text: str | Path, what: str = "path") -> Path:
        """`text` as an absolute path inside the allowed folders (or vlmpref's shipped model), else an error."""
        path = self._resolve(text, what)
        if not self._inside(path, self.roots + self.read_only):
            raise VlmprefError(f"The {what} {text} is outside the folders this UI may open ({self.describe()}); "
                               "restart vlmpref ui with --run naming a folder that holds it.")
        if not path.exists():
            raise VlmprefError(f"The {what} {text} does not exist; pick one from the list.")
        return path

    def writable(self, text: str | Path, what: str = "output folder") -> Path:
        """`text` as an absolute path inside the allowed folders (need not exist yet), else an error."""
        path = self._resolve(text, what)
        if not self._inside(path, self.roots):
            raise VlmprefError(f"The {what} {text} is outside the folders this UI may write to ({self.describe()}); "
                               "choose a folder inside them.")
        return path

    def model_or_hub(self, text: str, what: str) -> str:
        """A local model or dataset (checked like any path) or a Hub id such as HuggingFaceTB/SmolVLM-Instruct."""
        text = str(text).strip()
        looks_local = text.startswith((".", "/", "~")) or Path(text).expanduser().exists() or text.count("/") > 1
        if looks_local or not _HUB_ID.match(text):
            return str(self.readable(text, what))
        return text

    # ---- search

    def search(self) -> Found:
        """Walk the allowed folders (bounded depth and size) and sort what is there by kind."""
        found = Found()
        budget = [self.max_entries]
        for root in self.roots:
            self._walk(root, 0, found, budget)
        for name in vars(found):
            setattr(found, name, sorted(set(getattr(found, name))))
        return found

    def _walk(self, folder: Path, depth: int, found: Found, budget: list[int]) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        budget[0] -= len(entries)
        names = {e.name for e in entries}
        if "adapter_config.json" in names:
            found.adapters.append(folder)
        if "vlmpref_config.yaml" in names:
            found.runs.append(folder)
        if {"metrics.json", "samples.jsonl"} <= names:
            found.evals.append(folder)
        if "config.json" in names and "adapter_config.json" not in names and any(
                n.endswith(".safetensors") for n in names):
            found.models.append(folder)
        if "dataset_dict.json" in names or ("state.json" in names and "dataset_info.json" in names):
            found.datasets.append(folder)
            return  # Arrow shards inside, nothing else
        for entry in entries:
            if entry.is_file() and entry.name not in _NOT_DATA:
                if entry.name.endswith(_DATA_SUFFIXES):
                    found.datasets.append(Path(entry.path))
                elif entry.name.endswith((".yaml", ".yml")):
                    found.configs.append(Path(entry.path))
        if depth >= self.max_depth or budget[0] <= 0:
            return
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and entry.name not in _SKIP and not entry.name.startswith("."):
                if entry.name == "runs" and (folder / "vlmpref_config.yaml").is_file():
                    continue  # a run's TensorBoard events
                self._walk(Path(entry.path), depth + 1, found, budget)

    def eval_pairs(self, found: Found) -> list[tuple[Path, Path]]:
        """(before, after) evaluation folders that belong together: eval_before/ and eval_after/ side by side."""
        evals = set(found.evals)
        return [(e, e.parent / "eval_after") for e in found.evals
                if e.name == "eval_before" and e.parent / "eval_after" in evals]
