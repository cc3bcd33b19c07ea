"""Every accepted data format loads to the same internal form; bad rows are reported, never dropped silently."""

import io
import json

import datasets
import pytest
from PIL import Image

from vlmpref.data import load_preference_data
from vlmpref.data.normalize import clean_messages
from vlmpref.errors import VlmprefError

QUESTION, CHOSEN, REJECTED = "What color is the circle?", "The circle is red.", "The circle is blue."


def _image(color=(200, 30, 30), size=(32, 24), mode="RGB"):
    return Image.new(mode, size, color if mode == "RGB" else 128)


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _messages_row(image):
    return {"images": [image],
            "prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                    {"type": "text", "text": QUESTION}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": CHOSEN}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": REJECTED}]}]}


def _expected(row):
    assert [m["role"] for m in row["prompt"]] == ["user"]
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["image", "text"]
    assert row["prompt"][0]["content"][1]["text"] == QUESTION
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": CHOSEN}]}]
    assert row["rejected"] == [{"role": "assistant", "content": [{"type": "text", "text": REJECTED}]}]
    assert len(row["images"]) == 1 and row["images"][0].mode == "RGB" and row["images"][0].size == (32, 24)
    assert row["images"][0].getpixel((0, 0)) == (200, 30, 30)


def _plain_rows(tmp_path):
    (tmp_path / "img").mkdir()
    _image().save(tmp_path / "img" / "a.png")
    return [{"image": "img/a.png", "question": QUESTION, "chosen": CHOSEN, "rejected": REJECTED}]


def test_jsonl_with_relative_image_paths(tmp_path):
    rows = _plain_rows(tmp_path)
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = load_preference_data(str(tmp_path / "data.jsonl"), "train", num_proc=1)
    assert len(data.dataset) == 1 and len(data.set_aside) == 0
    _expected(data.dataset[0])


def test_json_file_with_prompt_column_and_images_list(tmp_path):
    rows = _plain_rows(tmp_path)
    rows = [{"images": [r["image"]], "prompt": r["question"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in rows]
    (tmp_path / "data.json").write_text(json.dumps(rows))
    _expected(load_preference_data(str(tmp_path / "data.json"), "train", num_proc=1).dataset[0])


def test_parquet_with_image_bytes_in_chat_format(tmp_path):
    ds = datasets.Dataset.from_list([_messages_row({"bytes": _png(_image()), "path": None})])
    ds.to_parquet(str(tmp_path / "data.parquet"))
    _expected(load_preference_data(str(tmp_path / "data.parquet"), "train", num_proc=1).dataset[0])


def test_save_to_disk_folder_in_rlaif_v_format(tmp_path):
    ds = datasets.Dataset.from_list([_messages_row(_image())]).cast_column("images", datasets.List(datasets.Image()))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "saved"))
    _expected(load_preference_data(str(tmp_path / "saved"), "test", num_proc=1).dataset[0])


def test_folder_of_data_files_uses_load_dataset_like_a_hub_id(tmp_path):
    rows = _plain_rows(tmp_path)
    (tmp_path / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")
    _expected(load_preference_data(str(tmp_path), "test", num_proc=1).dataset[0])


def test_split_slicing(shapes_dir):
    full = load_preference_data(str(shapes_dir), "train", num_proc=1)
    half = load_preference_data(str(shapes_dir), "train[:50%]", num_proc=1)
    first = load_preference_data(str(shapes_dir), "train[:3]", num_proc=1)
    assert len(full.dataset) == 40 and len(half.dataset) == 20 and len(first.dataset) == 3
    assert first.dataset["row_id"] == [0, 1, 2]


def test_metadata_columns_pass_through(shapes_dir):
    row = load_preference_data(str(shapes_dir), "test[:1]", num_proc=1).dataset[0]
    assert {"answer", "question_type", "objects", "row_id"} <= set(row)
    assert row["objects"] and {"shape", "color", "position"} == set(row["objects"][0])


def test_multiprocess_map_gives_the_same_rows(shapes_dir):
    one = load_preference_data(str(shapes_dir), "train", num_proc=1).dataset
    two = load_preference_data(str(shapes_dir), "train", num_proc=2).dataset
    assert one["chosen"] == two["chosen"] and one["row_id"] == two["row_id"]


def test_image_modes_are_converted_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent: composited on white
    gray = Image.new("L", (8, 8), 100)
    palette = Image.new("RGB", (8, 8), (0, 255, 0)).convert("P")
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 255))  # black: white would duplicate the RGBA row
    rows = [_messages_row({"bytes": _png(im) if im.mode != "CMYK" else _jpeg(im), "path": None})
            for im in (rgba, gray, palette, cmyk)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "modes.parquet"))
    images = [r["images"][0] for r in load_preference_data(str(tmp_path / "modes.parquet"), num_proc=1).dataset]
    assert [im.mode for im in images] == ["RGB"] * 4
    assert images[0].getpixel((0, 0)) == (255, 255, 255)
    assert images[1].getpixel((0, 0)) == (100, 100, 100)
    assert images[2].getpixel((0, 0)) == (0, 255, 0)


