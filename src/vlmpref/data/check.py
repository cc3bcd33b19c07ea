"""`vlmpref data check`: load a dataset exactly as `train` would and report what is in it.

    vlmpref data check --dataset HuggingFaceH4/rlaif-v_formatted --split "train[:1%]" --model HuggingFaceTB/SmolVLM-Instruct
    vlmpref data check --dataset runs/demo/data --split test
    vlmpref data check --dataset data/prefs.jsonl --model runs/tiny --max-length 512 --truncation skip

Reports rows used and set aside (each with its reason), columns, image sizes and modes as stored, and,
with --model, token lengths of prompts, image tokens and answers as the model's processor counts them.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

from vlmpref.data.images import DEFAULT_MAX_PIXELS
from vlmpref.errors import VlmprefError


@dataclass
class DataCheckConfig:
    """Options of `vlmpref data check`."""

    dataset: str = field(default="", metadata={"path": "in", "help": "Hub id, save_to_disk folder, folder of files, or a file."})
    split: Optional[str] = field(default=None, metadata={
        "help": "Split, slicing allowed (train[:6%]); auto: the split `vlmpref train` would use."})
    model: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "Model whose processor counts tokens (prompt, image, answers); without it tokens are not counted."})
    token_rows: int = field(default=200, metadata={"help": "Rows sampled for the token counts."})
    output_dir: Optional[str] = field(default=None, metadata={"path": "out", 
        "help": "Also write data_check.json and rejected_rows.jsonl here."})
    config: Optional[str] = field(default=None, metadata={"path": "in", "help": "YAML file with these options; flags override it."})
    dataset_num_proc: Optional[int] = field(default=None, metadata={
        "help": "Processes for checking rows and RGB conversion, as in train; auto uses up to 8 CPU cores."})
    max_length: Optional[int] = field(default=None, metadata={
        "help": "Apply train's --max-length to the pairs (needs --model): rows that cannot fit are listed, cut "
                "answers counted; auto keeps everything."})
    truncation: Literal["answer", "skip"] = field(default="answer", metadata={
        "help": "Pairs over --max-length, as in train: answer keeps the row with the answer cut; skip sets it aside."})
    allow_outside_paths: bool = field(default=False, metadata={
        "help": "Allow image paths to point outside the dataset's folder."})
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "Refuse images with more pixels."})
    keep_duplicates: bool = field(default=False, metadata={
        "help": "Count exact duplicate rows as usable, as `train --keep-duplicates` does; by default every copy "
                "after the first is set aside."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own processor code to run."})

    def __post_init__(self):
        if not self.dataset:
            raise VlmprefError("No dataset given; pass --dataset with a Hub id, a folder or a file.")
        if self.max_length is not None and self.max_length <= 0:
            raise VlmprefError(f"--max-length must be positive, not {self.max_length}.")
        if self.max_length is not None and not self.model:
            raise VlmprefError("--max-length counts tokens with a model's processor; add --model (the model you will "
                               "train).")
        if self.max_length is None and self.truncation != "answer":
            raise VlmprefError("--truncation says what to do with pairs over --max-length, which is not set; give "
                               "--max-length or remove --truncation.")
        if self.split is None:
            from vlmpref.data.sources import default_split

            self.split = default_split(self.dataset, "train")


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "mean": round(statistics.fmean(values), 1)}


def _stored_image_stats(raw, image_col: str | None, base: Path | None, limit: int = 2000) -> dict:
    """Sizes and modes as stored (before RGB conversion), from image headers only."""
    from PIL import Image

    from vlmpref.data.images import ImageProblem, _open
    from vlmpref.data.normalize import _undecoded

    if image_col is None:
        return {}
    column = _undecoded(raw, image_col)
    modes, widths, heights, per_row = Counter(), [], [], []
    for value in column.select(range(min(limit, len(raw))))[image_col]:
        values = value if isinstance(value, list) else [value]
        per_row.append(len(values))
        for v in values:
            try:
                image = v if isinstance(v, Image.Image) else _open(v, base, allow_outside=True)
                modes[image.mode] += 1
                widths.append(image.size[0])
                heights.append(image.size[1])
            except (ImageProblem, OSError, ValueError):
                modes["unreadable"] += 1
    return {"rows_sampled": len(per_row), "images_per_row": _spread(per_row), "width": _spread(widths),
            "height": _spread(heights), "modes": dict(modes)}


def token_stats(processor, rows, limit: int) -> dict:
    """Token counts per row the way TRL's collator builds them (prompt with image tokens, then answers)."""
    from trl.data_utils import apply_chat_template

    from vlmpref.data.normalize import trl_example

    # the token each image feature fills: the tokenizer's image token where it names one (Gemma 3's processor
    # calls its <start_of_image> marker the image token), else the processor's
    image_token_id = (getattr(processor.tokenizer, "image_token_id", None)
                      or getattr(processor, "image_token_id", None))
    prompt_len, image_len, chosen_len, rejected_len = [], [], [], []
    for row in map(trl_example, rows.select(range(min(limit, len(rows))))):
        texts = apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, processor)
        prompt = processor(images=[row["images"]] if row["images"] else None, text=[texts["prompt"]],
                           add_special_tokens=False)
        ids = prompt["input_ids"][0]
        prompt_len.append(len(ids))
        if image_token_id is not None:
            image_len.append(sum(1 for t in ids if t == image_token_id))
        tok = processor.tokenizer
        chosen_len.append(len(tok(texts["chosen"], add_special_tokens=False)["input_ids"]))
        rejected_len.append(len(tok(texts["rejected"], add_special_tokens=False)["input_ids"]))
    return {"rows_sampled": len(prompt_len), "prompt_tokens": _spread(prompt_len), "image_tokens": _spread(image_len),
            "chosen_tokens": _spread(chosen_len), "rejected_tokens": _spread(rejected_len),
            "pair_tokens_trl": _spread([2 * p + c + r for p, c, r in zip(prompt_len, chosen_len, rejected_len)])}


