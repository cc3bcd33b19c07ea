"""`vlmpref train`: data -> model -> DPO -> adapter on disk, whatever the engine.

    vlmpref train --config configs/smolvlm-instruct/dpo-guide.yaml
    vlmpref train --model runs/tiny --dataset runs/shapes --split train --max-steps 20 --output-dir runs/dpo

The output folder holds the PEFT adapter (safetensors), the processor, the resolved config
(`vlmpref_config.yaml`), TensorBoard logs (`runs/`), checkpoints, `rejected_rows.jsonl` for every row set
aside, and `train_summary.json`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmpref import config as config_io
from vlmpref.data import PreferenceData, load_preference_data
from vlmpref.errors import VlmprefError
from vlmpref.models import load_model, load_processor, lora_config
from vlmpref.models.loading import default_device, prefer_expandable_segments, supports_bf16
from vlmpref.plan.shapes import set_image_longest_edge
from vlmpref.config import describe_preset
from vlmpref.runs import prepare_output_dir
from vlmpref.train.checkpoints import last_checkpoint
from vlmpref.train.config import CONFIG_NAME, TrainConfig
from vlmpref.train.engines import TrlEngine, make_trainer
from vlmpref.train.guards import NonFiniteLoss, StopOnSignal, stop_on_signals
from vlmpref.train.lengths import apply_length_policy
from vlmpref.plan.memory import check_memory, out_of_memory_error
from vlmpref.train.processes import Processes
from vlmpref.train.resume import StepsFromThisRun, check_resumable, resume_line
from vlmpref.train.train_log import TRAIN_LOG, JsonlLog

# What a run writes besides the adapter and processor; --overwrite removes them so nothing mixes with the new run
# (the old run's checkpoints would otherwise be taken for this run's by --resume)
RUN_FILES = ("checkpoint-*", ".checkpoint-*", "train_summary.json", "rejected_rows.jsonl", "rejected_rows_eval.jsonl",
             "eval_log.jsonl", TRAIN_LOG)
# Everything a run can leave before its first checkpoint: such a folder is started again without --overwrite
EARLY_FILES = RUN_FILES + (CONFIG_NAME, "runs", "reference_logps.json", "image_features")


@dataclass
class TrainResult:
    output_dir: Path
    model: object  # the trained PeftModel
    processor: object
    data: PreferenceData
    summary: dict
    interrupted: str | None = None  # the signal that stopped training early; resume from `checkpoint`
    checkpoint: Path | None = None  # the last complete checkpoint
    main: bool = True  # False in the other processes of a data-parallel run (they print nothing)


def prepare_run_dir(path: str | Path, overwrite: bool) -> Path:
    """The run's output folder: new, or cleared with --overwrite, or a failed run's to start again.

    A run that stopped before its first checkpoint (a missing dataset, a bad split, too many rows set aside, no
    network) has nothing to resume, so its folder is taken over as if empty; a folder holding anything else
    (a checkpoint, an adapter, files of yours) still needs --overwrite or --resume.
    """
    out = Path(path)
    if stopped_before_first_checkpoint(out):
        print(f"{out} holds a run that stopped before its first checkpoint; starting it again there.")
        return prepare_output_dir(out, overwrite=True, clear=EARLY_FILES)
    hint = f", or continue that run with `{resume_line(out)}`" if (out / CONFIG_NAME).is_file() else ""
    return prepare_output_dir(out, overwrite, clear=RUN_FILES, hint=hint)


def stopped_before_first_checkpoint(folder: Path) -> bool:
    """True when `folder` holds only what a run writes before its first checkpoint (and that run's config)."""
    if not (folder / CONFIG_NAME).is_file() or last_checkpoint(folder) is not None:
        return False
    if (folder / "train_summary.json").is_file() or (folder / "adapter_config.json").is_file():
        return False  # a finished run, or one stopped by a signal: not a failure to retry
    return all(any(entry.match(pattern) for pattern in EARLY_FILES) for entry in folder.iterdir())


def held_out_line(cfg: TrainConfig) -> str:
    """Which held-out set the run evaluates on, said before any work (a config file may name one you did not mean)."""
    if not cfg.eval_dataset:
        return ("Held-out set: none, so no evaluation during training (add --eval-split, and --eval-dataset if the "
                "held-out data is elsewhere).")
    when = f", every {cfg.eval_steps} steps" if cfg.eval_steps else " (no --eval-steps: not evaluated during training)"
    return f"Held-out set: {cfg.eval_dataset} [{cfg.eval_split}]{when}."


def _one_time_pass_note(cfg: TrainConfig, rows: int) -> str | None:
    """The fast engine scores the reference of every pair before step 1; say so when --max-steps needs far fewer."""
    if cfg.engine != "fast" or cfg.max_steps <= 0 or cfg.resume:  # a resumed run reuses the stored reference
        return None
    needed = cfg.max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if needed >= rows:
        return None
    return (f"note: the fast engine computes the reference log-probs of all {rows:,} training pairs once, before the "
            f"first step (stored for later epochs and --resume); --max-steps {cfg.max_steps} trains on {needed:,} of "
            "them. For a short trial run, slice the data instead (for example --split 'train[:" f"{needed}]').")


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """The guide trains in bf16; on the CPU only quantized models do (bitsandbytes computes in bf16 there)."""
    if cfg.bf16 is not None:
        if cfg.bf16 and device.type == "cuda" and not supports_bf16(device):
            raise VlmprefError("This GPU does not support bf16; pass --no-bf16.")
        return cfg.bf16
    return supports_bf16(device) or cfg.quantization != "none"


def load_split(cfg: TrainConfig, dataset: str, split: str, processor, record: Path,
               processes: Processes | None = None) -> PreferenceData:
    """Load and check one split, apply the length policy, record the rows set aside, stop if too many were.
    Several processes: the main one loads first (dataset caches are written once) and alone writes and prints."""
    processes = processes or Processes()
    with processes.main_first():
        data = load_preference_data(dataset, split, num_proc=cfg.dataset_num_proc,
                                    allow_outside_paths=cfg.allow_outside_paths,
                                    max_image_pixels=cfg.max_image_pixels, keep_duplicates=cfg.keep_duplicates)
        if cfg.max_length and len(data.dataset):
            apply_length_policy(data, processor, cfg.max_length, cfg.truncation)
    if processes.main:
        data.write_set_aside(record)
        print(data.summary())
    processes.barrier()  # the record is on disk before any process names it in an error
    try:
        data.check_share(cfg.max_set_aside_fraction, record)
    except VlmprefError as exc:
        processes.raise_everywhere(exc)
    return data


def train(cfg: TrainConfig, callbacks=None) -> TrainResult:
    """Train a DPO adapter as `cfg` says and write it, with everything needed to reuse it, to `cfg.output_dir`.

    With `cfg.resume` set, continue the run in that folder from its last complete checkpoint instead.
    """
    cfg = config_io.with_absolute_paths(cfg)  # what the run saves (config, adapter's base) works from any folder
    started = time.time()
    alloc_conf = prefer_expandable_segments()
    processes = Processes()  # one, or one per GPU under accelerate launch / torchrun
    # the configured effective batch is kept: each process accumulates its share of it
    accumulation = processes.split_accumulation(cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps)

    def prepare_folder():
        checkpoint = None
        if cfg.resume:
            checkpoint = check_resumable(cfg)
            out = Path(cfg.resume)
            print(f"Resuming {out} from {checkpoint.name}." if checkpoint else
                  f"Resuming {out}: no complete checkpoint yet, so training starts at step 0.")
        else:
            out = prepare_run_dir(cfg.output_dir, cfg.overwrite)
        # saved as configured (for one process), so the run resumes on any number of processes
        config_io.save(dataclasses.replace(cfg, resume=None, overwrite=False, output_dir=str(out)), out / CONFIG_NAME)
        if cfg.preset:
            print(describe_preset(cfg, cfg.preset))
        print(held_out_line(cfg))
        if processes.world > 1:
            print(f"Data parallel: {processes.world} processes, each {cfg.per_device_train_batch_size} pair(s) x "
                  f"{accumulation} accumulation steps per optimizer step "
                  f"({cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps} pairs in all, as configured).")
        return out, checkpoint

    out, checkpoint = processes.on_main(prepare_folder)
    configured = cfg
    cfg = dataclasses.replace(cfg, gradient_accumulation_steps=accumulation)

    # ---- data
    processor = load_processor(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if cfg.image_longest_edge:
        set_image_longest_edge(processor, cfg.image_longest_edge)
    data = load_split(cfg, cfg.dataset, cfg.split, processor, out / "rejected_rows.jsonl", processes)
    eval_data = None
    if cfg.eval_dataset:
        eval_data = load_split(cfg, cfg.eval_dataset, cfg.eval_split, processor, out / "rejected_rows_eval.jsonl",
                               processes)

    one_time_note = _one_time_pass_note(configured, len(data.dataset))  # the effective batch, over all processes
    if one_time_note and processes.main:
        print(one_time_note)

    # ---- model
    device = processes.device if processes.world > 1 else default_device()
    bf16 = use_bf16(cfg, device)
    if cfg.max_gpu_memory is not None and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        # PyTorch's cap takes a device index, not a bare "cuda" (which default_device gives)
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.max_gpu_memory / total), index)
    check_memory(cfg, data.dataset, processor, device)
    trainer = None
    try:
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
        with stop_on_signals() as stop:
            trainer.add_callback(StopOnSignal(stop, agree=processes.any))
            trainer.add_callback(StepsFromThisRun())  # --resume with --logging-steps N: N, not the checkpoint's
            trainer.add_callback(JsonlLog(out / TRAIN_LOG))  # read live by `vlmpref ui`, whatever --report-to says
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except torch.cuda.OutOfMemoryError:
        step = trainer.state.global_step + 1 if trainer is not None else 0
        raise out_of_memory_error(cfg, data.dataset, processor, device, step, last_checkpoint(out), out) from None
    except NonFiniteLoss as exc:
        raise _non_finite_error(exc, cfg, bf16, out) from None
    except KeyboardInterrupt:
        kept = last_checkpoint(out)
        print(f"Stopped at once; {f'the last checkpoint, {kept.name}, is kept: continue with `{resume_line(out)}`' if kept else 'no checkpoint was written yet'}.",
              file=sys.stderr)
        raise
    interrupted = stop.signal_name if trainer.state.global_step < trainer.state.max_steps else None
    trained = trainer.model

    # ---- save (main process; the summary's counts are summed over the processes first)
    summary = _summary(configured, trainer, data, device, time.time() - started, checkpoint, interrupted,
                       start_step=_checkpoint_step(checkpoint), processes=processes)
    summary["cuda_alloc_conf"] = alloc_conf if device.type == "cuda" else None
    if processes.main:
        if not interrupted:
            trained.save_pretrained(out)
            processor.save_pretrained(out)
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    processes.barrier()  # every process returns with the adapter on disk
    return TrainResult(output_dir=out, model=trained, processor=processor, data=data, summary=summary,
                       interrupted=interrupted, checkpoint=last_checkpoint(out), main=processes.main)


