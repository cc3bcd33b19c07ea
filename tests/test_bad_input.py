"""Every bad-input case of the README's table gives its promised result: a row set aside with its reason, a
converted image, or one VlmprefError sentence. (Cases covered elsewhere: missing path and unknown Hub id,
missing columns, corrupt files and outside paths in test_data.py; YAML and config values in test_config.py.)"""

import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from vlmpref.data import load_preference_data
from vlmpref.data.images import load_rgb
from vlmpref.errors import VlmprefError

Q, A, B = "What color is the circle?", "The circle is red.", "The circle is blue."


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _good(tmp_path, name="a.png", color=(200, 30, 30)):
    Image.new("RGB", (16, 12), color).save(tmp_path / name)
    return {"image": name, "question": Q, "chosen": A, "rejected": B}


def _reasons(path, **kw):
    data = load_preference_data(str(path), num_proc=1, **kw)
    return data, dict(zip(data.set_aside["row_id"], data.set_aside["problem"]))


def test_wrong_types_and_empty_lists_are_set_aside(tmp_path):
    good = _good(tmp_path)
    msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q}]}]
    rows = [
        {**good, "chosen": 3.5},                        # number where text is expected
        {**good, "rejected": []},                       # empty list of messages
        {**good, "question": ["not", "messages"]},      # list of strings, not messages
        {**good, "chosen": [{"role": "assistant", "content": 7}]},
        {"image": [], "question": msg, "chosen": A, "rejected": B},  # a placeholder, no image
        {"image": [good["image"]], "question": [], "chosen": A, "rejected": B},
    ]
    data, reasons = _reasons(_jsonl(tmp_path, rows))
    assert len(data.dataset) == 0 and sorted(reasons) == list(range(len(rows)))
    assert reasons[0] == "chosen must be text or a list of messages, not float"
    assert reasons[1] == "rejected is an empty list of messages"
    assert reasons[2] == "prompt holds an entry that is not a {role, content} message"
    assert reasons[3] == "chosen content must be text or a list of parts, not int"
    assert reasons[4] == "prompt has 1 image placeholder(s) but the row has 0 image(s)"
    assert reasons[5] == "prompt is an empty list of messages"


@pytest.mark.parametrize("column,reason", [("question", "prompt is empty"), ("chosen", "chosen is empty"),
                                           ("rejected", "rejected is empty")])
def test_empty_text_is_set_aside(tmp_path, column, reason):
    good = _good(tmp_path)
    _, reasons = _reasons(_jsonl(tmp_path, [good, {**good, column: "   "}]))
    assert reasons == {1: reason}


def test_chosen_identical_to_rejected_even_up_to_whitespace(tmp_path):
    good = _good(tmp_path)
    _, reasons = _reasons(_jsonl(tmp_path, [good, {**good, "rejected": A + "  "}]))
    assert reasons == {1: "chosen and rejected are identical"}


def test_fewer_images_than_placeholders(tmp_path):
    good = _good(tmp_path)
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": Q}]}]
    _, reasons = _reasons(_jsonl(tmp_path, [{"images": [good["image"]], "prompt": two, "chosen": A, "rejected": B}]))
    assert reasons == {0: "prompt has 2 image placeholder(s) but the row has 1 image(s)"}


