"""The fast engine computes what TRL computes: same log-probs, losses, gradients; caches change nothing."""

from pathlib import Path

import pytest
import torch
from trl import DPOConfig
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from vlmpref.data import load_preference_data
from vlmpref.data.normalize import trl_example
from vlmpref.models import load_model, load_processor, lora_config
from vlmpref.train.fast import FastDPOTrainer, dora
from vlmpref.train.fast.caches import ImageFeatureCache, ReferenceLogps
from vlmpref.train.fast.forward import packed_logps
from vlmpref.train.fast.losses import LossInputs, combined_loss
from vlmpref.train.fast.packing import CHOSEN, PROMPT, REJECTED, dense_mask, pack, tokenize_pair

from helpers import losses_and_gradient_error, trl_and_fast_on_one_batch, trl_and_fast_trainers


@pytest.fixture(scope="module")
def rows(shapes_dir):
    return list(load_preference_data(str(shapes_dir), "test[:6]", num_proc=1).dataset)


def _duplicated_logps(model, processor, rows):
    """TRL's layout: [prompt | chosen] and [prompt | rejected] as separate sequences, full logits."""
    batch = DataCollatorForVisionPreference(processor=processor)([trl_example(r) for r in rows])
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.get_input_embeddings().weight.dtype)
    logits = model(**inputs).logits
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:]
    sums = (logps * mask).sum(1)
    n = len(rows)
    return sums[:n], sums[n:], mask[:n].sum(1), mask[n:].sum(1), logps[:n][mask[:n].bool()]


def test_mask_rejected_sees_prompt_not_chosen_and_positions_restart(tiny_model_dir, rows):
    processor = load_processor(str(tiny_model_dir))
    pair = tokenize_pair(rows[0], processor)
    batch = pack([pair], layout="packed")
    mask = dense_mask(batch)[0, 0]
    role = batch.role[0]
    p, c = len(pair.prompt_ids), len(pair.chosen_ids)
    first_rejected = p + c
    assert role[p - 1] == PROMPT and role[p] == CHOSEN and role[first_rejected] == REJECTED
    assert mask[first_rejected, :p].all()                      # sees the whole prompt
    assert not mask[first_rejected, p:first_rejected].any()    # sees no chosen token
    assert mask[first_rejected, first_rejected]
    assert batch.position_ids[0, first_rejected] == p          # restarts where the prompt ends
    assert batch.position_ids[0, p] == p


def test_pairs_never_see_each_other(tiny_model_dir, rows):
    processor = load_processor(str(tiny_model_dir))
    batch = pack([tokenize_pair(r, processor) for r in rows[:3]], layout="packed")
    mask = dense_mask(batch)[0, 0]
    seg = batch.segment[0]
    assert not (mask & (seg[:, None] != seg[None, :])).any()


@pytest.mark.parametrize("layout", ["rows", "packed"])
@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_smolvlm_dir", "tiny_llava_dir"])
def test_shared_prefix_logps_equal_duplicated_in_float64(request, fixture, layout, rows):
    path = str(request.getfixturevalue(fixture))
    model, processor = load_model(path, dtype=torch.float64), load_processor(path)
    with torch.no_grad():
        chosen, rejected, *_ = _duplicated_logps(model, processor, rows)
        out = packed_logps(model, pack([tokenize_pair(r, processor) for r in rows], layout=layout))
    torch.testing.assert_close(out.chosen, chosen, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.rejected, rejected, rtol=1e-10, atol=1e-10)