def _summary(cfg: TrainConfig, trainer, data: PreferenceData, device, elapsed: float, resumed_from, interrupted,
             start_step: int, processes: Processes | None = None) -> dict:
    """What the run did; `cfg` as configured (for one process). Pair counts are summed over the processes."""
    processes = processes or Processes()
    reused = getattr(trainer, "reference_reused", None)
    fast = not isinstance(trainer, TrlEngine)  # trl also when fast fell back
    packing = getattr(trainer, "packing", None)
    return {
        "engine": "fast" if fast else "trl",
        "steps": trainer.state.global_step,
        "steps_this_run": trainer.state.global_step - start_step,
        "max_steps": trainer.state.max_steps,
        # what this process trained on: a resumed run's earlier steps are not counted again
        "pairs_trained": int(processes.total(trainer.pairs_trained)),
        "processes": processes.world,
        "pairs_per_step": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
        "pairs_per_forward": trainer.pairs_per_forward if fast else cfg.per_device_train_batch_size,  # per process
        "packing": packing.as_dict() if packing else None,
        "one_time_seconds": round(trainer.reference_seconds, 2) if fast else None,
        "rows_used": len(data.dataset),
        "rows_set_aside": len(data.set_aside),
        "set_aside_reasons": dict(data.reasons()),
        "rows_kept_with_changes": dict(data.kept_with_changes),
        "resumed_from": resumed_from.name if resumed_from else None,
        "interrupted": interrupted,
        "reference_logps": None if reused is None else ("reused" if reused else "computed"),
        "seconds": round(elapsed, 2),
        "train_seconds": round(trainer.state.log_history[-1].get("train_runtime", elapsed), 2)
        if trainer.state.log_history else None,
        "peak_memory_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if device.type == "cuda" else None,
        "report_to": list(cfg.report_to),
        "final_log": trainer.state.log_history[-1] if trainer.state.log_history else {},
        "log_history": trainer.state.log_history,
    }


def _checkpoint_step(checkpoint: Path | None) -> int:
    """The optimizer step a checkpoint folder holds (checkpoint-12 -> 12); 0 for a fresh run."""
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0


def _non_finite_error(exc: NonFiniteLoss, cfg: TrainConfig, bf16: bool, out: Path) -> VlmprefError:
    kept = last_checkpoint(out)
    where = (f"the last good checkpoint, {kept}, is kept" if kept else "no checkpoint had been written yet")
    precision = " or train in float32 with --no-bf16 (bf16 overflows more easily)" if bf16 else ""
    return VlmprefError(f"Training stopped: {exc} (NaN or inf); {where}. Start a new run with a lower --learning-rate "
                        f"(this one used {cfg.learning_rate:g}){precision}, or a larger --warmup-steps.")


def _init_value(text: str):
    """PEFT takes True/False or a method name; YAML and flags give text."""
    lowered = str(text).lower()
    return {"true": True, "false": False}.get(lowered, text)
