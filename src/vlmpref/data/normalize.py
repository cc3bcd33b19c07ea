"""One internal form for preference rows, and a record of every row that cannot be used.

Internal form (TRL's conversational vision format, so the reference trainer reads it unchanged):

    images:   [PIL RGB image, ...]
    prompt:   [{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": question}]}, ...]
    chosen:   [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    rejected: [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    row_id:   index of the row in the loaded split
    ...       any other source columns (ground truth such as `objects`, `answer`), passed through

Accepted inputs: the chat-message format of `HuggingFaceH4/rlaif-v_formatted`, and plain strings
(`image` or `images`, `prompt` or `question`, `chosen`, `rejected`). A model family's literal image placeholder
in the text (`<image>`, Qwen's `<|vision_start|><|image_pad|><|vision_end|>`, Gemma 3's `<start_of_image>`,
InternVL's `<IMG_CONTEXT>`) becomes an image part where it stands, so it is counted against the row's images
and rendered by whichever model's chat template trains on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, List, Value

from vlmpref.data.images import DEFAULT_MAX_PIXELS, ImageProblem, load_rgb
from vlmpref.errors import VlmprefError

IMAGE_COLUMNS = ("images", "image")
PROMPT_COLUMNS = ("prompt", "question")
ANSWER_COLUMNS = ("chosen", "rejected")

_PART = {"type": Value("string"), "text": Value("string")}
_MESSAGES = List({"role": Value("string"), "content": List(_PART)})
OUTPUT_FEATURES = {"images": List(Image()), "prompt": _MESSAGES, "chosen": _MESSAGES, "rejected": _MESSAGES,
                   "row_id": Value("int64"), "problem": Value("string"), "content_key": Value("string")}
DUPLICATES = ("set_aside", "keep")


class RowProblem(ValueError):
    """A row that cannot be trained on; the message is the reason shown to the user."""


def find_columns(column_names: list[str], where: str) -> tuple[str | None, str, str, str]:
    """Pick the image, prompt, chosen and rejected columns, or say which are missing and what exists."""
    image = next((c for c in IMAGE_COLUMNS if c in column_names), None)
    prompt = next((c for c in PROMPT_COLUMNS if c in column_names), None)
    missing = [c for c in ANSWER_COLUMNS if c not in column_names]
    if prompt is None:
        missing.insert(0, "prompt (or question)")
    if missing:
        raise VlmprefError(f"{where} has no {' / '.join(missing)} column; its columns are "
                           f"{', '.join(column_names) or 'none'}. Rename the columns or convert the data.")
    return image, prompt, "chosen", "rejected"


def _text(value: Any, what: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:  # binary columns (parquet, save_to_disk) may hold text that was never decoded
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowProblem(f"{what} is bytes that are not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                             f"position {exc.start})") from None
    if not isinstance(value, str):
        raise RowProblem(f"{what} must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
        raise RowProblem(f"{what} holds characters that are not valid Unicode (lone surrogates)") from None
    if not value.strip():
        raise RowProblem(f"{what} is empty")
    return value


# Each family's literal image placeholder, as datasets written for that family carry it in the prompt text
IMAGE_PLACEHOLDER = re.compile("|".join(map(re.escape, [
    "<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>",  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL
    "<start_of_image>",                                              # Gemma 3
    "<img><IMG_CONTEXT></img>", "<IMG_CONTEXT>",                     # InternVL
    "<image>",                                                       # LLaVA, SmolVLM, InternVL's own chat format
])))


def _text_parts(text: str) -> list[dict]:
    """A text, with each literal image placeholder turned into an image part where it stands."""
    parts = []
    for i, piece in enumerate(IMAGE_PLACEHOLDER.split(text)):
        if i:
            parts.append({"type": "image", "text": None})
        if piece.strip():
            parts.append({"type": "text", "text": piece})
    return parts


def _content_parts(content: Any, what: str) -> list[dict]:
    if isinstance(content, str):
        return _text_parts(content)
    if not isinstance(content, list):
        raise RowProblem(f"{what} content must be text or a list of parts, not {type(content).__name__}")
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
            raise RowProblem(f"{what} has a content part that is not {{type: text|image}}")
        if part["type"] == "image":
            parts.append({"type": "image", "text": None})
        else:
            parts += _text_parts(_text(part.get("text"), f"{what} text"))
    return parts


def _messages(value: Any, what: str, default_role: str) -> list[dict]:
    """Chat messages in the typed-content form; a plain string becomes one message of `default_role`."""
    if isinstance(value, (bytes, bytearray)):
        value = _text(value, what)
    if isinstance(value, str):
        return [{"role": default_role, "content": _text_parts(_text(value, what))}]
    if not isinstance(value, list):
        raise RowProblem(f"{what} must be text or a list of messages, not {type(value).__name__}")
    if not value:
        raise RowProblem(f"{what} is an empty list of messages")
    out = []
    for message in value:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowProblem(f"{what} holds an entry that is not a {{role, content}} message")
        if message["role"] not in ("system", "user", "assistant"):
            raise RowProblem(f"{what} has an unknown role {message['role']!r}")
        out.append({"role": message["role"], "content": _content_parts(message["content"], what)})
    return out


def clean_messages(messages: list[dict]) -> list[dict]:
    """Drop the `text: None` Arrow stores in image parts; chat templates and TRL test for the keys."""
    return [{"role": m["role"], "content": [{k: v for k, v in p.items() if v is not None} for p in m["content"]]}
            if isinstance(m["content"], list) else dict(m) for m in messages]


def trl_example(row: dict) -> dict:
    """A fresh copy of a row in the shape TRL's collators and `apply_chat_template` expect (they edit in place)."""
    images = row.get("images")
    if images is None:  # TRL also accepts a single `image` column
        images = [row["image"]] if row.get("image") is not None else []
    return {"images": list(images), "prompt": clean_messages(row["prompt"]),
            "chosen": clean_messages(row["chosen"]), "rejected": clean_messages(row["rejected"])}


