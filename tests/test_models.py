"""Tiny models reload through from_pretrained; adapters hit the intended modules; quantization works on the CPU."""

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmpref.errors import VlmprefError
from vlmpref.models import language_model_prefix, load_model, load_processor, lora_config


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_llava_dir"])
def test_tiny_model_reloads_with_from_pretrained(fixture, request):
    path = request.getfixturevalue(fixture)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id
    assert processor.tokenizer.convert_ids_to_tokens(model.generation_config.eos_token_id) == "<end_of_utterance>"


def test_language_model_prefix(tiny_model_dir, tiny_llava_dir):
    assert language_model_prefix(load_model(str(tiny_model_dir))) == "model.text_model"
    assert language_model_prefix(load_model(str(tiny_llava_dir))) == "model.language_model"


# Hand count for the tiny Idefics3 (text 128 wide, 4 layers, 4 heads / 2 kv heads, MLP 256; vision 64 wide,
# 2 layers). Per adapted Linear(in, out) DoRA adds r*in (A) + out*r (B) + out (magnitude), r = 8.
#   text, per layer: q 2176 + k 1600 + v 1600 + o 2176 + gate 3328 + up 3328 + down 3200 = 17408; x4 = 69632
#   vision, per layer: q, k, v (64 -> 64) 1088 each = 3264; x2 = 6528  (out_proj / fc1 / fc2 are not targets)
@pytest.mark.parametrize("scope,expected", [("all", 69632 + 6528), ("language", 69632)])
def test_exact_trainable_parameter_count(tiny_model_dir, scope, expected):
    model = get_peft_model(load_model(str(tiny_model_dir)), lora_config(load_model(str(tiny_model_dir)), scope=scope))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected
    in_vision = [n for n in trainable if "vision_model" in n]
    assert bool(in_vision) == (scope == "all")
    assert not any("connector" in n or "lm_head" in n for n in trainable)


def test_lora_instead_of_dora_has_no_magnitude(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    peft_model = get_peft_model(model, lora_config(model, use_dora=False, scope="language"))
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and not any("magnitude" in n for n in names)


def test_unknown_target_module_is_a_clear_error(tiny_model_dir):
    with pytest.raises(VlmprefError, match="None of the target modules"):
        lora_config(load_model(str(tiny_model_dir)), target_modules=["qkv_proj"])


def test_4bit_loads_nf4_with_double_quant_on_cpu(tiny_model_dir):
    import bitsandbytes as bnb

    model = load_model(str(tiny_model_dir), quantization="4bit")
    layer = model.model.text_model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_type == "nf4" and layer.weight.quant_state.nested
    assert layer.compute_dtype == torch.bfloat16


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(VlmprefError, match="does not exist"):
        load_model(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VlmprefError, match="no config.json"):
        load_processor(str(tmp_path / "empty"))


def test_unknown_hub_model_offline_is_a_clear_error():
    with pytest.raises(VlmprefError, match="Hugging Face Hub"):
        load_processor("no-such-user/no-such-model-xyz")


def test_processor_pads_left_for_generation(tiny_model_dir):
    assert load_processor(str(tiny_model_dir)).tokenizer.padding_side == "left"


@pytest.mark.parametrize("name,millions", [("smolvlm-256m", 256.48), ("smolvlm-500m", 507.48),
                                           ("smolvlm-2.2b", 2246.27)])
def test_replicas_have_the_published_sizes(name, millions):
    from vlmpref.models.replicas import replica_config

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(replica_config(name))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


def test_replica_processor_makes_the_guides_image_tokens():
    from PIL import Image

    from vlmpref.models.replicas import replica_processor

    processor = replica_processor("smolvlm-2.2b")
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                      {"type": "text", "text": "Hi"}]}],
                                         add_generation_prompt=True)
    inputs = processor(text=[text], images=[[Image.new("RGB", (640, 480))]], return_tensors="pt")
    # a 4:3 image: 3 x 4 tiles + 1 global tile, 81 tokens each (DESIGN)
    assert inputs["pixel_values"].shape[1] == 13
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 13 * 81
