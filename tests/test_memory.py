"""Memory limits without a GPU: the pre-check and the out-of-memory report, with CUDA mocked."""

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vlmpref.data import load_preference_data
from vlmpref.errors import VlmprefError
from vlmpref.models import load_processor
from vlmpref.plan.estimate import GIB
from vlmpref.train import TrainConfig, train
from vlmpref.plan.memory import check_memory

CUDA = torch.device("cuda")


def _fake_gpu(monkeypatch, free_gib, total_gib=8.0, peak_gib=7.6, name="NVIDIA GeForce RTX 4060"):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GIB), int(total_gib * GIB)))
    props = SimpleNamespace(name=name, total_memory=int(total_gib * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: int(peak_gib * GIB))


@pytest.fixture(scope="module")
def photo_rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.new("RGB", (640, 480), (20, 120, 200)).save(folder / "p.png")
    rows = [{"image": "p.png", "question": "What is in the image?", "chosen": "A blue wall. " * 30,
             "rejected": "A red car. " * 20}]
    (folder / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return load_preference_data(str(folder / "d.jsonl"), num_proc=1).dataset


def test_too_little_free_memory_stops_with_the_estimate_and_ways_to_fit(monkeypatch, photo_rows, tiny_model_dir):
    _fake_gpu(monkeypatch, free_gib=6.0)
    cfg = TrainConfig(model="smolvlm-2.2b", quantization="none", lora_scope="all", per_device_train_batch_size=2,
                      pairs_per_forward=2, report_to=["none"])
    with pytest.raises(VlmprefError) as caught:
        check_memory(cfg, photo_rows, load_processor(str(tiny_model_dir)), CUDA)
    text = str(caught.value)
    assert text.startswith("This run needs about ") and "of GPU memory, but only 6.0 of 8.0 GiB are free on " \
                                                          "NVIDIA GeForce RTX 4060" in text
    for way in ("--quantization 4bit: ", "--lora-scope language: ", "--image-longest-edge 768: ",
                "--image-longest-edge 384: ", "--pairs-per-forward 1: ", "--max-length ", "--preset "):
        assert way in text, way
    assert "(fits)" in text and text.endswith("(or pass --no-memory-check to try anyway).")
    assert "\n" not in text


def test_enough_free_memory_passes_and_the_check_can_be_turned_off(monkeypatch, photo_rows, tiny_model_dir):
    processor = load_processor(str(tiny_model_dir))
    cfg = TrainConfig(model="smolvlm-2.2b", report_to=["none"])
    _fake_gpu(monkeypatch, free_gib=60.0, total_gib=80.0)
    est = check_memory(cfg, photo_rows, processor, CUDA)
    assert est is not None and est.memory.reserved_gib < 60
    assert est.settings.image_width == 640 and est.settings.answer_tokens > 100  # read from the data
    _fake_gpu(monkeypatch, free_gib=0.5)
    assert check_memory(TrainConfig(model="smolvlm-2.2b", report_to=["none"], memory_check=False), photo_rows,
                        processor, CUDA) is None
    assert check_memory(cfg, photo_rows, processor, torch.device("cpu")) is None  # only GPUs are checked


def test_train_checks_memory_before_loading_the_model(monkeypatch, tiny_model_dir, shapes_dir, tmp_path):
    _fake_gpu(monkeypatch, free_gib=0.1)
    monkeypatch.setattr("vlmpref.train.run.default_device", lambda: CUDA)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr("vlmpref.train.run.load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(VlmprefError, match=r"This run needs about .* but only 0.1 of 8.0 GiB are free"):
        train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:4]", report_to=["none"],
                          output_dir=str(tmp_path / "out"), quantization="none", dataset_num_proc=1))


def test_max_gpu_memory_caps_the_device_train_runs_on(monkeypatch, tiny_model_dir, shapes_dir, tmp_path):
    """--max-gpu-memory on `cuda` (no index, as default_device gives it): PyTorch's cap needs a device index (a
    bare "cuda" failed on the H200, benchmarks/RESULTS.md run 11); the cap is the fraction of the card asked for."""
    from torch._utils import _get_device_index

    _fake_gpu(monkeypatch, free_gib=0.1, total_gib=16.0)
    monkeypatch.setattr("vlmpref.train.run.default_device", lambda: CUDA)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    capped = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: capped.append((fraction, _get_device_index(device))))
    monkeypatch.setattr("vlmpref.train.run.load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(VlmprefError, match="This run needs about"):  # the pre-check stops it, after the cap
        train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:4]", report_to=["none"],
                          output_dir=str(tmp_path / "out"), quantization="none", dataset_num_proc=1,
                          max_gpu_memory=4.0))
    assert capped == [(0.25, 0)]


def test_out_of_memory_in_training_is_reported_and_the_checkpoint_kept(monkeypatch, tiny_model_dir, shapes_dir,
                                                                       tmp_path):
    import vlmpref.train.fast.trainer as fast

    calls = []
    original = fast.combined_loss

    def runs_out(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(fast, "combined_loss", runs_out)
    _fake_gpu(monkeypatch, free_gib=1.0, total_gib=8.0, peak_gib=7.9)
    out = tmp_path / "run"
    with pytest.raises(VlmprefError) as caught:
        train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:6]", output_dir=str(out),
                          max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=1,
                          report_to=["none"], dataset_num_proc=1, quantization="none", gradient_checkpointing=False))
    text = str(caught.value)
    assert text.startswith(f"CUDA ran out of memory at step 3 (peak 7.9 of 8.0 GiB); the last checkpoint, "
                           f"{out / 'checkpoint-2'}, is kept (`vlmpref train --resume {out} --gradient-checkpointing "
                           "--pairs-per-forward 1` continues it with less memory)")
    assert "the estimate for this run was about" in text and "a new run fits with one of:" in text
    assert (out / "checkpoint-2" / "optimizer.pt").is_file()


def test_training_asks_for_expandable_segments_unless_the_user_configured_the_allocator(monkeypatch):
    import os

    from vlmpref.models.loading import prefer_expandable_segments

    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.setenv(name, "")  # recorded, so the test leaves the environment as it found it
        monkeypatch.delenv(name)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert prefer_expandable_segments() is None  # too late once CUDA has started: nothing is changed
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert prefer_expandable_segments() == "expandable_segments:True" == os.environ["PYTORCH_CUDA_ALLOC_CONF"]
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    assert prefer_expandable_segments() == "max_split_size_mb:128"  # the user's choice wins
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "backend:cudaMallocAsync")
    assert prefer_expandable_segments() == "backend:cudaMallocAsync"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
