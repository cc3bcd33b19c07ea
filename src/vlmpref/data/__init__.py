"""Stage 1 of the pipeline: load, validate and normalize preference data.

    from vlmpref.data import load_preference_data
    data = load_preference_data("HuggingFaceH4/rlaif-v_formatted", split="train[:6%]")
    print(data.summary())          # "N rows used, M set aside (reasons ...)"
    data.dataset                   # images / prompt / chosen / rejected in one internal form
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from vlmpref.data.images import DEFAULT_MAX_PIXELS
from vlmpref.data.normalize import normalize
from vlmpref.data.sources import base_folder, load_raw

__all__ = ["PreferenceData", "load_preference_data", "default_num_proc"]


def default_num_proc() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


@dataclass
class PreferenceData:
    """Usable rows in the internal form, and the rows set aside with their reasons."""

    dataset: Dataset
    set_aside: Dataset  # columns: row_id, problem
    source: str
    split: str

    @property
    def total(self) -> int:
        return len(self.dataset) + len(self.set_aside)

    def reasons(self) -> collections.Counter:
        return collections.Counter(self.set_aside["problem"]) if len(self.set_aside) else collections.Counter()

    def summary(self) -> str:
        line = f"{len(self.dataset)} rows used, {len(self.set_aside)} set aside"
        if len(self.set_aside):
            top = "; ".join(f"{n} x {reason}" for reason, n in self.reasons().most_common(3))
            more = len(self.reasons()) - 3
            line += f" ({top}{f'; {more} more reasons' if more > 0 else ''})"
        return f"{self.source} [{self.split}]: {line}"

    def write_set_aside(self, path: str | Path) -> Path | None:
        """Write one JSON line per set-aside row (row_id, reason); nothing is dropped without a record."""
        if not len(self.set_aside):
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for row in self.set_aside:
                f.write(json.dumps({"source": self.source, "split": self.split, "row_id": row["row_id"],
                                    "reason": row["problem"]}) + "\n")
        return path


def load_preference_data(dataset: str, split: str = "train", num_proc: int | None = None,
                         allow_outside_paths: bool = False, max_image_pixels: int = DEFAULT_MAX_PIXELS,
                         ) -> PreferenceData:
    """Load `dataset` the way `vlmpref train` does: open, check every row, convert images to RGB."""
    raw = load_raw(dataset, split)
    usable, set_aside = normalize(raw, where=f"Dataset {dataset} [{split}]", base=base_folder(dataset),
                                  allow_outside_paths=allow_outside_paths, max_pixels=max_image_pixels,
                                  num_proc=default_num_proc() if num_proc is None else num_proc)
    return PreferenceData(dataset=usable, set_aside=set_aside, source=dataset, split=split)
