"""The default command is the fast, safe one: packing chosen for the device, nothing ignored silently, the
whole split of local data, a one-time pass that does its work once, counts of what was trained."""

import json

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig

from vlmpref import config as config_io
from vlmpref.cli import main
from vlmpref.data import load_preference_data
from vlmpref.data.sources import default_split, load_raw
from vlmpref.errors import VlmprefError
from vlmpref.models import load_model, load_processor, lora_config
from vlmpref.plan.autopack import PACKING_MARGIN, plan_packing
from vlmpref.plan.estimate import RunSettings, estimate
from vlmpref.plan.shapes import describe_model
from vlmpref.train import TrainConfig, train
from vlmpref.train.fast import FastDPOTrainer
from vlmpref.plan import autopack
from vlmpref.train.fast.caches import images_key
from vlmpref.train.fast import packing as packing_module
from vlmpref.train.fast import trainer as trainer_module


# ---- auto packing


def test_plan_packing_takes_the_largest_divisor_whose_estimate_fits_with_the_margin():
    shape = describe_model("smolvlm-2.2b")
    settings = RunSettings(engine="fast", lora_scope="language", answer_tokens=160, gradient_accumulation_steps=32)
    needed = {p: estimate(shape, RunSettings(**{**settings.__dict__, "pairs_per_forward": p}), "12gb").memory
              .reserved_gib for p in (1, 2, 4, 8, 16, 32)}
    assert needed[1] < needed[2] < needed[4] < needed[8] < needed[16]
    # a budget just above 8 pairs' estimate plus the margin takes 8, and just below it takes 4
    budget = needed[8] * (1 + PACKING_MARGIN) + 0.01
    plan = plan_packing(shape, settings, 32, budget, "a test card")
    assert plan.pairs_per_forward == 8 and plan.needed_gib[8] == pytest.approx(needed[8])
    assert plan.reason.startswith(f"8 pair(s) per forward (auto, out of 1, 2, 4, 8, 16, 32: estimated "
                                  f"{needed[8]:.1f} GiB + 15% margin fits the {budget:.1f} GiB free on a test card; "
                                  f"16 would need {needed[16]:.1f} GiB)")
    assert plan_packing(shape, settings, 32, budget - 0.02, "x").pairs_per_forward == 4
    # only divisors of the effective batch: 12 pairs per step never packs 8
    assert plan_packing(shape, settings, 12, budget, "x").pairs_per_forward == 6
    # nothing fits: one pair, said plainly
    tiny = plan_packing(shape, settings, 32, 0.5, "x")
    assert tiny.pairs_per_forward == 1 and "even 1 pair is estimated" in tiny.reason


def _trainer(path, dataset, out, **kw):
    model = load_model(path)
    config = DPOConfig(output_dir=str(out), per_device_train_batch_size=1, gradient_accumulation_steps=8,
                       max_steps=1, learning_rate=0.5, optim="sgd", bf16=False, use_cpu=True, report_to=[],
                       save_strategy="no", activation_checkpointing=False, seed=0)
    return FastDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=load_processor(path),
                          peft_config=lora_config(model, scope="language"), **kw), config


def test_auto_is_the_default_and_plans_within_the_memory_it_may_use(tiny_model_dir, shapes_dir, tmp_path, capsys):
    """On a CPU the budget is half the free system memory; a budget (memory_budget_gib) caps it, as on a GPU."""
    dataset = load_preference_data(str(shapes_dir), "train[:8]", num_proc=1).dataset
    trainer, _ = _trainer(str(tiny_model_dir), dataset, tmp_path / "roomy")
    assert trainer.packing.pairs_per_forward == 8  # a tiny model: the whole effective batch fits
    assert "Packing 8 pair(s) per forward (auto, out of 1, 2, 4, 8: estimated" in capsys.readouterr().out
    assert "free on the CPU (half the free system memory)" in trainer.packing.reason
    needed = trainer.packing.needed_gib
    budget = needed[4] * (1 + PACKING_MARGIN) + 0.001  # room for 4 pairs, not 8
    trainer, config = _trainer(str(tiny_model_dir), dataset, tmp_path / "a", memory_budget_gib=budget)
    assert trainer.packing.pairs_per_forward == 4 and trainer.pairs_per_forward == 4
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (4, 2)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (1, 8)  # caller's untouched
    seen = []
    original = trainer_module.FastDPOTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append(inputs["packed"].num_pairs)
        return original(self, model, inputs, *args, **kwargs)

    trainer.compute_loss = spy.__get__(trainer)
    trainer.train()
    assert seen == [4, 4] and trainer.pairs_trained == 8


