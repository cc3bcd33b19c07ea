"""The two engines behind `vlmpref train`, configured from one TrainConfig.

- `fast` (default): vlmpref's FastDPOTrainer — shared-prefix packing, reference log-probs once, image
  features cached when the vision tower is frozen. Same mathematics as TRL.
- `trl`: TRL's DPOTrainer exactly as the guide uses it; the reference the fast engine is tested and
  benchmarked against.
"""

from __future__ import annotations

import os
import warnings

import torch
from trl import DPOConfig, DPOTrainer

from vlmpref.train.checkpoints import AtomicCheckpoints, ResumeKeepsPrecision
from vlmpref.train.config import TrainConfig
from vlmpref.train.fast import FastDPOTrainer, supports_model
from vlmpref.train.guards import FiniteLossCheck


class CountsPairs:
    """Counts the pairs this process trained on (TRL's batches hold chosen and rejected rows of each pair)."""

    pairs_trained = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.pairs_trained += len(inputs["input_ids"]) // 2
        return loss


class TrlEngine(AtomicCheckpoints, ResumeKeepsPrecision, FiniteLossCheck, CountsPairs, DPOTrainer):
    """TRL's DPOTrainer, unchanged in what it computes; checkpoints written atomically and resumed in the
    adapter's own precision, NaN/inf stops it."""


class FastEngine(AtomicCheckpoints, ResumeKeepsPrecision, FiniteLossCheck, FastDPOTrainer):
    """vlmpref's FastDPOTrainer with the same run guards."""


# TrainConfig fields that DPOConfig has under the same name and meaning
SAME_NAMES = ("output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
              "per_device_eval_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps",
              "weight_decay", "max_grad_norm", "beta", "loss_weights", "max_length", "seed", "logging_steps",
              "save_steps", "save_total_limit", "dataset_num_proc")


def loader_workers(cfg: TrainConfig) -> int:
    """`--dataloader-num-workers`, with auto resolved (see its help)."""
    if cfg.dataloader_num_workers != "auto":
        return cfg.dataloader_num_workers
    if cfg.engine != "fast" or not torch.cuda.is_available():
        return 0
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def dpo_config(cfg: TrainConfig, bf16: bool, has_eval: bool) -> DPOConfig:
    """Map our flat TrainConfig onto TRL's DPOConfig (same names, plus the guide's fixed choices)."""
    eval_every = cfg.eval_steps if has_eval else None
    workers = loader_workers(cfg)
    return DPOConfig(
        **{name: getattr(cfg, name) for name in SAME_NAMES},
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,  # forked once, not again every epoch
        loss_type=list(cfg.loss_type),
        bf16=bf16,
        activation_checkpointing=cfg.gradient_checkpointing,
        data_seed=cfg.seed,
        save_strategy="steps",
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every,
        report_to=list(cfg.report_to),
        # transformers hides its progress bar when its logger is quieter than WARNING, as the CLI sets it
        disable_tqdm=False,
        logging_nan_inf_filter=False,  # the guard stops on NaN/inf once per step; the filter waits every micro-batch
        use_cpu=not torch.cuda.is_available(),
        # data parallel: every adapter takes part in every forward (DDP's search for unused ones costs a pass)
        ddp_find_unused_parameters=False,
    )


def make_trainer(cfg: TrainConfig, model, processor, peft_config, train_dataset, eval_dataset=None,
                 bf16: bool = False, callbacks=None):
    """The engine's trainer, ready to `.train()`; its `.model` becomes the trained PeftModel."""
    args = dpo_config(cfg, bf16=bf16, has_eval=eval_dataset is not None)
    common = dict(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                  processing_class=processor, peft_config=peft_config, callbacks=callbacks)
    with warnings.catch_warnings():
        # TRL warns that its dataset is not tokenized up front; that is expected for vision data
        warnings.simplefilter("ignore", UserWarning)
        if cfg.engine == "trl":
            return TrlEngine(**common)
        if not supports_model(model):
            dropped = cfg.fast_only_options()
            print(f"note: the fast engine does not handle {model.config.model_type} models; training with TRL's "
                  "DPOTrainer (--engine trl) instead, one pair per forward"
                  + (f", without {', '.join(dropped)} (fast engine only)" if dropped else "") + ".")
            return TrlEngine(**common)
        return FastEngine(**common, pairs_per_forward=cfg.pairs_per_forward, memory_budget_gib=cfg.max_gpu_memory,
                          image_cache={"auto": "auto", "on": True, "off": False}[cfg.image_cache],
                          cache_memory_gib=cfg.cache_memory_gib)
