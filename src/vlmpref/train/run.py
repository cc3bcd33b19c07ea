"""`vlmpref train`: data -> model -> DPO -> adapter on disk, whatever the engine.

    vlmpref train --config configs/smolvlm-instruct/dpo-guide.yaml
    vlmpref train --model runs/tiny --dataset runs/shapes --split train --max-steps 20 --output-dir runs/dpo

The output folder holds the PEFT adapter (safetensors), the processor, the resolved config
(`vlmpref_config.yaml`), TensorBoard logs (`runs/`), checkpoints, `rejected_rows.jsonl` for every row set
aside, and `train_summary.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmpref import config as config_io
from vlmpref.data import PreferenceData, load_preference_data
from vlmpref.errors import VlmprefError
from vlmpref.models import load_model, load_processor, lora_config
from vlmpref.models.loading import default_device, supports_bf16
from vlmpref.models.shapes import set_image_longest_edge
from vlmpref.config import describe_preset
from vlmpref.train.config import TrainConfig
from vlmpref.train.engines import make_trainer

CONFIG_NAME = "vlmpref_config.yaml"


@dataclass
class TrainResult:
    output_dir: Path
    model: object  # the trained PeftModel
    processor: object
    data: PreferenceData
    summary: dict


def prepare_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse to mix a new run into an existing one unless asked."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise VlmprefError(f"--output-dir {out} is a file; choose a folder.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise VlmprefError(f"Output folder {out} is not empty; choose another --output-dir or pass --overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """The guide trains in bf16; on the CPU only quantized models do (bitsandbytes computes in bf16 there)."""
    if cfg.bf16 is not None:
        if cfg.bf16 and device.type == "cuda" and not supports_bf16(device):
            raise VlmprefError("This GPU does not support bf16; pass --no-bf16.")
        return cfg.bf16
    return supports_bf16(device) or cfg.quantization != "none"


def load_training_data(cfg: TrainConfig, out: Path) -> tuple[PreferenceData, PreferenceData | None]:
    data = load_preference_data(cfg.dataset, cfg.split, num_proc=cfg.dataset_num_proc,
                                allow_outside_paths=cfg.allow_outside_paths)
    data.write_set_aside(out / "rejected_rows.jsonl")
    print(data.summary())
    if len(data.dataset) == 0:
        raise VlmprefError(f"No usable rows in {cfg.dataset} [{cfg.split}]; see {out / 'rejected_rows.jsonl'} "
                           "for the reason each row was set aside.")
    eval_data = None
    if cfg.eval_dataset:
        eval_data = load_preference_data(cfg.eval_dataset, cfg.eval_split, num_proc=cfg.dataset_num_proc,
                                         allow_outside_paths=cfg.allow_outside_paths)
        eval_data.write_set_aside(out / "rejected_rows_eval.jsonl")
        print(eval_data.summary())
    return data, eval_data


def train(cfg: TrainConfig, callbacks=None) -> TrainResult:
    """Train a DPO adapter as `cfg` says and write it, with everything needed to reuse it, to `cfg.output_dir`."""
    started = time.time()
    out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
    config_io.save(cfg, out / CONFIG_NAME)
    if cfg.preset:
        print(describe_preset(cfg, cfg.preset))

    # ---- data
    data, eval_data = load_training_data(cfg, out)

    # ---- model
    device = default_device()
    bf16 = use_bf16(cfg, device)
    processor = load_processor(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if cfg.image_longest_edge:
        set_image_longest_edge(processor, cfg.image_longest_edge)
    model = load_model(cfg.model, quantization=cfg.quantization, dtype=torch.bfloat16 if bf16 else torch.float32,
                       attn_implementation=cfg.attn_implementation, device=device,
                       trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    peft_config = lora_config(model, use_dora=cfg.use_dora, r=cfg.lora_r, alpha=cfg.lora_alpha,
                              dropout=cfg.lora_dropout, init_lora_weights=_init_value(cfg.init_lora_weights),
                              target_modules=cfg.lora_target_modules, scope=cfg.lora_scope)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # ---- train
    trainer = make_trainer(cfg, model, processor, peft_config, data.dataset,
                           eval_data.dataset if eval_data else None, bf16=bf16, callbacks=callbacks)
    trainer.train()
    trained = trainer.model

    # ---- save
    trained.save_pretrained(out)
    processor.save_pretrained(out)
    elapsed = time.time() - started
    pairs = trainer.state.global_step * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    summary = {
        "engine": cfg.engine,
        "steps": trainer.state.global_step,
        "pairs_seen": pairs,
        "rows_used": len(data.dataset),
        "rows_set_aside": len(data.set_aside),
        "seconds": round(elapsed, 2),
        "train_seconds": round(trainer.state.log_history[-1].get("train_runtime", elapsed), 2)
        if trainer.state.log_history else None,
        "peak_memory_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if device.type == "cuda" else None,
        "report_to": list(cfg.report_to),
        "final_log": trainer.state.log_history[-1] if trainer.state.log_history else {},
        "log_history": trainer.state.log_history,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(output_dir=out, model=trained, processor=processor, data=data, summary=summary)


def _init_value(text: str):
    """PEFT takes True/False or a method name; YAML and flags give text."""
    lowered = str(text).lower()
    return {"true": True, "false": False}.get(lowered, text)