def test_truncated_jpeg_and_garbage_bytes_are_set_aside(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, format="JPEG")
    rows = [{"images": [{"bytes": buffer.getvalue()[: len(buffer.getvalue()) // 2], "path": None}], "prompt": Q,
             "chosen": A, "rejected": B},
            {"images": [{"bytes": b"\x89PNG not really", "path": None}], "prompt": Q, "chosen": A, "rejected": B}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    _, reasons = _reasons(tmp_path / "d.parquet")
    assert reasons[0].startswith("image is corrupt or truncated")
    assert reasons[1] == "image cannot be decoded (not a known image format, or its header is corrupt)"


def test_zero_size_image_is_set_aside(tmp_path):
    with pytest.raises(ValueError, match=r"image has zero size \(0x5\)"):
        load_rgb(Image.new("RGB", (0, 5)))
    # a PNG whose header says 0 pixels wide: PIL refuses to open it; the row is set aside either way
    png = bytearray(_png(Image.new("RGB", (3, 5))))
    png[16:20] = (0).to_bytes(4, "big")
    _good(tmp_path)
    datasets.Dataset.from_list([{"images": [{"bytes": bytes(png), "path": None}], "prompt": Q, "chosen": A,
                                 "rejected": B}]).to_parquet(str(tmp_path / "d.parquet"))
    data, reasons = _reasons(tmp_path / "d.parquet")
    assert len(data.dataset) == 0 and reasons[0].startswith(("image has zero size", "image is corrupt",
                                                             "image cannot be decoded"))


def test_decompression_bomb_is_refused_by_the_pixel_limit(tmp_path):
    # 1-bit 9000 x 9000: 81 M pixels stored in a few kB; refused from the header, before decoding
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    good = _good(tmp_path)
    path = _jsonl(tmp_path, [good, {**good, "image": "bomb.png"}])
    _, reasons = _reasons(path)
    assert reasons == {1: "image has 9000x9000 pixels, over the limit of 50,000,000 (raise it with "
                          "--max-image-pixels if this is intended)"}
    _, reasons = _reasons(path, max_image_pixels=100)
    assert set(reasons) == {0, 1} and "over the limit of 100 " in reasons[0]


def test_16_bit_and_palette_with_transparency_are_converted(tmp_path):
    sixteen = Image.fromarray(np.full((4, 6), 40000, dtype=np.uint16))  # mode I;16
    assert sixteen.mode in ("I;16", "I")
    palette = Image.new("P", (6, 4), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0  # fully transparent: composited on white
    rgb = load_rgb(_png(sixteen))
    assert rgb.mode == "RGB" and rgb.size == (6, 4) and rgb.getpixel((0, 0)) == (255, 255, 255)  # max -> white
    out = load_rgb(_png(palette))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    upright = load_rgb(buffer.getvalue())
    assert upright.size == (20, 40)  # turned
    r, g, b = upright.getpixel((10, 2))  # the left strip is now on top
    assert b > 200 and r < 60


def test_bad_utf8_in_a_jsonl_file_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps({"question": Q, "chosen": A, "rejected": B}).encode() + b"\n"
                     + b'{"question": "caf\xe9?", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(VlmprefError, match=r"d.jsonl: line 2 is not valid UTF-8 text \(byte 0xe9 at column 18\); "
                                           r"re-save the file as UTF-8"):
        load_preference_data(str(path), num_proc=1)


def test_invalid_json_line_and_csv_encoding(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"question": Q, "chosen": A, "rejected": B}) + "\n{oops\n")
    with pytest.raises(VlmprefError, match="line 2 is not valid JSON"):
        load_preference_data(str(tmp_path / "d.jsonl"), num_proc=1)
    (tmp_path / "d.csv").write_bytes(b"question,chosen,rejected\nok,a,b\nbad \xff,a,b\n")
    with pytest.raises(VlmprefError, match="line 3 is not valid UTF-8 text"):
        load_preference_data(str(tmp_path / "d.csv"), num_proc=1)


def test_undecodable_bytes_in_a_binary_column_are_set_aside(tmp_path):
    rows = [{"prompt": Q.encode(), "chosen": A.encode(), "rejected": B.encode()},
            {"prompt": b"\xff\xfe", "chosen": A.encode(), "rejected": B.encode()}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    data, reasons = _reasons(tmp_path / "d.parquet")
    assert len(data.dataset) == 1 and data.dataset[0]["prompt"][0]["content"][0]["text"] == Q  # UTF-8 bytes decoded
    assert reasons == {1: "prompt is bytes that are not UTF-8 text (byte 0xff at position 0)"}


def test_lone_surrogates_are_set_aside(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "bad \\ud800 text", "chosen": "a", "rejected": "b"}\n'
                    + json.dumps({"question": Q, "chosen": A, "rejected": B}) + "\n")
    # Arrow refuses the whole file, so the line is named
    with pytest.raises(VlmprefError, match=r"d.jsonl: line 1 holds an escaped character that is not valid Unicode"):
        _reasons(path)
    from vlmpref.data.normalize import RowProblem, normalize_row

    with pytest.raises(RowProblem, match="prompt holds characters that are not valid Unicode"):  # other sources
        normalize_row({"prompt": "bad \ud800", "chosen": A, "rejected": B}, (None, "prompt", "chosen", "rejected"))


def test_duplicates_are_set_aside_and_counted_or_kept(tmp_path):
    good = _good(tmp_path)
    _good(tmp_path, "copy.png")  # same pixels under another name: still the same row
    rows = [good, {**good, "rejected": "Something else."}, good, {**good, "image": "copy.png"}]
    path = _jsonl(tmp_path, rows)
    data, reasons = _reasons(path)
    assert reasons == {2: "duplicate of row 0", 3: "duplicate of row 0"}
    assert data.dataset["row_id"] == [0, 1]
    assert "2 rows used, 2 set aside (2 x duplicate of row N)" in data.summary()
    kept, reasons = _reasons(path, keep_duplicates=True)
    assert not reasons and len(kept.dataset) == 4
    assert "4 rows used (2 duplicates kept), 0 set aside" in kept.summary()


def test_set_aside_share_above_the_threshold_stops_the_run(tmp_path):
    good = _good(tmp_path)
    rows = [good] + [{**good, "chosen": ""}] * 3
    data = load_preference_data(str(_jsonl(tmp_path, rows)), num_proc=1)
    with pytest.raises(VlmprefError, match=r"3 of 4 rows \(75%\) .* were set aside \(3 x chosen is empty\), more than "
                                           r"--max-set-aside-fraction 0.5 allows; fix the data \(every reason is in "
                                           r"rejected_rows.jsonl\) or raise --max-set-aside-fraction"):
        data.check_share(0.5, "rejected_rows.jsonl")
    data.check_share(0.75, "rejected_rows.jsonl")  # at the threshold: goes on


def test_train_stops_on_bad_data_before_loading_the_model(tiny_model_dir, tmp_path, monkeypatch):
    """Rows set aside are written with their reasons even when the run stops; the model is never loaded."""
    from vlmpref.train import TrainConfig, train

    good = _good(tmp_path)
    path = _jsonl(tmp_path, [good, {**good, "image": "missing.png"}, {**good, "rejected": A}])
    monkeypatch.setattr("vlmpref.train.run.load_model", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    with pytest.raises(VlmprefError, match=r"2 of 3 rows \(67%\)"):
        train(TrainConfig(model=str(tiny_model_dir), dataset=str(path), split="train", output_dir=str(out),
                          quantization="none", report_to=["none"], dataset_num_proc=1))
    lines = [json.loads(line) for line in (out / "rejected_rows.jsonl").read_text().splitlines()]
    assert [(line["row_id"], line["reason"]) for line in lines] == [
        (1, "image file 'missing.png' does not exist"), (2, "chosen and rejected are identical")]


def test_cli_prints_bad_data_as_one_line(tiny_model_dir, tmp_path, capsys):
    from vlmpref.cli import main

    (tmp_path / "d.jsonl").write_bytes(b'{"question": "\xff", "chosen": "a", "rejected": "b"}\n')
    code = main(["train", "--model", str(tiny_model_dir), "--dataset", str(tmp_path / "d.jsonl"), "--split", "train",
                 "--output-dir", str(tmp_path / "out"), "--quantization", "none", "--report-to", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "error: Cannot read dataset file" in err and "Traceback" not in err, err
