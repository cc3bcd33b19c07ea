"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3 and InternVL in the fast engine: exact against TRL's layout.

Rows carry images of different sizes, so Qwen's images get different patch grids (dynamic resolution) and
InternVL's different tile grids.
"""

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from vlmpref.data import load_preference_data
from vlmpref.data.normalize import trl_example
from vlmpref.models import load_model, load_processor, lora_config
from vlmpref.train.fast import families
from vlmpref.train.fast.forward import packed_logps
from vlmpref.train.fast.losses import LossInputs, combined_loss
from vlmpref.train.fast.packing import pack, tokenize_pair

from helpers import trl_and_fast_on_one_batch

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl")
SIZES = [(64, 64), (64, 48), (48, 64), (64, 32), (32, 64), (56, 56)]


@pytest.fixture(scope="module")
def rows(shapes_dir):
    rows = list(load_preference_data(str(shapes_dir), "test[:6]", num_proc=1).dataset)
    for row, size in zip(rows, SIZES):
        row["images"] = [row["images"][0].resize(size)]
    return rows


def duplicated_logps(model, processor, rows):
    """TRL's layout: [prompt | chosen] and [prompt | rejected] as separate sequences through the model's own
    forward (its own positions and masks), full logits. Returns summed chosen and rejected log-probs."""
    batch = DataCollatorForVisionPreference(processor=processor)([trl_example(r) for r in rows])
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.get_input_embeddings().weight.dtype)
    logits = model(**inputs).logits
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:]
    sums = (logps * mask).sum(1)
    n = len(rows)
    return sums[:n], sums[n:], mask[:n].sum(1), mask[n:].sum(1), logps[:n][mask[:n].bool()]


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_logps_equal_duplicated_in_float64(tiny_family, family, rows):
    path = str(tiny_family(family))
    model, processor = load_model(path, dtype=torch.float64), load_processor(path)
    with torch.no_grad():
        chosen, rejected, *_ = duplicated_logps(model, processor, rows)
        for layout in ("rows", "packed"):
            out = packed_logps(model, pack([tokenize_pair(r, processor) for r in rows], layout=layout))
            torch.testing.assert_close(out.chosen, chosen, rtol=1e-10, atol=1e-10, msg=layout)
            torch.testing.assert_close(out.rejected, rejected, rtol=1e-10, atol=1e-10, msg=layout)


# What each family's hook does, shown by switching it off: the log-probs then leave TRL's
WITHOUT = {
    "qwen2_vl": ("3-D positions", lambda mp: mp.setattr(families, "MROPE_TYPES", ())),
    "qwen3_vl": ("deepstack features", lambda mp: mp.setattr(families, "DEEPSTACK_TYPES", ())),
    "gemma3": ("bidirectional image blocks", lambda mp: mp.setattr(families, "BIDIRECTIONAL_IMAGE_TYPES", ())),
    "gemma3-window": ("sliding window", lambda mp: mp.setattr(families, "_sliding_window", lambda model: None)),
}


@pytest.mark.parametrize("case", list(WITHOUT))
def test_each_family_hook_is_needed(tiny_family, case, rows, monkeypatch):
    family = case.split("-")[0]
    path = str(tiny_family(family))
    model, processor = load_model(path, dtype=torch.float64), load_processor(path)
    what, switch_off = WITHOUT[case]
    with torch.no_grad():
        chosen, rejected, *_ = duplicated_logps(model, processor, rows[:3])
        switch_off(monkeypatch)
        out = packed_logps(model, pack([tokenize_pair(r, processor) for r in rows[:3]]))
    error = max((out.chosen - chosen).abs().max(), (out.rejected - rejected).abs().max())
    assert error > 1e-4, f"{family} without {what} still matched TRL ({error:.1e}): the test would not see it"


def test_qwen_rejected_positions_restart_on_all_three_axes(tiny_family, rows):
    path = str(tiny_family("qwen2_vl"))
    model, processor = load_model(path), load_processor(path)
    pair = tokenize_pair(rows[1], processor)  # a 64 x 48 image: 4 x 3 merged tokens
    positions = families.mrope_positions(model, pack([pair], layout="packed"))[:, 0]
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    image = [i for i, t in enumerate(pair.prompt_ids) if t == model.config.image_token_id]
    assert len(image) == 12 and pair.layout["image_grid_thw"].tolist() == [[1, 6, 8]]
    # image tokens: one temporal position, 3 rows (height axis) x 4 columns (width axis)
    assert positions[0, image].unique().numel() == 1
    assert positions[1, image].unique().numel() == 3 and positions[2, image].unique().numel() == 4
    start = positions[:, p - 1].max() + 1  # the prompt ends on text: all three axes equal there
    expected = start + torch.arange(c)
    for axis in range(3):
        torch.testing.assert_close(positions[axis, p:p + c], expected)
        torch.testing.assert_close(positions[axis, p + c:p + c + r], start + torch.arange(r))
    assert positions[:, p - 1].max() < p - 1  # 12 image tokens take 4 positions on the text axis


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_adapter_gradients_equal_duplicated_in_float64(tiny_family, family, rows):
    """DoRA on every target (Qwen2.5-VL's vision MLP too): loss and gradients of the shared-prefix formulation
    equal the duplicated one."""
    from peft import get_peft_model

    path = str(tiny_family(family))
    processor = load_processor(path)
    results = []
    for shared in (False, True):
        torch.manual_seed(0)
        model = load_model(path, dtype=torch.float64)
        model = get_peft_model(model, lora_config(model, dropout=0.0))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a trained-looking adapter, so policy != reference
            for p in model.parameters():
                if p.requires_grad:
                    p.add_((torch.randn(p.shape, generator=generator) * 0.05).to(p.dtype))
            with model.disable_adapter():
                ref_c, ref_r, *_ = duplicated_logps(model, processor, rows[:4])
        if shared:
            batch = pack([tokenize_pair(r, processor) for r in rows[:4]])
            out = packed_logps(model, batch)
            x = LossInputs(out.chosen, out.rejected, ref_c, ref_r, batch.chosen_lengths, batch.rejected_lengths,
                           out.token_logps[batch.target_is_chosen])
        else:
            c, r, nc, nr, token = duplicated_logps(model, processor, rows[:4])
            x = LossInputs(c, r, ref_c, ref_r, nc, nr, token)
        loss = combined_loss(["sigmoid", "sft"], None, x, beta=0.3)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_dup, grads_dup), (loss_shared, grads_shared) = results
    torch.testing.assert_close(loss_shared, loss_dup, rtol=1e-10, atol=1e-12)
    assert grads_dup.keys() == grads_shared.keys() and len(grads_dup) > 20
    for name in grads_dup:
        error = (grads_shared[name] - grads_dup[name]).norm() / grads_dup[name].norm().clamp(min=1e-30)
        assert error < 1e-6, f"{name}: relative gradient error {error:.2e}"


def _equals_trl(tiny_family, family, rows, tmp_path):
    from datasets import Dataset

    dataset = Dataset.from_list([dict(r) for r in rows]).select_columns(["images", "prompt", "chosen", "rejected"])
    trl_trainer, fast, loss_trl, loss_fast, grad_error = trl_and_fast_on_one_batch(str(tiny_family(family)), dataset,
                                                                                  tmp_path, ["sigmoid", "sft"])
    assert loss_fast.item() == pytest.approx(loss_trl.item(), rel=1e-5)
    assert grad_error < 5e-5
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert fast._metrics["train"][key][0] == pytest.approx(trl_trainer._metrics["train"][key][0],
                                                               rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_qwen2_vl_equals_trl_dpotrainer_on_the_same_batch(tiny_family, rows, tmp_path):
    """Same weights, same batch: TRL's DPOTrainer.compute_loss and FastDPOTrainer's agree (float32)."""
    _equals_trl(tiny_family, "qwen2_vl", rows, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "qwen2_vl"])
def test_family_equals_trl_dpotrainer_on_the_same_batch(tiny_family, family, rows, tmp_path):
    _equals_trl(tiny_family, family, rows, tmp_path)


def _train(model_dir, data_dir, out, **kw):
    from vlmpref.train import TrainConfig, train

    options = dict(model=str(model_dir), dataset=str(data_dir), split="train[:8]", output_dir=str(out), max_steps=2,
                   per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-2,
                   report_to=["none"], dataset_num_proc=1, quantization="none", seed=0, save_steps=2)
    options.update(kw)
    return train(TrainConfig(**options))


def _adapters(result):
    return {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["qwen3_vl"])
def test_cached_features_and_pairs_without_pixels_give_the_same_logps(tiny_family, family, rows):
    """What the image cache hands the forward: features encoded apart (one vision call for all images, Qwen3-VL's
    deepstack features with them) and pairs tokenized without pixels, which keep their image grid for the 3-D
    positions."""
    from vlmpref.train.fast.forward import batch_image_features

    path = str(tiny_family(family))
    model, processor = load_model(path, dtype=torch.float64), load_processor(path)
    with torch.no_grad():
        with_pixels = pack([tokenize_pair(r, processor) for r in rows])
        expected = packed_logps(model, with_pixels)
        features = batch_image_features(model, with_pixels.pixel_inputs)
        without = pack([tokenize_pair(r, processor, with_pixels=False) for r in rows])
        assert not any(without.pixel_inputs)
        cached = packed_logps(model, without, features)
    assert features.shape[0] == int((with_pixels.input_ids == model.config.image_token_id).sum())
    torch.testing.assert_close(cached.chosen, expected.chosen, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cached.rejected, expected.rejected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
def test_vision_calls_bounded_in_size_give_the_same_features(tiny_family, family, rows, monkeypatch):
    """The one-time pass encodes a batch's images in calls of bounded size (a 16-pair batch of large images ran out
    of memory in one call): one call per pair gives the same features as one call for the whole batch."""
    from vlmpref.train.fast import forward

    path = str(tiny_family(family))
    model, processor = load_model(path, dtype=torch.float64), load_processor(path)
    pixels = pack([tokenize_pair(r, processor) for r in rows]).pixel_inputs
    calls = []
    original = forward.image_features
    monkeypatch.setattr(forward, "image_features", lambda m, p: calls.append(p) or original(m, p))
    with torch.no_grad():
        joined = forward.batch_image_features(model, pixels)
        joined_calls, calls[:] = len(calls), []
        apart = forward.batch_image_features(model, pixels, max_elements=1)
    assert joined_calls < len(pixels) and len(calls) == len(pixels)  # a pair is never split, even when too big
    torch.testing.assert_close(apart, joined, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_vl"])
def test_image_cache_changes_nothing(tiny_family, family, shapes_dir, tmp_path):
    """A training run with the image cache equals one without (Qwen3-VL: 3-D positions and deepstack features)."""
    cached = _train(tiny_family(family), shapes_dir, tmp_path / "on", lora_scope="language", image_cache="on")
    uncached = _train(tiny_family(family), shapes_dir, tmp_path / "off", lora_scope="language", image_cache="off")
    assert cached.summary["engine"] == "fast" and uncached.summary["engine"] == "fast"
    assert (tmp_path / "on" / "reference_logps.json").is_file()
    with_cache, without = _adapters(cached), _adapters(uncached)
    for name in with_cache:
        torch.testing.assert_close(with_cache[name], without[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in with_cache.items() if "lora_B" in n)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("engine", ["fast", "trl"])
def test_family_trains_with_each_engine(tiny_family, family, engine, shapes_dir, tmp_path):
    result = _train(tiny_family(family), shapes_dir, tmp_path / "o", engine=engine, lora_scope="all")
    assert result.summary["engine"] == engine and result.summary["steps"] == 2
    assert (tmp_path / "o" / "adapter_model.safetensors").is_file()
    assert all(p.abs().sum() > 0 for n, p in _adapters(result).items() if "lora_B" in n)


def test_a_family_taken_off_the_list_falls_back_to_trl_on_a_real_qwen2_vl(tiny_family, shapes_dir, tmp_path,
                                                                         monkeypatch, capsys):
    """TRL's DPOTrainer trains a real Qwen2-VL (3-D positions through its own forward) when the fast engine refuses
    the family: the path any family not proven exact takes."""
    import vlmpref.train.fast.forward as forward

    monkeypatch.setattr(forward, "FAST_MODEL_TYPES", tuple(t for t in forward.FAST_MODEL_TYPES if t != "qwen2_vl"))
    result = _train(tiny_family("qwen2_vl"), shapes_dir, tmp_path / "o", split="train[:4]", max_steps=1,
                    per_device_train_batch_size=2, pairs_per_forward=2)
    assert "note: the fast engine does not handle qwen2_vl models; training with TRL's DPOTrainer" in \
        capsys.readouterr().out
    assert result.summary["engine"] == "trl" and result.summary["steps"] == 1
    assert all(p.abs().sum() > 0 for n, p in _adapters(result).items() if "lora_B" in n)