def run_check(cfg: DataCheckConfig, processor=None, length_policy: Callable | None = None) -> dict:
    """The report as a dict; `processor` (the --model's, loaded by the caller) adds token counts, and
    `length_policy(data)` (train's --max-length policy, given by the caller) sets aside the pairs it would."""
    from vlmpref.data import load_preference_data
    from vlmpref.data.normalize import find_columns
    from vlmpref.data.sources import base_folder, load_raw

    data = load_preference_data(cfg.dataset, cfg.split, num_proc=cfg.dataset_num_proc,
                                allow_outside_paths=cfg.allow_outside_paths, max_image_pixels=cfg.max_image_pixels,
                                keep_duplicates=cfg.keep_duplicates)
    if length_policy is not None and len(data.dataset):
        length_policy(data)
    raw = load_raw(cfg.dataset, cfg.split)
    image_col = find_columns(raw.column_names, cfg.dataset)[0]
    report = {
        "dataset": cfg.dataset, "split": cfg.split, "rows": data.total, "rows_used": len(data.dataset),
        "rows_set_aside": len(data.set_aside), "set_aside_reasons": dict(data.reasons()),
        "rows_kept_with_changes": dict(data.kept_with_changes),
        "columns": {name: str(feature) for name, feature in raw.features.items()},
        "images": _stored_image_stats(raw, image_col, base_folder(cfg.dataset)),
        "problem_rows": [{"row_id": r["row_id"], "reason": r["problem"]} for r in data.set_aside],
    }
    if processor is not None and len(data.dataset):
        report["tokens"] = token_stats(processor, data.dataset, cfg.token_rows)
    if cfg.output_dir:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "data_check.json").write_text(json.dumps(report, indent=2))
        data.write_set_aside(out / "rejected_rows.jsonl")
    return report
