"""Procedures several test files run the same way on different devices (CPU here, CUDA in test_gpu.py)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from trl import DPOConfig, DPOTrainer

from vlmpref import config as config_io
from vlmpref.models import load_model, load_processor, lora_config
from vlmpref.train import TrainConfig, train
from vlmpref.train.fast import FastDPOTrainer


def trl_and_fast_trainers(path: str, dataset, tmp_path: Path, losses: list[str], device: str = "cpu",
                          **dpo_options):
    """TRL's DPOTrainer and FastDPOTrainer with the same perturbed adapter, in float32, and each one's collated
    batch of all of `dataset`: (trl trainer, fast trainer, trl batch, fast batch)."""
    args = dict(per_device_train_batch_size=len(dataset), bf16=False, use_cpu=device == "cpu", report_to=[],
                loss_type=losses, beta=0.3, activation_checkpointing=False, **dpo_options)
    model_trl, model_fast = (load_model(path, dtype=torch.float32, device=device) for _ in range(2))
    peft_config = lora_config(model_trl, use_dora=True)
    trl_trainer = DPOTrainer(model=model_trl, args=DPOConfig(output_dir=str(tmp_path / "trl"), **args),
                             train_dataset=dataset, processing_class=load_processor(path), peft_config=peft_config)
    fast = FastDPOTrainer(model=model_fast, args=DPOConfig(output_dir=str(tmp_path / "fast"), **args),
                          train_dataset=dataset, processing_class=load_processor(path),
                          peft_config=copy.deepcopy(peft_config))
    generator = torch.Generator().manual_seed(1)
    fast_params = dict(fast.model.named_parameters())
    with torch.no_grad():  # a trained-looking adapter, so policy and reference differ
        for name, p in trl_trainer.model.named_parameters():
            if p.requires_grad:
                noise = (torch.randn(p.shape, generator=generator) * 0.05).to(p.device)
                p.add_(noise)
                fast_params[name].add_(noise)
    trl_batch = trl_trainer._prepare_inputs(trl_trainer.data_collator([dict(r) for r in dataset]))
    fast_batch = fast._prepare_inputs(fast.data_collator([dict(r) for r in fast.train_dataset]))
    trl_trainer.model.train()
    fast.model.train()
    return trl_trainer, fast, trl_batch, fast_batch


def losses_and_gradient_error(trl_trainer, fast, trl_batch, fast_batch):
    """Both trainers' loss on their batch, and the norm-wise relative error of the fast adapter gradients."""
    for trainer in (trl_trainer, fast):
        trainer.model.zero_grad(set_to_none=True)
    loss_trl = trl_trainer.compute_loss(trl_trainer.model, trl_batch)
    loss_fast = fast.compute_loss(fast.model, fast_batch)
    loss_trl.backward()
    loss_fast.backward()
    # float32 sums in a different order: compare gradients norm-wise over all adapter parameters
    fast_params = dict(fast.model.named_parameters())
    diff = sum(((p.grad - fast_params[n].grad) ** 2).sum() for n, p in trl_trainer.model.named_parameters()
               if p.requires_grad)
    norm = sum((p.grad ** 2).sum() for p in trl_trainer.model.parameters() if p.requires_grad)
    return loss_trl, loss_fast, (diff / norm).sqrt().item()


def trl_and_fast_on_one_batch(path: str, dataset, tmp_path: Path, losses: list[str], device: str = "cpu"):
    """TRL's DPOTrainer and FastDPOTrainer with the same perturbed adapter on the same batch, in float32.

    Returns (trl trainer, fast trainer, TRL loss, fast loss, norm-wise relative error of the adapter gradients).
    """
    trl_trainer, fast, trl_batch, fast_batch = trl_and_fast_trainers(path, dataset, tmp_path, losses, device)
    return trl_trainer, fast, *losses_and_gradient_error(trl_trainer, fast, trl_batch, fast_batch)


def cut_and_resume(tmp_path: Path, **options):
    """Train 4 steps with checkpoints at 2 and 4; copy the run and remove everything written after
    checkpoint-2 (as a kill -9 there would leave it); resume the copy. Returns (whole, cut, resumed result)."""
    whole = tmp_path / "whole"
    train(TrainConfig(output_dir=str(whole), max_steps=4, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1, learning_rate=1e-2, report_to=["none"], dataset_num_proc=1,
                      save_steps=2, save_total_limit=2, seed=3, **options))
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for later in ("checkpoint-4", "adapter_model.safetensors", "adapter_config.json", "train_summary.json"):
        target = cut / later
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return whole, cut, train(config_io.resolve(TrainConfig, resume=str(cut)))