def test_auto_uses_the_plan_it_is_given_on_a_gpu(tiny_model_dir, shapes_dir, tmp_path, monkeypatch):
    """On a GPU `autopack.plan` decides; the trainer regroups to its answer (the micro-batch the loader builds)."""
    from vlmpref.plan.autopack import PackingPlan

    monkeypatch.setattr(autopack, "plan", lambda *a, **k: PackingPlan(2, 12.0, {2: 3.0}, "2 pair(s) per forward"))
    dataset = load_preference_data(str(shapes_dir), "train[:8]", num_proc=1).dataset
    trainer, _ = _trainer(str(tiny_model_dir), dataset, tmp_path / "a")
    assert trainer.get_train_dataloader().batch_size in (2, None)
    assert next(iter(trainer.get_train_dataloader()))["packed"].num_pairs == 2
    assert trainer.args.gradient_accumulation_steps == 4


def test_out_of_memory_in_the_first_step_continues_with_half_the_pairs_and_the_same_update(
        tiny_model_dir, shapes_dir, tmp_path, monkeypatch, capsys):
    """A forward of 4 pairs that runs out of memory is redone as 2 + 2: the optimizer step equals a run planned
    at 2 pairs per forward (plain SGD, so a wrong scale would show)."""
    from transformers import set_seed

    from vlmpref.plan.autopack import PackingPlan

    dataset = load_preference_data(str(shapes_dir), "train[:8]", num_proc=1).dataset
    original = trainer_module.packed_logps
    calls = {"oom": 0}

    def oom_above_two(model, batch, *args, **kwargs):
        if torch.is_grad_enabled() and batch.num_pairs > 2:
            calls["oom"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(model, batch, *args, **kwargs)

    weights = {}
    for name, ppf in (("planned-2", 2), ("auto-4", "auto")):
        set_seed(0)
        if name == "auto-4":
            monkeypatch.setattr(trainer_module, "packed_logps", oom_above_two)
            monkeypatch.setattr(autopack, "plan", lambda *a, **k: PackingPlan(4, 1.0, {4: 0.5}, "4 pair(s) per forward"))
        trainer, _ = _trainer(str(tiny_model_dir), dataset, tmp_path / name, pairs_per_forward=ppf)
        trainer.train()
        weights[name] = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert calls["oom"] == 1  # only the first attempt; later micro-batches go straight to two parts
    assert ("note: 4 pairs per forward ran out of GPU memory in the first step; continuing with 2 (the effective "
            "batch is unchanged).") in capsys.readouterr().out
    assert trainer.pairs_per_forward == 2 and trainer.pairs_trained == 8
    for key, value in weights["planned-2"].items():
        torch.testing.assert_close(weights["auto-4"][key], value, rtol=1e-5, atol=1e-7, msg=key)


def test_out_of_memory_with_a_fixed_packing_is_not_hidden(tiny_model_dir, shapes_dir, tmp_path, monkeypatch):
    dataset = load_preference_data(str(shapes_dir), "train[:8]", num_proc=1).dataset

    def oom(*args, **kwargs):
        if torch.is_grad_enabled():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(*args, **kwargs)

    original = trainer_module.packed_logps
    monkeypatch.setattr(trainer_module, "packed_logps", oom)
    trainer, _ = _trainer(str(tiny_model_dir), dataset, tmp_path / "a", pairs_per_forward=4)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        trainer.train()


# ---- the one-time pass


def test_with_the_image_cache_training_needs_no_image_processing(tiny_model_dir, shapes_dir, tmp_path, monkeypatch):
    """The one-time pass prepares every pair once (tokens kept, features cached); training tokenizes nothing."""
    dataset = load_preference_data(str(shapes_dir), "train[:8]", num_proc=1).dataset
    trainer, _ = _trainer(str(tiny_model_dir), dataset, tmp_path / "a", image_cache=True, pairs_per_forward=4)
    assert set(trainer.data_collator.tokens) == set(range(8))
    assert all(not pair.pixel_inputs for pair in trainer.data_collator.tokens.values())
    distinct = {images_key(row["images"]) for row in dataset}
    assert len(distinct) < 8 and trainer.image_cache.misses == len(distinct)  # each image encoded once
    calls = []
    monkeypatch.setattr(trainer_module, "tokenize_pair", lambda *a, **k: calls.append(1))
    trainer.train()
    assert calls == [] and trainer.pairs_trained == 8


def test_one_time_pass_batches_images_into_one_vision_call(tiny_model_dir, shapes_dir, tmp_path, monkeypatch):
    rows = load_preference_data(str(shapes_dir), "train", num_proc=1).dataset
    dataset = rows.select(range(0, len(rows), 5))  # one question per scene: 8 different images
    calls = []
    original = trainer_module.batch_image_features

    def counting(model, pixel_inputs):
        calls.append(len(pixel_inputs))
        return original(model, pixel_inputs)

    monkeypatch.setattr(trainer_module, "batch_image_features", counting)
    _trainer(str(tiny_model_dir), dataset, tmp_path / "a", image_cache=True, pairs_per_forward=4)
    assert calls == [4, 4]  # one vision call per batch of 4 pairs, each image once


# ---- max_length that would cut image tokens


def test_max_length_shorter_than_the_prompt_stops_before_any_work(tiny_model_dir, shapes_dir, tmp_path):
    dataset = load_preference_data(str(shapes_dir), "train[:4]", num_proc=1).dataset
    processor = load_processor(str(tiny_model_dir))
    prompt = len(packing_module.tokenize_pair(dataset[0], processor).prompt_ids)
    model = load_model(str(tiny_model_dir))
    config = DPOConfig(output_dir=str(tmp_path / "a"), use_cpu=True, report_to=[], max_length=prompt - 5)
    with pytest.raises(ValueError, match=rf"^max_length={prompt - 5} is shorter than the {prompt}-token prompt of "
                                         r"pair \d+ \(its image tokens included\), and image tokens cannot be cut; set "
                                         r"max_length=None in DPOConfig"):
        FastDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                       peft_config=lora_config(model))


