"""`vlmpref merge`: a plain checkpoint that answers like base + adapter, for LoRA and DoRA, 4-bit bases included."""

import json

import pytest
import torch
import yaml
from peft import get_peft_model
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmpref.cli import main
from vlmpref.errors import VlmprefError
from vlmpref.generate import generate_batch, user_prompt
from vlmpref.models import attach_adapter, load_model, load_processor, lora_config
from vlmpref.models.merge import MergeConfig, merge_adapter

QUESTIONS = [user_prompt(q) for q in ("What color is it?", "Describe the image.", "How many shapes?")]
IMAGES = [[Image.new("RGB", (64, 64), color)] for color in ("red", "blue", "green")]


def _adapter(model_dir, folder, quantization, use_dora):
    """An adapter folder as `vlmpref train` writes it, with weights far from their identity init."""
    dtype = torch.bfloat16 if quantization != "none" else torch.float32
    torch.manual_seed(0)
    model = load_model(str(model_dir), quantization=quantization, dtype=dtype)
    peft_model = get_peft_model(model, lora_config(model, use_dora=use_dora, init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
            if "magnitude" in name:
                param.mul_(1.3)
    peft_model.save_pretrained(folder)
    load_processor(str(model_dir)).save_pretrained(folder)
    (folder / "vlmpref_config.yaml").write_text(yaml.safe_dump({"quantization": quantization}))
    return folder


def _answers(model, processor):
    return generate_batch(model, processor, QUESTIONS, IMAGES, max_new_tokens=10)


# DoRA (the default, and the harder merge: magnitude and direction) by default; plain LoRA in the slow set
@pytest.mark.parametrize("use_dora", [pytest.param(False, marks=pytest.mark.slow), True], ids=["lora", "dora"])
def test_merged_checkpoint_answers_like_base_plus_adapter(tiny_model_dir, tmp_path, use_dora):
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter", "none", use_dora)
    out = merge_adapter(MergeConfig(adapter=str(adapter), output_dir=str(tmp_path / "merged"), dtype="float32"))
    merged = AutoModelForImageTextToText.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    reference = attach_adapter(load_model(str(tiny_model_dir), dtype=torch.float32), str(adapter))
    expected = _answers(reference, load_processor(str(tiny_model_dir)))
    assert _answers(merged, AutoProcessor.from_pretrained(out)) == expected
    # the adapter must matter, or the comparison proves nothing
    assert _answers(load_model(str(tiny_model_dir), dtype=torch.float32), load_processor(str(tiny_model_dir))) != expected


def test_4bit_base_is_dequantized_before_merging(tiny_model_dir, tmp_path):
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter", "4bit", use_dora=True)
    out = merge_adapter(MergeConfig(adapter=str(adapter), output_dir=str(tmp_path / "merged"), dtype="float32"))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "quantization_config" not in config.get("text_config", {})
    assert json.loads((out / "vlmpref_merge.json").read_text())["base_quantization"] == "4bit"
    merged = AutoModelForImageTextToText.from_pretrained(out)
    # exact: the dequantized 4-bit weights with the adapter unmerged, in fp32
    base = load_model(str(tiny_model_dir), quantization="4bit", dtype=torch.bfloat16).dequantize(dtype=torch.float32)
    reference = attach_adapter(base.to(torch.float32), str(adapter))
    processor = AutoProcessor.from_pretrained(out)
    assert _answers(merged, processor) == _answers(reference, processor)
    # and close to the 4-bit model + adapter itself, which computes in bf16
    quantized = attach_adapter(load_model(str(tiny_model_dir), quantization="4bit", dtype=torch.bfloat16),
                               str(adapter))
    inputs = processor(text=[processor.apply_chat_template(QUESTIONS[0], add_generation_prompt=True)],
                       images=[IMAGES[0]], return_tensors="pt")
    with torch.no_grad():
        a = merged(**inputs).logits[0, -1].float()
        b = quantized(**{**inputs, "pixel_values": inputs["pixel_values"].bfloat16()}).logits[0, -1].float()
    assert torch.allclose(a, b, atol=0.1 * a.abs().max().item())
    assert a.argmax() == b.argmax()


def test_merge_cli_and_errors(tiny_model_dir, tmp_path, capsys):
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter", "none", use_dora=False)
    assert main(["merge", "--adapter", str(adapter), "--output-dir", str(tmp_path / "m")]) == 0
    assert "AutoModelForImageTextToText.from_pretrained" in capsys.readouterr().out
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "m").dtype == torch.bfloat16
    assert main(["merge", "--adapter", str(adapter), "--output-dir", str(tmp_path / "m")]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(VlmprefError, match="holds no adapter_config.json"):
        merge_adapter(MergeConfig(adapter=str(tmp_path), output_dir=str(tmp_path / "x")))
