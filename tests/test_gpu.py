"""On a CUDA GPU: the fast engine equals TRL, 4-bit DoRA trains with both engines, resume continues exactly,
and memory limits are met with the messages the CPU tests promise (there with CUDA mocked, here for real).

    python -m pytest -m gpu tests/test_gpu.py      # on a machine with a CUDA GPU; skipped everywhere else

benchmarks/RESULTS.md records where these ran last.
"""

import copy
import shutil

import pytest
import torch
from trl import DPOConfig, DPOTrainer
from transformers import TrainerCallback

from vlmpref import config as config_io
from vlmpref.data import load_preference_data
from vlmpref.errors import VlmprefError
from vlmpref.models import load_model, load_processor, lora_config
from vlmpref.models.estimate import GIB
from vlmpref.train import TrainConfig, train
from vlmpref.train.fast import FastDPOTrainer
from vlmpref.train.memory import check_memory

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def exact_float32():
    """No TF32 in matmuls or convolutions (the patch embedding), so float32 means float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _Hog:
    """Holds GPU memory so that only `leave_gib` stays free (None: take everything the device will give)."""

    def __init__(self, leave_gib=None):
        self.blocks = []
        torch.cuda.empty_cache()
        if leave_gib is not None:
            free, _ = torch.cuda.mem_get_info()
            self.blocks.append(torch.empty(max(0, free - int(leave_gib * GIB)), dtype=torch.uint8, device="cuda"))
            return
        for size in (GIB, 64 * 2**20, 2**20):
            while True:
                try:
                    self.blocks.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
                except torch.cuda.OutOfMemoryError:
                    break

    def release(self):
        self.blocks.clear()
        torch.cuda.empty_cache()


def test_fast_engine_equals_trl_on_cuda_in_float32(tiny_model_dir, shapes_dir, tmp_path, exact_float32):
    from datasets import Dataset

    path = str(tiny_model_dir)
    rows = list(load_preference_data(str(shapes_dir), "test[:6]", num_proc=1).dataset)
    dataset = Dataset.from_list([dict(r) for r in rows]).select_columns(["images", "prompt", "chosen", "rejected"])
    args = dict(per_device_train_batch_size=6, bf16=False, report_to=[], loss_type=["sigmoid", "sft"], beta=0.3,
                activation_checkpointing=False)
    model_trl, model_fast = (load_model(path, dtype=torch.float32, device="cuda") for _ in range(2))
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
    loss_trl = trl_trainer.compute_loss(trl_trainer.model, trl_batch)
    loss_fast = fast.compute_loss(fast.model, fast_batch)
    assert loss_fast.device.type == "cuda"
    assert loss_fast.item() == pytest.approx(loss_trl.item(), rel=1e-5)
    loss_trl.backward()
    loss_fast.backward()
    diff = sum(((p.grad - fast_params[n].grad) ** 2).sum() for n, p in trl_trainer.model.named_parameters()
               if p.requires_grad)
    norm = sum((p.grad ** 2).sum() for p in trl_trainer.model.parameters() if p.requires_grad)
    assert (diff / norm).sqrt().item() < 5e-5


@pytest.mark.parametrize("engine", ["fast", "trl"])
def test_4bit_dora_bf16_trains_adapters_only_on_cuda(engine, tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / engine
    result = train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:8]",
                               output_dir=str(out), max_steps=2, per_device_train_batch_size=4,
                               gradient_accumulation_steps=1, learning_rate=1e-2, report_to=["none"],
                               dataset_num_proc=1, quantization="4bit", engine=engine, save_steps=2))
    assert result.summary["engine"] == engine and result.summary["steps"] == 2
    assert result.summary["peak_memory_gib"] > 0
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.device.type == "cuda" for p in lora_b)
    assert all(p.abs().sum() > 0 for p in lora_b)  # initialised at zero: training moved every one
    fresh = {n: p.detach().float().cpu() for n, p in load_model(str(tiny_model_dir), quantization="4bit",
                                                                dtype=torch.bfloat16, device="cuda").named_parameters()}
    for name, param in result.model.named_parameters():
        if not param.requires_grad:
            key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
            assert torch.equal(fresh[key], param.detach().float().cpu()), f"frozen {name} changed"
    assert (out / "adapter_model.safetensors").is_file()


def test_resume_on_cuda_continues_to_the_same_adapter(tiny_model_dir, shapes_dir, tmp_path):
    """A run cut off after checkpoint-2 (everything written later removed, as after kill -9) resumes to the
    adapter of the uninterrupted run: optimizer, scheduler, CUDA RNG and data order come back."""
    from safetensors.torch import load_file

    whole = tmp_path / "whole"
    train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:16]", output_dir=str(whole),
                      max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-2,
                      report_to=["none"], dataset_num_proc=1, quantization="4bit", save_steps=2, save_total_limit=2,
                      seed=3))
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for later in ("checkpoint-4", "adapter_model.safetensors", "adapter_config.json", "train_summary.json"):
        target = cut / later
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    resumed = train(config_io.resolve(TrainConfig, resume=str(cut)))
    assert resumed.summary["resumed_from"] == "checkpoint-2" and resumed.summary["reference_logps"] == "reused"
    expected, got = load_file(whole / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=lambda m: f"{name}: {m}")


def test_too_little_free_gpu_memory_stops_before_loading(tiny_model_dir, shapes_dir):
    processor = load_processor(str(tiny_model_dir))
    rows = load_preference_data(str(shapes_dir), "train[:4]", num_proc=1).dataset
    cfg = TrainConfig(model="smolvlm-2.2b", quantization="none", report_to=["none"])
    hog = _Hog(leave_gib=1.0)
    try:
        with pytest.raises(VlmprefError) as caught:
            check_memory(cfg, rows, processor, torch.device("cuda"))
    finally:
        hog.release()
    text = str(caught.value)
    name = torch.cuda.get_device_properties(0).name
    assert text.startswith("This run needs about ") and f"GiB are free on {name}" in text
    assert "--quantization 4bit: " in text and text.endswith("(or pass --no-memory-check to try anyway).")


def test_real_out_of_memory_in_training_is_reported_without_a_traceback(tiny_model_dir, shapes_dir, tmp_path):
    class TakeAllMemory(TrainerCallback):
        """Once the model is on the GPU, leave nothing free: the first step's activations cannot be allocated."""

        hog = None

        def on_train_begin(self, args, state, control, **kwargs):
            TakeAllMemory.hog = _Hog()

    out = tmp_path / "oom"
    try:
        with pytest.raises(VlmprefError) as caught:
            train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:8]",
                              output_dir=str(out), max_steps=2, per_device_train_batch_size=8,
                              gradient_accumulation_steps=1, report_to=["none"], dataset_num_proc=1,
                              quantization="none", memory_check=False), callbacks=[TakeAllMemory()])
    finally:
        if TakeAllMemory.hog is not None:
            TakeAllMemory.hog.release()
    text = str(caught.value)
    assert text.startswith("CUDA ran out of memory at step 1 (peak ") and "no checkpoint" in text, text
    assert "the estimate for this run was about" in text


