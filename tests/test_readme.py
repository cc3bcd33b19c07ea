"""Every `vlmpref ...` command README.md shows runs as shown, so a README line cannot drift from the code.

Each command in a ```bash block is in exactly one of three lists: RUN (run here, in the default test run, in a
folder holding the local assets the README names: runs/tiny, runs/shapes, data/prefs.jsonl, photo.jpg, ...),
RUN_SLOW (run the same way under `-m slow`: they train or evaluate), or COVERED (they need the Hub or a large GPU
run; each names the tests that run the same command path on tiny local assets). A new or changed README line is in
none of them and fails `test_every_readme_command_is_run_or_covered`. Every command, inline ones too, must also
parse and resolve with the options of the current code. Claims in a command's comment ("# fits", "# does not
fit") are checked against what it prints.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from vlmpref import config as config_io
from vlmpref.cli import COMMANDS, _requested, build_parser, main

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()

# ---- commands of the README, as shown


def block_commands() -> list[tuple[str, str]]:
    """(command, comment) for every `vlmpref` line of a ```bash block, continuation lines joined."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1].rstrip() + " " + lines[i].strip()
            i += 1
            if not line.startswith("vlmpref "):
                continue
            command, *comment = re.split(r"\s+#\s+", line, maxsplit=1)
            found.append((" ".join(command.split()), comment[0].strip() if comment else ""))
    return found


def inline_commands() -> list[str]:
    """`vlmpref ...` in the README's text (placeholders such as OUTPUT_DIR included)."""
    return sorted({" ".join(c.split()) for c in re.findall(r"`(vlmpref [^`]+)`", README)} - {"vlmpref ui"})


SETUP = "python3 -m venv .venv"  # the set-up lines end in `vlmpref demo`; .ci/run runs the test one

RUN = {
    "vlmpref estimate --model HuggingFaceTB/SmolVLM-Instruct --gpu rtx-4070 --engine trl",
    "vlmpref estimate --config configs/smolvlm-instruct/dpo-guide.yaml --gpu 8gb",
    "vlmpref estimate --config configs/smolvlm-instruct/dpo-guide-trl.yaml --gpu 6gb",
    "vlmpref estimate --model smolvlm-256m --preset 6gb",
    "vlmpref estimate --model smolvlm-2.2b --gpu rtx-4090 --num-gpus 2",
    "vlmpref estimate --model HuggingFaceTB/SmolVLM-Instruct --gpu rtx-4070",
    "vlmpref estimate --model runs/tiny --per-device-train-batch-size 4 --image-size 1024x768 --answer-tokens 200",
    "vlmpref estimate --config configs/smolvlm-256m/dpo.yaml --pairs 20000 --num-train-epochs 1",
    "vlmpref estimate --model smolvlm-2.2b --engine fast --lora-scope language --as-json",
    "vlmpref estimate --list-gpus",
    "vlmpref data check --dataset data/prefs.jsonl --output-dir runs/check",
    "vlmpref tiny-model --output-dir runs/tiny",  # run by the folder's fixture: the others need runs/tiny
}
TINY = "vlmpref tiny-model --output-dir runs/tiny"

# In the order a user runs them: train, then what reads the run
RUN_SLOW = [
    "vlmpref tiny-model --output-dir runs/tiny-llava --architecture llava",
    "vlmpref tiny-model --output-dir runs/tiny-smolvlm2 --architecture smolvlm",
    "vlmpref tiny-model --output-dir runs/tiny-qwen2vl --architecture qwen2_vl",
    "vlmpref data synthetic --output-dir runs/shapes --train-scenes 400 --test-scenes 100",
    'vlmpref train --model runs/tiny --dataset data/prefs.jsonl --split "train[:90%]" --eval-split "train[90%:]" '
    "--quantization none --lora-scope language --output-dir runs/dpo",
    'vlmpref generate --model runs/tiny --adapter runs/dpo --dataset runs/shapes --split "test[:100]" '
    "--output-dir runs/answers",
    "vlmpref eval --model runs/tiny --dataset runs/shapes --split test --output-dir runs/eval_base",
    "vlmpref eval --adapter runs/dpo --dataset runs/shapes --split test --output-dir runs/eval_dpo",
    "vlmpref compare runs/eval_base runs/eval_dpo --run runs/dpo --output-dir runs/report",
    "vlmpref compare --adapter runs/dpo --dataset runs/shapes --split test --output-dir runs/report_adapter",
    "vlmpref merge --adapter runs/dpo --output-dir runs/dpo-merged",
    "vlmpref chat --model runs/dpo-merged --image left.jpg right.jpg --do-sample --temperature 0.7",
    "vlmpref score --answers answers.jsonl --output-dir runs/score",
]

_GUIDE = ["tests/test_configs.py::test_config_loads_and_opens_with_its_command",
          "tests/test_configs.py::test_every_shipped_config_runs_the_engine_and_mode_its_name_and_the_table_say",
          "tests/test_heldout_choice.py::test_the_config_keeps_its_own_dataset_and_held_out_set"]
_DEMO = ["tests/test_eval_cli.py::test_demo_ends_with_the_report_and_an_ablation"]
COVERED = {
    "vlmpref train --config configs/smolvlm-instruct/dpo-guide.yaml": _GUIDE,
    "vlmpref train --config configs/smolvlm-instruct/dpo-language-only.yaml": _GUIDE,
    "vlmpref train --config configs/smolvlm-instruct/dpo-guide-trl.yaml": _GUIDE,
    "vlmpref train --config configs/smolvlm-instruct/dpo-guide.yaml --learning-rate 5e-6 --num-train-epochs 1":
        _GUIDE + ["tests/test_presets.py::test_precedence_flags_over_yaml_over_preset_over_defaults"],
    'vlmpref train --model HuggingFaceTB/SmolVLM-Instruct --dataset HuggingFaceH4/rlaif-v_formatted --eval-split '
    '"test[:1%]" --output-dir runs/smolvlm-instruct-dpo':
        ["tests/test_defaults.py::test_local_data_default_to_the_whole_split_and_the_guide_keeps_its_slices"],
    "vlmpref train --preset 8gb --model HuggingFaceTB/SmolVLM-Instruct --output-dir runs/dpo-8gb":
        ["tests/test_presets.py::test_train_prints_the_preset_values_and_a_summary_line"],
    "vlmpref demo": _DEMO,
    "vlmpref demo --output-dir /tmp/demo --max-steps 60 --loss-type sigmoid": _DEMO,
    "vlmpref demo --ablation": _DEMO,
    'vlmpref generate --model HuggingFaceTB/SmolVLM-Instruct --adapter runs/dpo --image photo.jpg --prompt "What '
    'is in the image?"': ["tests/test_runs.py::test_generate_and_chat_take_the_model_from_the_run_and_images_from_"
                          "the_current_folder"],
    "vlmpref eval --model HuggingFaceTB/SmolVLM-Instruct --adapter runs/smolvlm-instruct-dpo --dataset "
    "data/coco_prefs.jsonl --vocabulary coco80 --output-dir runs/eval_coco":
        ["tests/test_score.py::test_eval_cli_with_coco_annotations"],
    "vlmpref score --answers captions.jsonl --coco-instances annotations/instances_val2014.json --coco-captions "
    "annotations/captions_val2014.json --output-dir runs/score_coco":
        ["tests/test_score.py::test_score_cli_both_readings_and_set_aside_rows"],
    "vlmpref compare runs/score_base runs/score_tuned --output-dir runs/report":
        ["tests/test_score.py::test_compare_reads_schema_1_and_2"],
    "vlmpref merge --adapter runs/dpo/checkpoint-40 --model HuggingFaceTB/SmolVLM-Instruct --output-dir runs/merged "
    "--dtype float16": ["tests/test_merge.py::test_merge_cli_and_errors",
                        "tests/test_runs.py::test_eval_of_a_checkpoint_finds_the_base_from_another_folder"],
    "vlmpref chat --model HuggingFaceTB/SmolVLM-Instruct --adapter runs/dpo --image photo.jpg":
        ["tests/test_chat.py::test_chat_command_through_stdin"],
    'vlmpref data check --dataset HuggingFaceH4/rlaif-v_formatted --split "train[:1%]" --model '
    "HuggingFaceTB/SmolVLM-Instruct": ["tests/test_output_medium.py::test_data_check_applies_trains_length_policy"],
    "vlmpref ui --run runs/demo": ["tests/test_ui.py::test_cli_refuses_a_reachable_address_before_loading_anything",
                                   "tests/test_ui_browser.py"],
    "vlmpref ui --run runs data/my-prefs --port 8080": ["tests/test_ui.py::test_only_this_machine_without_a_password"],
}


def _argv(command: str) -> list[str]:
    return shlex.split(command)[1:]


@pytest.fixture(scope="module")
def readme_folder(shapes_dir, tmp_path_factory):
    """A folder with what the README's commands name: configs/, runs/tiny (made by the README's own command),
    runs/shapes (small), data/prefs.jsonl, images."""
    work = tmp_path_factory.mktemp("readme")
    (work / "configs").symlink_to(ROOT / "configs")
    shutil.copytree(shapes_dir, work / "runs" / "shapes")
    (work / "data" / "images").mkdir(parents=True)
    colors = ["red", "blue", "green", "yellow"]
    with (work / "data" / "prefs.jsonl").open("w") as f:
        for i in range(12):
            color, other = colors[i % 4], colors[(i + 1) % 4]
            Image.new("RGB", (40 + i, 32), color).save(work / "data" / "images" / f"{i}.png")  # no duplicates
            f.write(json.dumps({"image": f"images/{i}.png", "question": "What color is the image?",
                                "chosen": f"It is {color}.", "rejected": f"It is {other}."}) + "\n")
    for name in ("photo.jpg", "left.jpg", "right.jpg"):
        Image.new("RGB", (40, 30), "red").save(work / name)
    (work / "answers.jsonl").write_text(json.dumps({"question": "Describe the image.", "answer": "A dog on a couch.",
                                                    "objects": ["dog", "couch"]}) + "\n")
    assert _run(TINY, work) == 0
    return work


def _options(name: str) -> set[str]:
    """The flags of one command, read from the parser the CLI builds."""
    parser = build_parser(only=name)
    for word in name.split():
        parser = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices[word]
    return {option for action in parser._actions for option in action.option_strings}


def _run(command: str, folder: Path) -> int:
    """Run `command` in `folder`; `chat` reads one question from its input, as `printf ... | vlmpref chat` does."""
    before, stdin = os.getcwd(), sys.stdin
    os.chdir(folder)
    sys.stdin = io.StringIO("What is in the image?\n")
    try:
        return main(_argv(command))
    finally:
        os.chdir(before)
        sys.stdin = stdin


# ---- the tests


def test_every_readme_command_is_run_or_covered():
    shown = [c for c, _ in block_commands()]
    assert len(shown) > 30
    listed = RUN | set(RUN_SLOW) | set(COVERED)
    assert not set(shown) - listed, f"README commands no test runs; add each to RUN, RUN_SLOW or COVERED: " \
                                    f"{sorted(set(shown) - listed)}"
    assert not listed - set(shown), f"listed but no longer in the README: {sorted(listed - set(shown))}"
    assert not RUN & set(RUN_SLOW) and not (RUN | set(RUN_SLOW)) & set(COVERED)
    for tests in COVERED.values():
        for test in tests:
            path, _, name = test.partition("::")
            assert (ROOT / path).is_file(), test
            assert not name or f"def {name}(" in (ROOT / path).read_text(), f"no test {test}"


def test_every_readme_command_parses_and_resolves_with_the_current_options(readme_folder):
    before = os.getcwd()
    os.chdir(readme_folder)
    try:
        for command in inline_commands():  # the text names commands and options, often without values
            argv = config_io.normalize_flags(_argv(command))
            name = _requested(argv)
            assert name, f"no such command: {command}"
            known = _options(name)
            assert all(a in known for a in argv if a.startswith("--")), f"{command}: unknown option"
        for command, _ in block_commands():
            argv = config_io.normalize_flags(_argv(command))
            name = _requested(argv)
            assert name, f"no such command: {command}"
            namespace, unknown = build_parser(only=name).parse_known_args(argv)
            assert not unknown, f"{command}: unknown option {unknown[0]}"
            args = {k: v for k, v in vars(namespace).items() if k not in ("_command", "command", "subcommand")}
            entry = COMMANDS[name]  # resolved as `vlmpref` resolves it (estimate reads a train YAML)
            borrowed = entry.reads_yaml_of() if entry.reads_yaml_of else None
            config_io.resolve(entry.config(), flags=args, yaml_path=args.pop("config", None), borrowed_from=borrowed)
    finally:
        os.chdir(before)


def test_cheap_readme_commands_run_as_shown_and_print_what_their_comments_say(readme_folder, capsys):
    comments = dict(block_commands())
    assert (readme_folder / "runs" / "tiny" / "config.json").is_file()  # TINY, run by the fixture
    for command in sorted(RUN - {TINY}):
        assert _run(command, readme_folder) == 0, command
        out = capsys.readouterr().out
        claim = comments.get(command, "")
        if claim.startswith("fits"):
            assert re.search(r": fits", out) and "does not fit" not in out, (command, out[-800:])
        if claim.startswith("does not fit"):
            assert "does not fit" in out, (command, out[-800:])
        if "1 pair per forward" in claim:
            assert "Packing: 1 pair(s) per forward" in out, (command, out[-800:])
        if "a table of common cards" in claim:
            assert "RTX 4070" in out
    assert (readme_folder / "runs" / "check" / "data_check.json").is_file()


@pytest.mark.slow
def test_local_readme_commands_run_as_shown(readme_folder, tmp_path):
    # `data synthetic` as shown writes a 2,500-row dataset: in its own folder, so the rest stays small and quick
    synthetic = [c for c in RUN_SLOW if "data synthetic" in c]
    rest = [c for c in RUN_SLOW if c not in synthetic]
    assert _run(synthetic[0], tmp_path) == 0
    assert (tmp_path / "runs" / "shapes" / "dataset_dict.json").is_file()
    for command in rest:
        assert _run(command, readme_folder) == 0, command
    assert (readme_folder / "runs" / "answers" / "generations.jsonl").is_file()
    assert (readme_folder / "runs" / "report" / "report.html").is_file()
    assert (readme_folder / "runs" / "dpo-merged" / "model.safetensors").is_file()
