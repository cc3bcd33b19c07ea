"""Will the run fit the GPU? Checked before the model is loaded, and explained again after an out-of-memory.

The estimate is `vlmpref estimate`'s (plan/estimate.py), fed with this run's settings and what the data
holds: the largest image and the longest answer of a sample of rows. When the free memory is too small the
run stops before loading anything, with the estimate and the changes that would make it fit, each with its
own estimate (4-bit weights, adapters on the language model only, smaller images, shorter answers, a
smaller batch, gradient checkpointing, the preset that fits).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from vlmpref.errors import VlmprefError
from vlmpref.plan.estimate import GIB, Estimate, RunSettings, estimate, run_settings
from vlmpref.plan.gpus import Gpu, generic_gpu
from vlmpref.plan.presets import preset_that_fits
from vlmpref.plan.shapes import ModelShape, describe_model, image_tokens

SAMPLE_ROWS = 64


def data_settings(cfg, rows, processor) -> RunSettings:
    """The run's settings (`cfg`: a TrainConfig), with image size and token counts from a sample of the rows."""
    return measured_settings(run_settings(cfg), rows, processor, cfg.max_length,
                             lambda: describe_model(cfg.model, cfg.trust_remote_code))


def measured_settings(settings: RunSettings, rows, processor, max_length: int | None, shape) -> RunSettings:
    """`settings` with the largest image and the longest prompt and answer of a sample of `rows` (TRL's or
    vlmpref's row format); `shape` is the ModelShape, or a function giving it, for answers cut at `max_length`."""
    from vlmpref.data.normalize import trl_example

    sample = [trl_example(row) for row in rows.select(range(min(SAMPLE_ROWS, len(rows))))] if len(rows) else []
    sizes = [image.size for row in sample for image in row["images"]]
    tokenizer = processor.tokenizer

    def tokens(messages):
        return len(tokenizer("".join(p["text"] or "" for m in messages for p in m["content"]
                                     if p["type"] == "text"), add_special_tokens=False)["input_ids"])

    answers = [max(tokens(row["chosen"]), tokens(row["rejected"])) for row in sample]
    prompts = [tokens(row["prompt"]) + 10 for row in sample]  # + the chat markup
    changes = {}
    if sizes:
        changes["image_width"], changes["image_height"] = max(sizes, key=lambda s: s[0] * s[1])
    if answers:
        changes["answer_tokens"] = max(1, max(answers))
        changes["prompt_tokens"] = max(prompts)
    settings = dataclasses.replace(settings, **changes)
    if max_length:  # answers are cut at max_length
        shape = shape() if callable(shape) else shape
        image = 0 if not sizes else image_tokens(shape, settings.image_width, settings.image_height,
                                                 settings.image_longest_edge,
                                                 getattr(processor, "image_processor", None)).tokens
        room = max(1, max_length - settings.prompt_tokens - image)
        settings = dataclasses.replace(settings, answer_tokens=min(settings.answer_tokens, room))
    return settings


def memory_budget(device: torch.device, cap_gib: float | None = None) -> tuple[float, str]:
    """(GiB this process may still use on `device`, what limits it): the free memory, or less under a cap.

    Memory this process's PyTorch already holds counts as available: planning may happen after the model
    is loaded, and the estimate includes the weights."""
    free, total = torch.cuda.mem_get_info(device)
    available = (free + torch.cuda.memory_reserved(device)) / GIB
    name = torch.cuda.get_device_properties(device).name
    if cap_gib is not None and cap_gib < available:
        return cap_gib, f"{name} (capped at {cap_gib:g} GiB)"
    return available, name


def _needed(est: Estimate) -> float:
    """GiB the run needs beyond what is in use now (this process's CUDA context is already counted as used)."""
    return est.memory.reserved_gib


