"""The CLI: help for every command, one-line errors without tracebacks, commands that run end to end."""

import subprocess
import sys

import pytest

from vlmpref.cli import COMMANDS, main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "vlmpref", *args], capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name.split()[0] in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_documents_every_option(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*name.split(), "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    import dataclasses

    for f in dataclasses.fields(COMMANDS[name].config()):
        assert f"--{f.name.replace('_', '-')}" in out
        assert f.metadata.get("help"), f"{name}: {f.name} has no help"


def test_bad_flag_value_is_one_line_without_traceback():
    result = _run("train", "--learning-rate", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: --learning-rate must be positive, not -1.0."
    assert "Traceback" not in result.stderr


def test_mistyped_flag_suggests_the_right_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--lerning-rate", "1e-4"])
    assert exit_info.value.code == 2
    assert "did you mean --learning-rate?" in capsys.readouterr().err


def test_underscore_flags_work_like_dashes(tmp_path, capsys):
    assert main(["tiny-model", "--output_dir", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").is_file()


def test_unknown_config_key_in_yaml(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("learning_rat: 1e-4\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err


def test_missing_dataset_path(tmp_path, capsys, tiny_model_dir):
    code = main(["train", "--model", str(tiny_model_dir), "--dataset", str(tmp_path / "none.jsonl"),
                 "--split", "train", "--output-dir", str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: Dataset path")


def test_data_check_reports_rows_images_tokens(shapes_dir, tiny_model_dir, tmp_path, capsys):
    import json

    assert main(["data", "check", "--dataset", str(shapes_dir), "--split", "test", "--model", str(tiny_model_dir),
                 "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "20 rows, 20 usable, 0 set aside" in out
    report = json.loads((tmp_path / "data_check.json").read_text())
    assert report["images"]["modes"] == {"RGB": 20}
    assert report["images"]["width"]["max"] == 64
    # 16 image tokens per 64x64 image (8x8 patches, pixel shuffle 2)
    assert report["tokens"]["image_tokens"]["min"] == report["tokens"]["image_tokens"]["max"] == 16


def test_generate_cli_prints_an_answer(tiny_model_dir, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(tmp_path / "red.png")
    result = _run("generate", "--model", str(tiny_model_dir), "--image", str(tmp_path / "red.png"),
                  "--prompt", "What color is it?", "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_synthetic_command_writes_both_splits(tmp_path):
    import datasets

    assert main(["data", "synthetic", "--output-dir", str(tmp_path / "s"), "--train-scenes", "3",
                 "--test-scenes", "2"]) == 0
    saved = datasets.load_from_disk(str(tmp_path / "s"))
    assert (len(saved["train"]), len(saved["test"])) == (15, 10)