def test_flex_attention_over_packed_pairs_equals_dense_masks_on_cuda(tiny_model_dir, shapes_dir, exact_float32):
    """FlexAttention (one packed row, block mask) gives the log-probs and adapter gradients of the dense layout.
    FlexAttention has no backward on the CPU, so only this GPU test covers the gradients."""
    from peft import get_peft_model

    from vlmpref.train.fast.forward import packed_logps
    from vlmpref.train.fast.packing import pack, tokenize_pair

    path = str(tiny_model_dir)
    processor = load_processor(path)
    rows = list(load_preference_data(str(shapes_dir), "test[:6]", num_proc=1).dataset)
    pairs = [tokenize_pair(r, processor) for r in rows]
    results = {}
    for attn, attention, layout in (("sdpa", "dense", "rows"), ("flex_attention", "flex", "packed")):
        torch.manual_seed(0)
        model = load_model(path, dtype=torch.float32, device="cuda", attn_implementation=attn)
        model = get_peft_model(model, lora_config(model, dropout=0.0))
        out = packed_logps(model, pack(pairs, layout=layout).to("cuda"), attention=attention)
        (out.chosen.sum() - 0.5 * out.rejected.sum()).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        results[attention] = (out.chosen.detach(), out.rejected.detach(), grads)
    (c_d, r_d, g_d), (c_f, r_f, g_f) = results["dense"], results["flex"]
    torch.testing.assert_close(c_f, c_d, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(r_f, r_d, rtol=1e-5, atol=1e-4)
    diff = sum(((g_f[n] - g_d[n]) ** 2).sum() for n in g_d)
    norm = sum((g ** 2).sum() for g in g_d.values())
    assert (diff / norm).sqrt().item() < 1e-4
