"""One message style for every error a user can cause: `error: <one sentence>`, exit status 2, no traceback, no
Python names (argument lists, exception classes), and before any slow work."""

import re

import pytest

from vlmpref.cli import main

PYTHON_TEXT = re.compile(r"Traceback|__init__|positional argument|keyword argument|TypeError|ValueError|"
                         r"image_cache=|NoneType")


def _cases(tiny, shapes, tmp):
    return [
        (["tiny-model"], "--output-dir is required"),
        (["estimate", "--model", "smolvlm-256m", "--gpu", "0gb"], "GPU memory must be positive"),
        (["train", "--model", tiny, "--dataset", shapes, "--image-cache", "on", "--lora-scope", "all",
          "--output-dir", f"{tmp}/r"], "--image-cache on needs a frozen vision tower"),
        (["generate", "--model", tiny, "--image", f"{tmp}/none.png", "--prompt", "Hi"], "image file"),
        (["generate", "--image", "a.png", "--prompt", "Hi"], "No model given"),
        (["chat"], "No model given"),
        (["eval", "--adapter", f"{tmp}/no-run", "--dataset", shapes], "Adapter folder"),
        (["merge", "--adapter", tmp, "--output-dir", f"{tmp}/m"], "holds no adapter_config.json"),
        (["data", "check", "--dataset", shapes, "--max-length", "64"], "add --model"),
        (["data", "check", "--dataset", shapes, "--truncation", "skip"], "--max-length, which is not set"),
        (["train", "--model", tiny, "--dataset", f"{tmp}/missing.jsonl", "--output-dir", f"{tmp}/r2"],
         "does not exist"),
        (["train", "--lerning-rate", "1"], "unknown option --lerning-rate (did you mean --learning-rate?)"),
    ]


def _status(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors (unknown flag, bad choice) exit from the parser
        return exc.code


def test_every_user_error_is_one_line_with_status_2(tiny_model_dir, shapes_dir, tmp_path, capsys):
    for argv, expected in _cases(str(tiny_model_dir), str(shapes_dir), str(tmp_path)):
        assert _status(argv) == 2, argv
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert lines and lines[-1].startswith("error: ") and expected in lines[-1], (argv, captured.err)
        assert sum(line.startswith("error:") for line in lines) == 1 and not PYTHON_TEXT.search(captured.err), (
            argv, captured.err)


@pytest.mark.parametrize("gpu", ["0gb", "0.0gib", "0 GB"])
def test_estimate_refuses_a_card_without_memory(gpu):
    from vlmpref.errors import VlmprefError
    from vlmpref.plan.gpus import find_gpu

    with pytest.raises(VlmprefError, match="must be positive"):
        find_gpu(gpu)
    assert find_gpu("0.5gb").memory_gib == 0.5