def _jpeg(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def test_bad_rows_are_set_aside_with_reasons(tmp_path):
    good = _plain_rows(tmp_path)[0]
    (tmp_path / "img" / "broken.png").write_bytes(_png(_image())[:40])
    rows = [
        good,
        {**good, "image": "img/missing.png"},
        {**good, "image": "img/broken.png"},
        {**good, "rejected": CHOSEN},
        {**good, "chosen": ""},
        {**good, "question": 42},
        {**good, "image": "../outside.png"},
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = load_preference_data(str(tmp_path / "data.jsonl"), num_proc=1)
    assert len(data.dataset) == 1 and data.total == len(rows)
    reasons = dict(zip(data.set_aside["row_id"], data.set_aside["problem"]))
    assert set(reasons) == {1, 2, 3, 4, 5, 6}
    assert "does not exist" in reasons[1]
    assert "corrupt or truncated" in reasons[2] or "cannot be decoded" in reasons[2]
    assert "identical" in reasons[3]
    assert "chosen is empty" in reasons[4]
    assert "prompt must be text" in reasons[5]
    assert "outside the dataset folder" in reasons[6]
    assert data.summary().startswith(f"{tmp_path / 'data.jsonl'} [train]: 1 rows used, 6 set aside (")
    path = data.write_set_aside(tmp_path / "out" / "rejected_rows.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["row_id"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_placeholder_count_must_match_images(tmp_path):
    row = _messages_row({"bytes": _png(_image()), "path": None})
    row["images"] = [row["images"][0], row["images"][0]]
    datasets.Dataset.from_list([row]).to_parquet(str(tmp_path / "d.parquet"))
    data = load_preference_data(str(tmp_path / "d.parquet"), num_proc=1)
    assert data.set_aside["problem"] == ["prompt has 1 image placeholder(s) but the row has 2 image(s)"]


def test_missing_column_names_the_existing_ones(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "a.png", "question": "q", "good": "a", "bad": "b"}))
    with pytest.raises(VlmprefError, match="has no chosen / rejected column; its columns are image, question, good, bad"):
        load_preference_data(str(tmp_path / "d.jsonl"), num_proc=1)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(VlmprefError, match="does not exist"):
        load_preference_data(str(tmp_path / "nope.jsonl"))


def test_unknown_split_lists_the_available_ones(shapes_dir):
    with pytest.raises(VlmprefError, match="Split 'validation' is not in .*available splits: train, test"):
        load_preference_data(str(shapes_dir), "validation")


def test_unknown_hub_dataset_offline_is_a_clear_error():
    with pytest.raises(VlmprefError, match="Hugging Face Hub"):
        load_preference_data("no-such-user/no-such-dataset-xyz")


@pytest.mark.parametrize("placeholder", ["<image>", "<|vision_start|><|image_pad|><|vision_end|>", "<start_of_image>",
                                         "<IMG_CONTEXT>"])
def test_each_familys_literal_image_placeholder_counts_against_the_images(tmp_path, placeholder):
    """LLaVA / SmolVLM, Qwen-VL, Gemma 3 and InternVL datasets write the image into the prompt text: one literal
    placeholder per image is used (as an image part where it stands), a mismatch is a set-aside row."""
    image = {"bytes": _png(_image()), "path": None}
    rows = [{"images": [image], "question": f"{placeholder}\nWhat color is it?", "chosen": "Red.", "rejected": "Blue."},
            {"images": [image], "question": f"{placeholder}{placeholder} Which is red?", "chosen": "A.",
             "rejected": "B."},
            {"images": [image, image], "question": f"Left: {placeholder} right: {placeholder}", "chosen": "A.",
             "rejected": "B."},
            {"images": [image], "question": "What is it?", "chosen": f"{placeholder} A dog.", "rejected": "A cat."}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    data = load_preference_data(str(tmp_path / "d.parquet"), num_proc=1)
    assert dict(zip(data.set_aside["row_id"], data.set_aside["problem"])) == {
        1: "prompt has 2 image placeholder(s) but the row has 1 image(s)", 3: "chosen must not contain images"}
    first, third = (clean_messages(row["prompt"])[0]["content"] for row in data.dataset)
    assert first == [{"type": "image"}, {"type": "text", "text": "\nWhat color is it?"}]
    assert third == [{"type": "text", "text": "Left: "}, {"type": "image"}, {"type": "text", "text": " right: "},
                     {"type": "image"}]