def ways_to_fit(shape: ModelShape, settings: RunSettings, gpu: Gpu, available_gib: float) -> list[str]:
    """Changes of one option each, with the memory they would need; those that fit first."""
    options: list[tuple[str, RunSettings]] = []
    if settings.quantization != "4bit":
        options.append(("--quantization 4bit", dataclasses.replace(settings, quantization="4bit")))
    if settings.lora_scope == "all":
        options.append(("--lora-scope language", dataclasses.replace(settings, lora_scope="language")))
    for edge in _smaller_edges(shape, settings):
        options.append((f"--image-longest-edge {edge}", dataclasses.replace(settings, image_longest_edge=edge)))
    if settings.answer_tokens > 128:
        image = image_tokens(shape, settings.image_width, settings.image_height, settings.image_longest_edge)
        options.append((f"--max-length {settings.prompt_tokens + image.tokens + 128} (answers cut to 128 tokens)",
                        dataclasses.replace(settings, answer_tokens=128)))
    if settings.pairs_in_forward > 1:
        flag = "--pairs-per-forward 1" if settings.engine == "fast" else "--per-device-train-batch-size 1"
        options.append((flag, dataclasses.replace(settings, per_device_train_batch_size=1, pairs_per_forward=1)))
    if not settings.gradient_checkpointing:
        options.append(("--gradient-checkpointing", dataclasses.replace(settings, gradient_checkpointing=True)))
    lines = []
    for flag, changed in options:
        need = _needed(estimate(shape, changed, gpu))
        lines.append((need > available_gib, need, f"{flag}: {need:.1f} GiB{' (fits)' if need <= available_gib else ''}"))
    preset = preset_that_fits(shape, settings, gpu, available_gib)
    if preset:
        lines.append((False, 0.0, f"--preset {preset[0]}: {_needed(preset[1]):.1f} GiB (fits)"))
    return [text for _, _, text in sorted(lines, key=lambda x: (x[0], x[1]))]


def _smaller_edges(shape: ModelShape, settings: RunSettings) -> list[int]:
    """--image-longest-edge values that give this family's images fewer tokens than the current setting."""
    if shape.architecture in ("idefics3", "internvl") and shape.image_splitting:
        edges = [shape.tile * 2, shape.tile]  # 2 x 2 tiles, one tile
        current = settings.image_longest_edge or (shape.longest_edge if shape.architecture == "idefics3"
                                                  else shape.tile * int(shape.max_tiles**0.5))
    elif shape.architecture == "qwen":  # a pixel budget of edge x edge
        edges, current = [1024, 768, 512], settings.image_longest_edge or int(shape.max_pixels**0.5)
    else:
        return []
    return [edge for edge in edges if edge < current]


def _estimate_line(est: Estimate) -> str:
    parts = ", ".join(f"{name} {gib:.1f}" for name, gib in est.memory.rows()[:-1] if gib >= 0.05)
    return f"about {_needed(est):.1f} GiB ({parts})"


def check_memory(cfg, rows, processor, device: torch.device) -> Estimate | None:
    """Before loading the model on a GPU: stop with the estimate and ways to fit if free memory is too small."""
    if device.type != "cuda" or not cfg.memory_check:
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    available, where = memory_budget(device, cfg.max_gpu_memory)
    shape = describe_model(cfg.model, cfg.trust_remote_code)
    settings = data_settings(cfg, rows, processor)
    if cfg.engine == "fast" and cfg.pairs_per_forward == "auto":  # auto packs within what is free; 1 pair must fit
        settings = dataclasses.replace(settings, pairs_per_forward=1)
    gpu = generic_gpu(total / GIB)
    est = estimate(shape, settings, gpu)
    if _needed(est) <= available:
        return est
    ways = ways_to_fit(shape, settings, gpu, available)
    raise VlmprefError(
        f"This run needs {_estimate_line(est)} of GPU memory, but only {available:.1f} of {total / GIB:.1f} GiB are "
        f"free on {where}; to fit, change one of: {'; '.join(ways) or 'no single option fits, use a smaller model'} "
        "(or pass --no-memory-check to try anyway).")


def out_of_memory_error(cfg, rows, processor, device: torch.device, step: int, checkpoint: Path | None,
                        output_dir: Path) -> VlmprefError:
    """The message for a CUDA out-of-memory during training: what was in use, ways to fit, what is kept."""
    total = torch.cuda.get_device_properties(device).total_memory
    peak = torch.cuda.max_memory_reserved(device)
    kept = "no checkpoint was written yet"
    if checkpoint:
        kept = f"the last checkpoint, {checkpoint}, is kept"
        # options a resumed run may change that also lower memory
        lighter = ([] if cfg.gradient_checkpointing else ["--gradient-checkpointing"]) + (
            ["--pairs-per-forward 1"] if cfg.engine == "fast" and cfg.pairs_per_forward != 1 else [])
        if lighter:
            kept += f" (`vlmpref train --resume {output_dir} {' '.join(lighter)}` continues it with less memory)"
    ways = ""
    try:
        shape = describe_model(cfg.model, cfg.trust_remote_code)
        settings = data_settings(cfg, rows, processor)
        gpu = generic_gpu(total / GIB)
        est = estimate(shape, settings, gpu)
        ways = (f"; the estimate for this run was {_estimate_line(est)}, and a new run fits with one of: "
                + "; ".join(ways_to_fit(shape, settings, gpu, total / GIB - est.memory.cuda_context / GIB)))
    except VlmprefError:
        pass
    return VlmprefError(f"CUDA ran out of memory at step {step} (peak {peak / GIB:.1f} of {total / GIB:.1f} GiB); "
                        f"{kept}{ways}.")
