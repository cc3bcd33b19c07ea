"""Generation returns text for single questions and whole splits."""

import json

from PIL import Image

from vlmpref.data import load_preference_data
from vlmpref.generate import GenerateConfig, generate_batch, generate_rows, run_generate, user_prompt
from vlmpref.models import load_model, load_processor


def test_generate_batch_returns_one_string_per_prompt(tiny_model_dir):
    model, processor = load_model(str(tiny_model_dir)), load_processor(str(tiny_model_dir))
    images = [[Image.new("RGB", (64, 64), "red")], [Image.new("RGB", (50, 40), "blue")]]
    answers = generate_batch(model, processor, [user_prompt("What color?"), user_prompt("Shape?")], images,
                             max_new_tokens=5)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_batched_generation_equals_one_at_a_time(tiny_model_dir, shapes_dir):
    """Left padding must not change greedy answers."""
    model, processor = load_model(str(tiny_model_dir)), load_processor(str(tiny_model_dir))
    rows = list(load_preference_data(str(shapes_dir), "test[:4]", num_proc=1).dataset)
    together = list(generate_rows(model, processor, rows, batch_size=4, max_new_tokens=6))
    alone = list(generate_rows(model, processor, rows, batch_size=1, max_new_tokens=6))
    assert together == alone


def test_generate_a_dataset_split_to_jsonl(tiny_model_dir, shapes_dir, tmp_path):
    path = run_generate(GenerateConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="test[:3]",
                                       output_dir=str(tmp_path), max_new_tokens=4))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    assert {"question", "generated", "chosen", "rejected", "row_id", "answer", "objects"} <= set(lines[0])


def test_generate_one_image_from_a_file(tiny_model_dir, tmp_path):
    Image.new("RGB", (64, 64), "green").save(tmp_path / "x.png")
    answers = run_generate(GenerateConfig(model=str(tiny_model_dir), image=[str(tmp_path / "x.png")],
                                          prompt="What color is it?", max_new_tokens=4))
    assert len(answers) == 1 and isinstance(answers[0], str)
