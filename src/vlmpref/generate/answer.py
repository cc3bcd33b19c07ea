"""Answer questions about images, the way the guide does inference.

`processor.apply_chat_template(prompt, add_generation_prompt=True)`, then `processor(text=..., images=...)`,
`model.generate`, and decoding only the new tokens. Batched with left padding.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from PIL import Image

from vlmpref.data.normalize import clean_messages


def model_dtype(model) -> torch.dtype:
    """The dtype activations should enter in (the input embeddings', which 4-bit leaves unquantized)."""
    return model.get_input_embeddings().weight.dtype


def model_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def user_prompt(question: str, n_images: int = 1) -> list[dict]:
    """A one-turn chat prompt: the images first, then the question (SmolVLM's layout)."""
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}]}]


def prompt_text(processor, prompt: list[dict]) -> str:
    return processor.apply_chat_template(clean_messages(prompt), add_generation_prompt=True)


def processor_inputs(processor, prompts: list[list[dict]], images: list[list[Image.Image]]):
    texts = [prompt_text(processor, p) for p in prompts]
    has_images = any(len(i) for i in images)
    return processor(text=texts, images=images if has_images else None, padding=True, padding_side="left",
                     return_tensors="pt")


@torch.no_grad()
def generate_batch(model, processor, prompts: list[list[dict]], images: list[list[Image.Image]],
                   max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                   top_p: float = 1.0) -> list[str]:
    """Answers for one batch of (chat prompt, images) pairs."""
    inputs = processor_inputs(processor, prompts, images)
    inputs = inputs.to(model_device(model))
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model_dtype(model))
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    tokenizer = processor.tokenizer
    output = model.generate(**inputs, **kwargs, pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_rows(model, processor, rows: Iterable[dict], batch_size: int = 16, progress: str | None = "Generating",
                  **kwargs) -> Iterator[str]:
    """Answers for rows in the internal form (`images`, `prompt`), in order, `batch_size` at a time.

    A progress bar with the time left (label `progress`, None for none) counts the rows."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    batch: list[dict] = []
    total = len(rows) if hasattr(rows, "__len__") else None
    bar = tqdm(total=total, desc=progress, unit="row", leave=False, disable=progress is None)
    try:
        for row in rows:
            batch.append(row)
            if len(batch) == batch_size:
                yield from generate_batch(model, processor, [r["prompt"] for r in batch],
                                          [r["images"] for r in batch], **kwargs)
                bar.update(len(batch))
                batch = []
        if batch:
            yield from generate_batch(model, processor, [r["prompt"] for r in batch], [r["images"] for r in batch],
                                      **kwargs)
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
