"""On a CUDA GPU: the fast engine equals TRL, 4-bit DoRA trains with both engines, resume continues exactly,
and memory limits are met with the messages the CPU tests promise (there with CUDA mocked, here for real).

    python -m pytest -m gpu tests/test_gpu.py      # on a machine with a CUDA GPU; skipped everywhere else

benchmarks/RESULTS.md records where these ran last.
"""

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import TrainerCallback

from vlmpref.data import load_preference_data
from vlmpref.errors import VlmprefError
from vlmpref.models import load_model, load_processor, lora_config
from vlmpref.plan.estimate import GIB
from vlmpref.train import TrainConfig, train
from vlmpref.plan.memory import check_memory

from helpers import cut_and_resume, trl_and_fast_on_one_batch

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


class _OtherProcessHolds:
    """Another process holds GPU memory so that only `leave_gib` stays free, as on a card a desktop shares.
    (Memory this process's PyTorch reserves counts as available to the planner, so a hog here would not.)"""

    def __init__(self, leave_gib: float):
        code = textwrap.dedent(f"""
            import sys, torch
            free, _ = torch.cuda.mem_get_info()
            block = torch.empty(max(0, free - int({leave_gib} * 2**30)), dtype=torch.uint8, device="cuda")
            print("ready", flush=True)
            sys.stdin.read()
        """)
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def release(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def test_fast_engine_equals_trl_on_cuda_in_float32(tiny_model_dir, shapes_dir, tmp_path, exact_float32):
    from datasets import Dataset

    rows = list(load_preference_data(str(shapes_dir), "test[:6]", num_proc=1).dataset)
    dataset = Dataset.from_list([dict(r) for r in rows]).select_columns(["images", "prompt", "chosen", "rejected"])
    _, _, loss_trl, loss_fast, grad_error = trl_and_fast_on_one_batch(str(tiny_model_dir), dataset, tmp_path,
                                                                      ["sigmoid", "sft"], device="cuda")
    assert loss_fast.device.type == "cuda"
    assert loss_fast.item() == pytest.approx(loss_trl.item(), rel=1e-5)
    assert grad_error < 5e-5


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

    whole, cut, resumed = cut_and_resume(tmp_path, model=str(tiny_model_dir), dataset=str(shapes_dir),
                                         split="train[:16]", quantization="4bit")
    assert resumed.summary["resumed_from"] == "checkpoint-2" and resumed.summary["reference_logps"] == "reused"
    expected, got = load_file(whole / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=lambda m: f"{name}: {m}")


def test_too_little_free_gpu_memory_stops_before_loading(tiny_model_dir, shapes_dir):
    processor = load_processor(str(tiny_model_dir))
    rows = load_preference_data(str(shapes_dir), "train[:4]", num_proc=1).dataset
    cfg = TrainConfig(model="smolvlm-2.2b", quantization="none", report_to=["none"])
    hog = _OtherProcessHolds(leave_gib=1.0)
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


def test_fused_dora_combine_compiles_and_matches_the_eager_one_on_cuda(monkeypatch):
    """Engine v2's one-kernel DoRA output (torch.compile, opt-in): enabled on CUDA after its own check against the
    eager formula, forward, backward and without gradients, in bf16 and float32."""
    from vlmpref.train.fast import dora

    monkeypatch.setenv("VLMPREF_FUSED_DORA", "1")
    monkeypatch.setitem(dora._compiled, "ok", None)
    if not dora.enable_fused_combine("cuda"):
        # why it is opt-in: its self-check against the eager formula fails on the H200 (benchmarks/RESULTS.md)
        pytest.xfail("the fused DoRA kernel's self-check refused it on this GPU; the eager formula is used")
    scale = (torch.rand(1, 256, device="cuda") + 0.5).requires_grad_()
    base, lora = (torch.randn(1000, 256, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(2))
    fused = dora._combine_fn(base)(scale, 1.0, base, lora)
    eager = dora.combine(scale, 1.0, base, lora)
    torch.testing.assert_close(fused.float(), eager.float(), rtol=1e-2, atol=1e-2)


def test_auto_packing_plans_within_the_cap_and_trains_on_cuda(tiny_model_dir, shapes_dir, tmp_path):
    """`vlmpref train` with the defaults on a GPU: packing planned against --max-gpu-memory, recorded, and every
    pair of the split trained once per epoch."""
    result = train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), output_dir=str(tmp_path / "o"),
                               num_train_epochs=1, per_device_train_batch_size=1, gradient_accumulation_steps=8,
                               report_to=["none"], dataset_num_proc=1, max_gpu_memory=4.0))
    packing = result.summary["packing"]
    assert packing["budget_gib"] <= 4.0 and packing["pairs_per_forward"] in (1, 2, 4, 8)
    assert result.summary["pairs_trained"] == len(result.data.dataset)
    assert result.summary["peak_memory_gib"] < 4.0
