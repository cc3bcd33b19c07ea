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
import re
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from vlmpref.data.images import DEFAULT_MAX_PIXELS
from vlmpref.errors import VlmprefError

if TYPE_CHECKING:  # datasets loads with the data, so importing a config of this stage stays quick
    from datasets import Dataset

__all__ = ["PreferenceData", "load_preference_data", "default_num_proc"]


def default_num_proc() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def reason_kind(reason: str) -> str:
    """A reason without its particulars (paths, numbers), so that like problems are counted together."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'...'", reason))


@dataclass
class PreferenceData:
    """Usable rows in the internal form, and the rows set aside with their reasons."""

    dataset: Dataset
    set_aside: Dataset  # columns: row_id, problem
    source: str
    split: str
    kept_with_changes: collections.Counter = field(default_factory=collections.Counter)  # what -> rows

    @property
    def total(self) -> int:
        return len(self.dataset) + len(self.set_aside)

    def reasons(self) -> collections.Counter:
        """Set-aside rows by kind of problem."""
        if not len(self.set_aside):
            return collections.Counter()
        return collections.Counter(reason_kind(p) for p in self.set_aside["problem"])

    def summary(self) -> str:
        line = f"{len(self.dataset)} rows used"
        if self.kept_with_changes:
            line += " (" + "; ".join(f"{n} {what}" for what, n in self.kept_with_changes.most_common()) + ")"
        line += f", {len(self.set_aside)} set aside"
        if len(self.set_aside):
            line += f" ({self.top_reasons(3)})"
        return f"{self.source} [{self.split}]: {line}"

    def top_reasons(self, shown: int) -> str:
        """The `shown` most common kinds of problem with their counts, and how many other kinds there are."""
        reasons = self.reasons()
        top = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(shown))
        more = len(reasons) - shown
        return top + (f"; and {more} more kind{'s' if more > 1 else ''} of problem" if more > 0 else "")

    def set_aside_rows(self, problems: dict[int, str]) -> None:
        """Move the usable rows at these positions (position -> reason) to the set-aside rows."""
        if not problems:
            return
        from datasets import Dataset, concatenate_datasets

        row_ids = self.dataset["row_id"]
        moved = Dataset.from_dict({"row_id": [row_ids[i] for i in problems],
                                   "problem": list(problems.values())}, features=self.set_aside.features)
        self.dataset = self.dataset.select([i for i in range(len(self.dataset)) if i not in problems])
        self.set_aside = concatenate_datasets([self.set_aside, moved]).sort("row_id")

    def check_share(self, max_fraction: float, record: str | Path) -> None:
        """Stop when more than `max_fraction` of the rows were set aside (or none is usable)."""
        if not len(self.dataset):
            raise VlmprefError(f"No usable rows in {self.source} [{self.split}]; see {record} for the reason each "
                               "row was set aside.")
        share = len(self.set_aside) / max(1, self.total)
        if share > max_fraction:
            raise VlmprefError(f"{len(self.set_aside)} of {self.total} rows ({share:.0%}) of {self.source} "
                               f"[{self.split}] were set aside ({self.top_reasons(3)}), more than --max-set-aside-fraction "
                               f"{max_fraction:g} allows; fix the data (every reason is in {record}) or raise "
                               "--max-set-aside-fraction.")

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
                         keep_duplicates: bool = False) -> PreferenceData:
    """Load `dataset` the way `vlmpref train` does: open, check every row, convert images to RGB.

    Exact duplicate rows after the first are set aside ("duplicate of row N"), or kept and counted with
    `keep_duplicates=True`.
    """
    from vlmpref.data.normalize import normalize
    from vlmpref.data.sources import base_folder, load_raw

    raw = load_raw(dataset, split)
    usable, set_aside, kept = normalize(raw, where=f"Dataset {dataset} [{split}]", base=base_folder(dataset),
                                        allow_outside_paths=allow_outside_paths, max_pixels=max_image_pixels,
                                        num_proc=default_num_proc() if num_proc is None else num_proc,
                                        duplicates="keep" if keep_duplicates else "set_aside")
    changes = collections.Counter({"duplicates kept": kept} if kept else {})
    return PreferenceData(dataset=usable, set_aside=set_aside, source=dataset, split=split,
                          kept_with_changes=changes)