def _peft_pair(path, scope="all", dtype=torch.float64, seed=0):
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = load_model(path, dtype=dtype)
    peft_model = get_peft_model(model, lora_config(model, scope=scope, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter, so policy != reference
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_((torch.randn(p.shape, generator=generator) * 0.05).to(p.dtype))
    return peft_model


# sigmoid + sft (summed and per-token log-probs) by default; each other loss, 15-40 s apiece, in the slow set
# (every loss is also checked against TRL's on the same batch below, and against hand-computed values)
@pytest.mark.parametrize("losses", [["sigmoid", "sft"]] + [
    pytest.param(losses, marks=pytest.mark.slow) for losses in (["sigmoid"], ["ipo"], ["hinge"], ["robust"],
                                                               ["sigmoid_norm"], ["apo_zero"], ["apo_down"])])
def test_loss_and_gradients_equal_duplicated_in_float64(tiny_model_dir, rows, losses):
    path = str(tiny_model_dir)
    processor = load_processor(path)
    results = []
    for packed in (False, True):
        model = _peft_pair(path)
        with torch.no_grad(), model.disable_adapter():
            ref_c, ref_r, *_ = _duplicated_logps(model, processor, rows)
        if packed:
            dora.enable_norm_cache(model)
            out = packed_logps(model, pack([tokenize_pair(r, processor) for r in rows]))
            batch = pack([tokenize_pair(r, processor) for r in rows])
            c, r, token = out.chosen, out.rejected, out.token_logps[batch.target_is_chosen]
            nc, nr = batch.chosen_lengths, batch.rejected_lengths
        else:
            c, r, nc, nr, token = _duplicated_logps(model, processor, rows)
        x = LossInputs(c, r, ref_c, ref_r, nc, nr, token)
        loss = combined_loss(losses, None, x, beta=0.3)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (loss_dup, grads_dup), (loss_packed, grads_packed) = results
    torch.testing.assert_close(loss_packed, loss_dup, rtol=1e-10, atol=1e-12)
    assert grads_dup.keys() == grads_packed.keys() and len(grads_dup) > 50
    for name in grads_dup:  # norm-wise relative error per parameter tensor
        error = (grads_packed[name] - grads_dup[name]).norm() / grads_dup[name].norm().clamp(min=1e-30)
        assert error < 1e-6, f"{name}: relative gradient error {error:.2e}"


@pytest.mark.parametrize("losses", [["sigmoid"], ["ipo"], ["hinge"], ["sigmoid", "sft"]])
def test_equals_trl_dpotrainer_on_the_same_batch(tiny_model_dir, rows, tmp_path, losses):
    """Same weights, same batch: TRL's DPOTrainer.compute_loss and ours agree (float32)."""
    from datasets import Dataset

    dataset = Dataset.from_list([dict(r) for r in rows]).select_columns(["images", "prompt", "chosen", "rejected"])
    trl_trainer, fast, loss_trl, loss_fast, grad_error = trl_and_fast_on_one_batch(str(tiny_model_dir), dataset,
                                                                                  tmp_path, losses)
    assert loss_fast.item() == pytest.approx(loss_trl.item(), rel=1e-5)
    assert grad_error < 5e-5
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert fast._metrics["train"][key][0] == pytest.approx(trl_trainer._metrics["train"][key][0],
                                                               rel=1e-4, abs=1e-6), key


def test_every_loss_type_equals_trls_own_loss_on_the_same_batch(tiny_model_dir, rows, tmp_path):
    """Each loss the fast engine offers, against TRL's DPOTrainer (its `_compute_loss`) on the same weights and
    batch: the loss and the adapter gradients (float32). Label smoothing 0.1 so robust differs from sigmoid."""
    from datasets import Dataset

    from vlmpref.train.fast.losses import LOSS_TYPES

    dataset = Dataset.from_list([dict(r) for r in rows]).select_columns(["images", "prompt", "chosen", "rejected"])
    trl_trainer, fast, trl_batch, fast_batch = trl_and_fast_trainers(str(tiny_model_dir), dataset, tmp_path,
                                                                     ["sigmoid"], label_smoothing=0.1)
    values = {}
    for kind in sorted(LOSS_TYPES):
        for trainer in (trl_trainer, fast):  # both read their loss settings at each call
            trainer.loss_types, trainer.loss_weights = [kind], [1.0]
        loss_trl, loss_fast, grad_error = losses_and_gradient_error(trl_trainer, fast, trl_batch, fast_batch)
        assert loss_fast.item() == pytest.approx(loss_trl.item(), rel=1e-5), kind
        assert grad_error < 5e-5, kind
        values[kind] = loss_trl.item()
    assert len(set(values.values())) == len(values), values  # every kind computed its own loss


def test_dora_norm_cache_gives_peft_outputs_and_refreshes_after_a_step(tiny_model_dir, rows):
    path = str(tiny_model_dir)
    processor = load_processor(path)
    batch = pack([tokenize_pair(r, processor) for r in rows[:3]])
    model = _peft_pair(path)
    with torch.no_grad():
        expected = packed_logps(model, batch).chosen
    layers = dora.enable_norm_cache(model)
    assert layers
    with torch.no_grad():
        cached = packed_logps(model, batch).chosen
        torch.testing.assert_close(cached, expected, rtol=1e-10, atol=1e-12)
        for layer in layers:  # an update of the magnitude and of lora_B ...
            layer.weight.mul_(1.1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)
        dora.invalidate(layers)  # ... what the optimizer-step hook does
        after = packed_logps(model, batch).chosen
        dora.disable_norm_cache(layers)
        peft_after = packed_logps(model, batch).chosen
    torch.testing.assert_close(after, peft_after, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(after, expected)


def _short_run(path, dataset, out, image_cache, **kw):
    from transformers import set_seed

    set_seed(0)
    model = load_model(path)
    config = DPOConfig(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                       max_steps=3, learning_rate=1e-2, bf16=False, use_cpu=True, report_to=[], save_strategy="no",
                       activation_checkpointing=False, seed=0, loss_type=["sigmoid", "sft"])
    trainer = FastDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=load_processor(path),
                             peft_config=lora_config(model, scope="language"), image_cache=image_cache, **kw)
    trainer.train()
    return trainer, {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_image_and_reference_caches_do_not_change_training(tiny_model_dir, shapes_dir, tmp_path):
    dataset = load_preference_data(str(shapes_dir), "train[:8]", num_proc=1).dataset
    cached, with_cache = _short_run(str(tiny_model_dir), dataset, tmp_path / "a", image_cache=True)
    uncached, without = _short_run(str(tiny_model_dir), dataset, tmp_path / "b", image_cache=False)
    assert cached.image_cache is not None and cached.image_cache.hits > 0
    assert uncached.image_cache is None
    for name in with_cache:
        torch.testing.assert_close(with_cache[name], without[name], rtol=1e-5, atol=1e-6, msg=name)
    assert (tmp_path / "a" / "reference_logps.json").is_file()


@pytest.mark.parametrize("loss_type", [["sigmoid"], ["sigmoid", "sft"]])
def test_pairs_per_forward_regroups_without_changing_the_update(tiny_model_dir, shapes_dir, tmp_path, loss_type):
    """1 pair x 4 accumulations (as configured), 4 pairs x 1 and 2 pairs x 2 give the same optimizer steps; with the
    SFT term too, whose token mean stays within each configured micro-batch of one pair."""
    from transformers import set_seed

    dataset = load_preference_data(str(shapes_dir), "train[:8]", num_proc=1).dataset
    path = str(tiny_model_dir)
    weights = []
    for ppf in (1, 4, 2):
        set_seed(0)
        model = load_model(path)
        # plain SGD: an update proportional to the gradient, so a wrongly scaled accumulation would show
        config = DPOConfig(output_dir=str(tmp_path / f"p{ppf}"), per_device_train_batch_size=1,
                           gradient_accumulation_steps=4, max_steps=2, learning_rate=0.5, optim="sgd", bf16=False,
                           use_cpu=True, report_to=[], save_strategy="no", activation_checkpointing=False, seed=0,
                           loss_type=loss_type)
        trainer = FastDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=load_processor(path),
                                 peft_config=lora_config(model, scope="language"), pairs_per_forward=ppf)
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
        assert trainer.args.per_device_train_batch_size == ppf and trainer.args.gradient_accumulation_steps == 4 // ppf
        # the caller's DPOConfig is copied, not regrouped in place
        assert config.per_device_train_batch_size == 1 and config.gradient_accumulation_steps == 4
    for other in weights[1:]:
        for name in weights[0]:
            torch.testing.assert_close(other[name], weights[0][name], rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"{name}: {m}")


def test_reference_logps_are_saved_and_reused(tiny_model_dir, shapes_dir, tmp_path, monkeypatch):
    dataset = load_preference_data(str(shapes_dir), "train[:4]", num_proc=1).dataset
    first, _ = _short_run(str(tiny_model_dir), dataset, tmp_path / "r", image_cache=False)
    calls = []
    import vlmpref.train.fast.trainer as trainer_module

    original = trainer_module.packed_logps
    monkeypatch.setattr(trainer_module, "packed_logps", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = load_model(str(tiny_model_dir))
    again = FastDPOTrainer(model=model, args=DPOConfig(output_dir=str(tmp_path / "r"), bf16=False, use_cpu=True,
                                                       report_to=[], per_device_train_batch_size=4),
                           train_dataset=dataset, processing_class=load_processor(str(tiny_model_dir)),
                           peft_config=lora_config(model, scope="language"))
    assert not calls, "reference log-probs were recomputed instead of read from the run folder"
    assert again.reference.chosen == first.reference.chosen


def test_image_feature_cache_spills_to_disk_and_reads_back(tmp_path):
    cache = ImageFeatureCache(tmp_path, "model-x", max_memory_bytes=3000)
    tensors = {f"k{i}": torch.randn(10, 30) for i in range(4)}  # 1200 bytes each
    for key, value in tensors.items():
        cache.put(key, value)
    assert cache.memory_bytes <= 3000 and cache.spilled >= 2
    for key, value in tensors.items():
        assert key in cache
        torch.testing.assert_close(cache.get(key), value)
    assert cache.get("missing") is None
    # a different model namespace never sees these features
    assert "k0" not in ImageFeatureCache(tmp_path, "model-y", max_memory_bytes=3000)


def test_reference_file_with_another_fingerprint_is_ignored(tmp_path):
    ref = ReferenceLogps("a")
    ref.add([0, 1], torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0]))
    ref.save(tmp_path / "ref.json")
    assert ReferenceLogps.load(tmp_path / "ref.json", "a").lookup([1])[0].item() == -2.0
    assert ReferenceLogps.load(tmp_path / "ref.json", "b") is None


def test_train_with_the_fast_engine_in_4bit_changes_only_adapters(tiny_model_dir, shapes_dir, tmp_path):
    from transformers import TrainerCallback

    from vlmpref.train import TrainConfig, train

    class Snapshot(TrainerCallback):
        """The adapter as training starts (after its initialization), to compare the trained one with."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    snapshot = Snapshot()
    result = train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:8]",
                               output_dir=str(tmp_path / "o"), max_steps=2, per_device_train_batch_size=4,
                               gradient_accumulation_steps=1, learning_rate=1e-2, report_to=["none"],
                               dataset_num_proc=1, quantization="4bit", lora_scope="language", engine="fast",
                               save_steps=2), callbacks=[snapshot])
    assert result.summary["engine"] == "fast"
    trainable = {n: p for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and trainable.keys() == snapshot.adapter.keys()
    for name, param in trainable.items():
        assert not torch.equal(snapshot.adapter[name], param.detach()), f"{name} did not change"
    assert (tmp_path / "o" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "o" / "reference_logps.json").is_file()
    fresh = {n: p.detach().float() for n, p in load_model(str(tiny_model_dir), quantization="4bit",
                                                          dtype=torch.bfloat16).named_parameters()}
    for name, param in result.model.named_parameters():
        if not param.requires_grad:
            key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
            assert torch.equal(fresh[key], param.detach().float()), f"frozen {name} changed"


@pytest.mark.parametrize("image_column", ["images", "image"])
def test_drop_in_for_trl_on_raw_rlaif_v_style_rows(tiny_model_dir, tmp_path, image_column):
    """The guide's script with `FastDPOTrainer as DPOTrainer`: a raw Hub-style dataset, no vlmpref loading."""
    from datasets import Dataset
    from PIL import Image
    from trl import DPOConfig

    from vlmpref.train.fast import FastDPOTrainer as DPOTrainer

    def row(i):
        image = Image.new("RGB", (64, 64), (40 * i, 0, 200))
        return {image_column: [image] if image_column == "images" else image,
                "prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                        {"type": "text", "text": "What color is it?"}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": f"It is blue {i}."}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "It is red."}]}]}

    dataset = Dataset.from_list([row(i) for i in range(4)])
    model = load_model(str(tiny_model_dir))
    trainer = DPOTrainer(model=model, args=DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2,
                                                     max_steps=2, bf16=False, use_cpu=True, report_to=[],
                                                     save_strategy="no", learning_rate=1e-2),
                         train_dataset=dataset, processing_class=load_processor(str(tiny_model_dir)),
                         peft_config=lora_config(model))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in trainer.model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(before[name], param.detach()), f"{name} did not change"
        else:
            assert torch.equal(before[name], param.detach()), f"frozen {name} changed"
    assert len(trainer.reference) == 4