def _answer_text(messages: list[dict]) -> str:
    return "".join(p["text"] or "" for m in messages for p in m["content"] if p["type"] == "text")


def _count_images(messages: list[dict]) -> int:
    return sum(1 for m in messages for p in m["content"] if p["type"] == "image")


def content_key(row: dict) -> str:
    """Hash of what training sees (image pixels, prompt, answers): equal keys are duplicate rows."""
    digest = hashlib.sha1()
    for image in row["images"]:
        digest.update(f"{image.size}".encode())
        digest.update(image.tobytes())
    digest.update(json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True).encode())
    return digest.hexdigest()


def normalize_row(row: dict, columns: tuple, base: Path | None = None, allow_outside_paths: bool = False,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Return the internal form of `row`; raise RowProblem (or ImageProblem) with the reason it is unusable."""
    image_col, prompt_col, chosen_col, rejected_col = columns
    raw_images = row.get(image_col) if image_col else []
    if raw_images is None:
        raw_images = []
    if not isinstance(raw_images, list):
        raw_images = [raw_images]
    images = [load_rgb(v, base, allow_outside_paths, max_pixels) for v in raw_images]

    prompt = _messages(row[prompt_col], "prompt", "user")
    if prompt[-1]["role"] != "user":
        raise RowProblem("prompt must end with a user message")
    placeholders = _count_images(prompt)
    if placeholders == 0 and images:
        # Plain-string prompts carry no placeholders: images go first in the first user turn, as in TRL
        first_user = next(m for m in prompt if m["role"] == "user")
        first_user["content"] = [{"type": "image", "text": None} for _ in images] + first_user["content"]
    elif placeholders != len(images):
        raise RowProblem(f"prompt has {placeholders} image placeholder(s) but the row has {len(images)} image(s)")
    if not any(p["type"] == "text" for m in prompt for p in m["content"]):
        raise RowProblem("prompt has no text")

    chosen = _messages(row[chosen_col], "chosen", "assistant")
    rejected = _messages(row[rejected_col], "rejected", "assistant")
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if any(m["role"] != "assistant" for m in answer):
            raise RowProblem(f"{name} must hold assistant messages only")
        if _count_images(answer):
            raise RowProblem(f"{name} must not contain images")
    if _answer_text(chosen).strip() == _answer_text(rejected).strip():
        raise RowProblem("chosen and rejected are identical")
    return {"images": images, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _normalize_batch(batch: dict, indices: list[int], columns: tuple, base: Path | None,
                     allow_outside_paths: bool, max_pixels: int) -> dict:
    keys = list(batch)
    out: dict[str, list] = {k: [] for k in ("images", "prompt", "chosen", "rejected", "row_id", "problem",
                                             "content_key")}
    for i, index in enumerate(indices):
        row = {k: batch[k][i] for k in keys}
        try:
            norm = normalize_row(row, columns, base, allow_outside_paths, max_pixels)
            problem, key = "", content_key(norm)
        except (RowProblem, ImageProblem) as exc:
            norm = {"images": [], "prompt": [], "chosen": [], "rejected": []}
            problem, key = str(exc), ""
        for k, v in norm.items():
            out[k].append(v)
        out["row_id"].append(index)
        out["problem"].append(problem)
        out["content_key"].append(key)
    return out


def _undecoded(dataset: Dataset, image_col: str | None) -> Dataset:
    """Keep images as bytes/paths so a corrupt file becomes a reported row, not a crash inside `datasets`."""
    if image_col is None:
        return dataset
    feature = dataset.features[image_col]
    if isinstance(feature, Image):
        return dataset.cast_column(image_col, Image(decode=False))
    if isinstance(feature, List) and isinstance(feature.feature, Image):
        return dataset.cast_column(image_col, List(Image(decode=False)))
    return dataset


def _duplicates(keys: list[str], problems: list[str]) -> dict[int, int]:
    """Row index -> index of the first row with the same content, for every later copy of a usable row."""
    first: dict[str, int] = {}
    copies = {}
    for index, (key, problem) in enumerate(zip(keys, problems)):
        if problem:
            continue
        if key in first:
            copies[index] = first[key]
        else:
            first[key] = index
    return copies


def normalize(dataset: Dataset, where: str, base: Path | None = None, allow_outside_paths: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, num_proc: int | None = None,
              duplicates: str = "set_aside") -> tuple[Dataset, Dataset, int]:
    """Normalize every row in a (multi-process) map.

    Returns (usable rows, set-aside rows with `row_id` and `problem`, number of duplicate rows kept). Exact
    duplicates (same image pixels, prompt and answers) after the first are set aside, or kept with
    `duplicates="keep"`; either way they are counted.
    """
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {DUPLICATES}, not {duplicates!r}")
    columns = find_columns(dataset.column_names, where)
    dataset = _undecoded(dataset, columns[0])
    consumed = [c for c in columns if c is not None]
    for name in ("row_id", "problem", "content_key"):  # ours; a source column of that name would be overwritten
        if name in dataset.column_names and name not in consumed:
            consumed.append(name)
    passthrough = {k: v for k, v in dataset.features.items() if k not in consumed}
    features = Features({**OUTPUT_FEATURES, **passthrough})
    if num_proc is not None and num_proc > 1 and len(dataset) < 64 * num_proc:
        num_proc = None  # starting worker processes costs more than it saves on small data
    try:
        mapped = dataset.map(
            _normalize_batch, batched=True, batch_size=64, with_indices=True, remove_columns=consumed,
            features=features, num_proc=num_proc, desc="Checking and converting rows to RGB",
            fn_kwargs=dict(columns=columns, base=base, allow_outside_paths=allow_outside_paths,
                           max_pixels=max_pixels))
    except (TypeError, ValueError) as exc:
        # Extra columns are carried along as Arrow stores them; a few shapes do not survive the trip back
        # (struct keys with control characters, say). Our own columns are built to fit OUTPUT_FEATURES.
        if not passthrough or "cast" not in str(exc).lower():
            raise
        raise VlmprefError(f"{where}: its extra column(s) {', '.join(passthrough)} cannot be carried along as stored "
                           f"({str(exc).splitlines()[0]}); remove those columns or give each a plain type.") from None
    copies = _duplicates(mapped["content_key"], mapped["problem"])
    dropped = set(copies) if duplicates == "set_aside" else set()
    # filter() only writes an index mapping, so the images are not copied again
    usable = mapped.filter(lambda p, i: not p and i not in dropped, input_columns="problem", with_indices=True,
                           desc="Keeping usable rows")
    problems = mapped.filter(lambda p: bool(p), input_columns="problem", desc="Collecting set-aside rows")
    set_aside = sorted(zip(problems["row_id"], problems["problem"]))
    if dropped:
        row_ids = mapped["row_id"]
        set_aside = sorted(set_aside + [(row_ids[i], f"duplicate of row {row_ids[copies[i]]}") for i in dropped])
    set_aside = Dataset.from_dict({"row_id": [r for r, _ in set_aside], "problem": [p for _, p in set_aside]},
                                  features=Features({"row_id": Value("int64"), "problem": Value("string")}))
    return usable.remove_columns(["problem", "content_key"]), set_aside, 0 if dropped else len(copies)
