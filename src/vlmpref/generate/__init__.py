"""Stage 4 of the pipeline: answer questions about images with a base model and an optional adapter.

    vlmpref generate --model runs/tiny --image cat.png --prompt "What is in the image?"
    vlmpref generate --adapter runs/dpo --image cat.png --prompt "What is in the image?"   # base from the run
    vlmpref generate --model runs/tiny --adapter runs/dpo --dataset runs/shapes --split test \
        --output-dir runs/answers          # writes runs/answers/generations.jsonl
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from vlmpref.config import Quantization
from vlmpref.errors import VlmprefError

__all__ = ["GenerateConfig", "generate_batch", "generate_rows", "model_dtype", "prompt_text", "run_generate",
           "user_prompt", "answer_text", "question_text"]
_FROM_ANSWER = ("generate_batch", "generate_rows", "model_dtype", "prompt_text", "user_prompt")


def __getattr__(name: str):
    # answer.py needs torch: loaded on first use, so reading GenerateConfig for `--help` stays quick
    if name in _FROM_ANSWER:
        from vlmpref.generate import answer

        return getattr(answer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class GenerateConfig:
    """Options of `vlmpref generate`."""

    model: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "Base model: Hub id or local folder; auto takes the one the --adapter was trained on."})
    adapter: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "PEFT adapter folder to apply (from vlmpref train, or a checkpoint folder inside it)."})
    image: Optional[list[str]] = field(default=None, metadata={"path": "in", "help": "Image file(s) to ask about."})
    prompt: Optional[str] = field(default=None, metadata={"help": "The question to ask about --image."})
    dataset: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "Answer every row of this dataset split instead (Hub id, folder or file)."})
    split: str = field(default="test", metadata={"help": "Split of --dataset, slicing allowed (test[:100])."})
    output_dir: Optional[str] = field(default=None, metadata={"path": "out", 
        "help": "Folder for generations.jsonl when answering a dataset."})
    config: Optional[str] = field(default=None, metadata={"path": "in", "help": "YAML file with these options; flags override it."})
    quantization: Optional[Quantization] = field(default=None, metadata={
        "help": "Load the base as none, 8bit or 4bit; auto uses the adapter's training setting, else none."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest answer, in tokens."})
    batch_size: int = field(default=16, metadata={"help": "Rows answered together."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do-sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (with --do-sample)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code to run."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights, which can run code."})

    def __post_init__(self):
        if not self.model and not self.adapter:
            raise VlmprefError("No model given; pass --model with a Hub id or a local folder, or --adapter with a "
                               "folder written by vlmpref train.")
        if self.dataset is None and (not self.image or self.prompt is None):
            raise VlmprefError("Nothing to answer; pass --image and --prompt, or --dataset to answer a whole split.")
        if self.dataset is not None and self.output_dir is None:
            raise VlmprefError("Answering a dataset needs --output-dir for generations.jsonl.")
        if self.max_new_tokens <= 0 or self.batch_size <= 0:
            raise VlmprefError("--max-new-tokens and --batch-size must be positive.")


def question_text(prompt: list[dict]) -> str:
    """The text of the last user turn."""
    return " ".join(p["text"] for p in prompt[-1]["content"] if p["type"] == "text" and p.get("text"))


def answer_text(messages: list[dict]) -> str:
    return " ".join(p["text"] for m in messages for p in m["content"] if p["type"] == "text" and p.get("text"))


def load_images(paths: list[str], flag: str = "--image") -> list:
    """Images named on the command line, read relative to the current folder, in RGB; one-line errors."""
    from vlmpref.data.images import ImageProblem, load_rgb

    try:
        return [load_rgb(path, base=Path.cwd(), allow_outside=True) for path in paths]
    except ImageProblem as exc:
        raise VlmprefError(f"Cannot use {flag}: {exc}.") from None


def run_generate(cfg: GenerateConfig) -> list[str] | Path:
    """Answer one question (returns the answer list) or a dataset split (returns the jsonl path)."""
    from vlmpref.generate.answer import generate_batch, generate_rows, user_prompt
    from vlmpref.models.inference import load_for_inference

    images = load_images(cfg.image) if cfg.dataset is None else None  # a bad path fails before the model loads
    loaded = load_for_inference(cfg.model, cfg.adapter, cfg.quantization, trust_remote_code=cfg.trust_remote_code,
                                allow_pickle=cfg.allow_pickle)
    model, processor = loaded.model, loaded.processor
    gen = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
               top_p=cfg.top_p)
    if cfg.dataset is None:
        return generate_batch(model, processor, [user_prompt(cfg.prompt, len(images))], [images], **gen)

    from vlmpref.data import load_preference_data

    data = load_preference_data(cfg.dataset, cfg.split)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data.write_set_aside(out_dir / "rejected_rows.jsonl")
    print(data.summary())
    path = out_dir / "generations.jsonl"
    rows = data.dataset
    extra = [c for c in rows.column_names if c not in ("images", "prompt", "chosen", "rejected")]
    answers = generate_rows(model, processor, rows, batch_size=cfg.batch_size, **gen)  # with a progress bar
    with path.open("w") as f:
        for row, answer in zip(rows, answers):
            record = {"question": question_text(row["prompt"]), "generated": answer,
                      "chosen": answer_text(row["chosen"]), "rejected": answer_text(row["rejected"])}
            record.update({c: row[c] for c in extra})
            f.write(json.dumps(record) + "\n")
    return path