def _parameters(test, argname: str) -> list:
    """The values a test is parametrized with for `argname`."""
    return [value for mark in test.pytestmark if mark.name == "parametrize" and mark.args[0] == argname
            for value in mark.args[1]]


def test_every_family_the_engine_accepts_is_checked_above(request, tiny_family):
    """The model types of the models the float64 comparisons run on (read from their saved configs) are exactly
    the ones the fast engine accepts."""
    import json

    import test_families
    from vlmpref.train.fast import FAST_MODEL_TYPES

    folders = [request.getfixturevalue(name)
               for name in _parameters(test_shared_prefix_logps_equal_duplicated_in_float64, "fixture")]
    folders += [tiny_family(family)
                for family in _parameters(test_families.test_shared_prefix_logps_equal_duplicated_in_float64, "family")]
    checked = {json.loads((Path(folder) / "config.json").read_text())["model_type"] for folder in folders}
    assert set(FAST_MODEL_TYPES) == checked


def test_an_unsupported_family_falls_back_to_trl_with_a_notice(tiny_llava_dir, shapes_dir, tmp_path, monkeypatch,
                                                                capsys):
    """Stands in for a family the fast engine does not handle (Qwen2-VL's 3-D positions, say) by taking LLaVA
    off the list: `vlmpref train` says so in one line and trains with TRL; the drop-in class refuses."""
    import vlmpref.train.fast.forward as forward
    from vlmpref.train import TrainConfig, train

    monkeypatch.setattr(forward, "FAST_MODEL_TYPES", ("idefics3", "smolvlm"))
    result = train(TrainConfig(model=str(tiny_llava_dir), dataset=str(shapes_dir), split="train[:4]",
                               output_dir=str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=2,
                               gradient_accumulation_steps=1, report_to=["none"], dataset_num_proc=1,
                               quantization="none", engine="fast", pairs_per_forward=2))
    assert ("note: the fast engine does not handle llava models; training with TRL's DPOTrainer (--engine trl) "
            "instead, one pair per forward, without --pairs-per-forward (fast engine only).") in capsys.readouterr().out
    assert result.summary["engine"] == "trl" and result.summary["steps"] == 1
    dataset = load_preference_data(str(shapes_dir), "train[:2]", num_proc=1).dataset
    with pytest.raises(ValueError, match="FastDPOTrainer supports idefics3, smolvlm models, not llava; "
                                         "use trl.DPOTrainer"):
        FastDPOTrainer(model=load_model(str(tiny_llava_dir)), args=DPOConfig(str(tmp_path / "f"), use_cpu=True,
                                                                           report_to=[]),
                       train_dataset=dataset, processing_class=load_processor(str(tiny_llava_dir)))