# ---- nothing ignored silently


@pytest.mark.parametrize("flags,message", [
    (["--engine", "trl", "--pairs-per-forward", "4"], "--pairs-per-forward only apply to the fast engine, and "
                                                      "--engine trl was chosen"),
    (["--engine", "trl", "--image-cache", "on", "--cache-memory-gib", "4"],
     "--image-cache, --cache-memory-gib only apply to the fast engine"),
    (["--image-cache", "on"], "--image-cache on needs a frozen vision tower, but --lora-scope all puts adapters"),
    (["--cache-memory-gib", "8"], "--cache-memory-gib sizes the image-feature cache, which is off with --lora-scope all"),
    (["--lora-scope", "language", "--image-cache", "off", "--cache-memory-gib", "8"], "--image-cache off turns off"),
    (["--truncation", "skip"], "--truncation says what to do with pairs over --max-length, which is not set"),
    (["--eval-steps", "5"], "--eval-steps applies to a held-out set, and none was given"),
    (["--pairs-per-forward", "3"], "--pairs-per-forward must divide the effective batch 32"),
    (["--pairs-per-forward", "many"], "argument --pairs-per-forward: expected a whole number or auto"),
])
def test_an_option_the_chosen_path_would_not_use_is_a_one_line_error(flags, message, capsys):
    try:
        code = main(["train", "--dataset", "data.jsonl", *flags])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_options_the_engine_uses_pass():
    assert TrainConfig(engine="trl").pairs_per_forward == "auto"
    assert TrainConfig(lora_scope="language", image_cache="on", cache_memory_gib=8).cache_memory_gib == 8
    assert TrainConfig(pairs_per_forward=8).pairs_per_forward == 8
    cfg = config_io.resolve(TrainConfig, flags={"pairs_per_forward": "auto"})
    assert cfg.pairs_per_forward == "auto"


# ---- splits: the whole split of local data, the guide's slice for the guide's dataset


def _jsonl(tmp_path, rows: int):
    from PIL import Image

    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "red.png")
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"image": "red.png", "question": f"What color is it? ({i})",
                                        "chosen": "Red.", "rejected": "Blue."}) + "\n" for i in range(rows)))
    return path


def test_local_data_default_to_the_whole_split_and_the_guide_keeps_its_slices(tmp_path, shapes_dir):
    path = _jsonl(tmp_path, 3)
    assert TrainConfig(dataset=str(path)).split == "train"
    assert TrainConfig().split == "train[:6%]"  # HuggingFaceH4/rlaif-v_formatted, the guide's
    assert default_split("HuggingFaceH4/rlaif-v_formatted", "eval") == "test[:1%]"
    assert default_split(str(path), "eval") == "train"  # a single file is its one split
    assert default_split(str(shapes_dir), "eval") == "test" and default_split(str(shapes_dir), "train") == "train"
    assert default_split("someone/else", "train") == "train" and default_split("someone/else", "eval") == "test"
    cfg = TrainConfig(dataset=str(shapes_dir), eval_dataset=str(shapes_dir))
    assert cfg.eval_split == "test"  # resolved as `vlmpref eval` resolves it
    from vlmpref.eval.run import EvalConfig

    assert EvalConfig(dataset=str(path), model="m").split == "train"
    assert len(load_raw(str(path), TrainConfig(dataset=str(path)).split)) == 3


def test_a_slice_that_selects_no_rows_is_a_one_line_error(tmp_path, shapes_dir):
    path = _jsonl(tmp_path, 3)
    with pytest.raises(VlmprefError, match=r"^Split 'train\[:6%\]' selects no rows of dataset '.*prefs.jsonl'; give a "
                                           r"larger slice or the whole split, --split train\.$"):
        load_raw(str(path), "train[:6%]")
    with pytest.raises(VlmprefError, match=r"^Split 'test\[:0\]' selects no rows of the saved dataset .* \(its 'test' "
                                           r"split has 20 rows\)"):
        load_raw(str(shapes_dir), "test[:0]")


# ---- counts are what was trained


def test_a_one_row_dataset_reports_one_pair_per_step(tiny_model_dir, tmp_path):
    path = _jsonl(tmp_path, 1)
    result = train(TrainConfig(model=str(tiny_model_dir), dataset=str(path), output_dir=str(tmp_path / "o"),
                               num_train_epochs=2, report_to=["none"], dataset_num_proc=1, quantization="none"))
    summary = result.summary
    assert summary["pairs_per_step"] == 32 and summary["steps"] == 2
    assert summary["pairs_trained"] == 2  # one pair in each of two epochs, not 2 x 32
    assert summary["packing"]["pairs_per_forward"] == 32 and summary["pairs_per_forward"] == 32
    saved = json.loads((tmp_path / "o" / "train_summary.json").read_text())
    assert saved["pairs_trained"] == 2 and saved["engine"] == "fast"
