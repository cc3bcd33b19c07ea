"""The web UI's rules without a browser: folders, login, uploads, training commands, logs and evaluation filters.

The browser tests (test_ui_browser.py) drive the same app through Chromium.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from vlmpref.errors import VlmprefError
from vlmpref.ui import UIConfig, is_loopback, login
from vlmpref.ui.folders import Folders


# ---- folders: nothing outside the ones given on the command line


@pytest.fixture
def tree(tmp_path):
    """An allowed folder with a run, an evaluation, a dataset and a config; a secret folder beside it."""
    root, secret = tmp_path / "work", tmp_path / "secret"
    (root / "run" / "checkpoint-2").mkdir(parents=True)
    (root / "run" / "vlmpref_config.yaml").write_text("model: m\n")
    for folder in (root / "run", root / "run" / "checkpoint-2"):
        (folder / "adapter_config.json").write_text("{}")
    (root / "run" / "runs").mkdir()  # TensorBoard events: not searched
    (root / "run" / "runs" / "x.yaml").write_text("")
    (root / "eval").mkdir()
    (root / "eval" / "metrics.json").write_text("{}")
    (root / "eval" / "samples.jsonl").write_text("")
    (root / "data").mkdir()
    (root / "data" / "dataset_dict.json").write_text("{}")
    (root / "prefs.jsonl").write_text("")
    (root / "fast.yaml").write_text("")
    secret.mkdir()
    (secret / "key.jsonl").write_text("")
    (root / "link").symlink_to(secret)
    return root, secret


def test_paths_that_leave_the_folders_are_refused(tree):
    root, secret = tree
    folders = Folders([root])
    assert folders.readable(root / "prefs.jsonl") == root / "prefs.jsonl"
    for escape in (secret / "key.jsonl", root / ".." / "secret" / "key.jsonl", root / "link" / "key.jsonl", "/etc"):
        with pytest.raises(VlmprefError, match=r"is outside the folders this UI may open \(.*work\); restart "
                                               r"vlmpref ui with --run naming a folder that holds it\."):
            folders.readable(escape, "dataset")
    with pytest.raises(VlmprefError, match="outside the folders this UI may write to"):
        folders.writable(root / "link" / "new-run")
    assert folders.writable(root / "new-run") == root / "new-run"  # need not exist yet
    with pytest.raises(VlmprefError, match="does not exist"):
        folders.readable(root / "nothing-here")


def test_shipped_model_is_readable_but_not_writable(tree, tmp_path):
    root, _ = tree
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    folders = Folders([root], read_only=[shipped])
    assert folders.readable(shipped) == shipped
    with pytest.raises(VlmprefError, match="may write to"):
        folders.writable(shipped / "out")


def test_hub_ids_pass_and_local_paths_are_checked(tree):
    root, secret = tree
    folders = Folders([root])
    assert folders.model_or_hub("HuggingFaceTB/SmolVLM-Instruct", "model") == "HuggingFaceTB/SmolVLM-Instruct"
    assert folders.model_or_hub(str(root / "data"), "dataset") == str(root / "data")
    for path in (str(secret), "../secret", "/etc/passwd", "a/b/c"):
        with pytest.raises(VlmprefError):
            folders.model_or_hub(path, "dataset")


def test_search_sorts_what_the_folders_hold(tree):
    root, _ = tree
    found = Folders([root]).search()
    assert found.adapters == [root / "run", root / "run" / "checkpoint-2"]
    assert found.runs == [root / "run"]
    assert found.evals == [root / "eval"]
    assert found.datasets == [root / "data", root / "prefs.jsonl"]  # the linked secret folder is not followed
    assert found.configs == [root / "fast.yaml", root / "run" / "vlmpref_config.yaml"]


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(VlmprefError, match=r"--run .*nope is not a folder"):
        Folders([tmp_path / "nope"])


# ---- where it listens and who may log in


def test_only_this_machine_without_a_password(tmp_path, monkeypatch):
    monkeypatch.delenv("VLMPREF_UI_PASSWORD", raising=False)
    assert login(UIConfig()) is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("myhost")
    with pytest.raises(VlmprefError, match=r"--host 0\.0\.0\.0 lets other machines reach the UI; pass "
                                           r"--allow-remote as well"):
        login(UIConfig(host="0.0.0.0"))
    with pytest.raises(VlmprefError, match="with --allow-remote needs a password"):
        login(UIConfig(host="0.0.0.0", allow_remote=True))
    secret = tmp_path / "pw"
    secret.write_text("short\n")
    with pytest.raises(VlmprefError, match="shorter than 8 characters"):
        login(UIConfig(host="0.0.0.0", allow_remote=True, password_file=str(secret)))
    secret.write_text("correct horse battery\n")
    assert login(UIConfig(host="0.0.0.0", allow_remote=True, password_file=str(secret))) == \
        ("vlmpref", "correct horse battery")
    monkeypatch.setenv("VLMPREF_UI_PASSWORD", "from the environment")
    assert login(UIConfig(user="me")) == ("me", "from the environment")  # a login on this machine too


def test_cli_refuses_a_reachable_address_before_loading_anything(capsys):
    from vlmpref.cli import main

    assert main(["ui", "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err.startswith("error: --host 0.0.0.0 lets other machines reach the UI")
    assert main(["ui", "--port", "0"]) == 2


def test_offline_environment_removes_what_would_share_or_phone_home(monkeypatch):
    from vlmpref.ui import offline_environment

    monkeypatch.setenv("GRADIO_SHARE", "True")
    monkeypatch.setenv("GRADIO_ALLOWED_PATHS", "/")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    offline_environment()
    assert "GRADIO_SHARE" not in os.environ and "GRADIO_ALLOWED_PATHS" not in os.environ
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"


# ---- uploads and marked answers


def test_uploads_get_the_datasets_decoding_limits(tmp_path):
    from vlmpref.ui.compare import decode_upload

    bomb = tmp_path / "bomb.png"  # 4 Mpixels in 2 kB; refused from its header, before decoding
    Image.new("1", (2000, 2000)).save(bomb)
    with pytest.raises(VlmprefError, match=r"The uploaded image cannot be used: image has 2000x2000 pixels, over "
                                           r"the limit of 1,000,000 \(raise it with --max-image-pixels"):
        decode_upload(bomb, max_pixels=1_000_000)
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (4, 3), (255, 0, 0, 0)).save(clear)
    image = decode_upload(clear, max_pixels=100)
    assert image.mode == "RGB" and image.size == (4, 3) and image.getpixel((0, 0)) == (255, 255, 255)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(VlmprefError, match="cannot be decoded"):
        decode_upload(tmp_path / "text.png", max_pixels=100)


def test_objects_not_in_the_image_are_marked():
    from vlmpref.ui.compare import marked_answer, parse_objects, vocabulary_for

    objects = parse_objects("circle, triangle")
    vocab = vocabulary_for(objects)
    assert vocab.name == "shapes" and vocabulary_for(["dog", "person"]).name == "coco80"
    page = marked_answer("A red circle and a blue square, but no cross.", objects, vocab)
    assert page == ('<p class="answer">A red circle and a blue <mark class="h">square</mark>, but no cross.</p>'
                    '<p class="tag">not in the image: <span class="hallucinated">square</span></p>')
    assert "every object named is in the image" in marked_answer("A circle.", objects, vocab)
    assert marked_answer("A <b>square</b>.", None, None) == '<p class="answer">A &lt;b&gt;square&lt;/b&gt;.</p>'
    assert parse_objects([{"shape": "circle"}, "dog"]) == ["circle", "dog"] and parse_objects(" , ") is None


def test_streamed_answers_equal_the_generate_answers(tiny_model_dir, shapes_rows, tmp_path):
    """Base and tuned stream side by side and end with what `vlmpref generate` answers (greedy)."""
    import torch
    import yaml
    from peft import get_peft_model

    from vlmpref.generate import generate_batch, user_prompt
    from vlmpref.models import attach_adapter, load_model, load_processor, lora_config
    from vlmpref.ui.compare import load_pair, stream_pair

    run = tmp_path / "run"
    model = load_model(str(tiny_model_dir), quantization="none")
    peft = get_peft_model(model, lora_config(model, use_dora=False, init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    peft.save_pretrained(run)
    (run / "vlmpref_config.yaml").write_text(yaml.safe_dump({"model": str(tiny_model_dir), "quantization": "none"}))

    image, question = shapes_rows[0]["images"][0], "Describe the image."
    pair = load_pair(run)
    assert load_pair(run) is pair  # loaded once
    steps = list(stream_pair(pair, image, question, max_new_tokens=12))
    processor = load_processor(str(tiny_model_dir))
    expected = [generate_batch(m.eval(), processor, [user_prompt(question)], [[image]], max_new_tokens=12)[0]
                for m in (load_model(str(tiny_model_dir), quantization="none"),
                          attach_adapter(load_model(str(tiny_model_dir), quantization="none"), str(run)))]
    assert list(steps[-1]) == expected and expected[0] != expected[1]
    assert len(steps) > 2 and all(len(a) <= len(b) for a, b in zip(steps[-2], steps[-1]))  # it grew
    # sampled answers come one after the other, each from the seed: the same seed gives the same answers
    sampled = [list(stream_pair(pair, image, question, seed=7, max_new_tokens=12, do_sample=True, temperature=1.5))[-1]
               for _ in range(2)]
    assert sampled[0] == sampled[1] and sampled[0] != steps[-1]


# ---- training from the page


def test_plan_run_builds_the_train_command_from_filled_fields(tree, tmp_path):
    from vlmpref.ui.training import plan_run

    root, secret = tree
    (root / "fast.yaml").write_text("quantization: none\nlearning_rate: 0.01\n")
    form = {"model": "HuggingFaceTB/SmolVLM-256M-Instruct", "dataset": str(root / "data"), "split": "train",
            "eval_split": "", "preset": "", "config": str(root / "fast.yaml"), "output_dir": str(root / "new"),
            "overwrite": False, "max_steps": 40.0, "num_train_epochs": None, "learning_rate": None,
            "per_device_train_batch_size": 2.0, "gradient_accumulation_steps": None, "quantization": "auto",
            "lora_scope": "language", "engine": "auto", "loss_type": ["sigmoid", "sft"], "logging_steps": None,
            "save_steps": None, "eval_steps": None}
    cfg, argv = plan_run(Folders([root]), form)
    assert argv == [sys.executable, "-m", "vlmpref", "train", "--config", str(root / "fast.yaml"),
                    "--model", "HuggingFaceTB/SmolVLM-256M-Instruct", "--dataset", str(root / "data"),
                    "--split", "train", "--output-dir", str(root / "new"), "--max-steps", "40",
                    "--per-device-train-batch-size", "2", "--lora-scope", "language", "--loss-type", "sigmoid", "sft"]
    assert (cfg.max_steps, cfg.quantization, cfg.learning_rate, cfg.lora_scope) == (40, "none", 0.01, "language")

    for field, value, message in (("output_dir", str(secret / "run"), "outside the folders this UI may write to"),
                                  ("dataset", str(secret / "key.jsonl"), "outside the folders this UI may open"),
                                  ("config", str(secret / "c.yaml"), "outside the folders this UI may open"),
                                  ("output_dir", str(root / "run"), "is not empty; choose another name, tick "
                                                                    "overwrite, or resume that run"),
                                  ("max_steps", -3, "--max-steps must be positive")):
        with pytest.raises(VlmprefError, match=message):
            plan_run(Folders([root]), {**form, field: value})
    (root / "evil.yaml").write_text(f"output_dir: {secret / 'run'}\n")  # a config file cannot lead out either
    with pytest.raises(VlmprefError, match="may write to"):
        plan_run(Folders([root]), {**form, "config": str(root / "evil.yaml"), "output_dir": ""})


def test_resume_needs_an_unfinished_run(tree):
    from vlmpref.ui.training import resume_argv

    root, _ = tree
    folders = Folders([root])
    assert resume_argv(folders, root / "run")[-2:] == ["--resume", str(root / "run")]
    (root / "run" / "train_summary.json").write_text(json.dumps({"interrupted": "SIGINT"}))
    assert resume_argv(folders, root / "run")[-1] == str(root / "run")
    (root / "run" / "train_summary.json").write_text(json.dumps({"interrupted": None}))
    with pytest.raises(VlmprefError, match="already finished"):
        resume_argv(folders, root / "run")
    with pytest.raises(VlmprefError, match="holds no vlmpref_config.yaml"):
        resume_argv(folders, root / "eval")


def test_train_job_keeps_output_and_stops_with_sigint(tmp_path):
    """A stand-in for `vlmpref train`: redraws a progress bar, and on SIGINT prints its closing line."""
    import time

    from vlmpref.ui.training import TrainJob

    script = tmp_path / "fake_train.py"
    script.write_text(textwrap.dedent("""
        import signal, sys, time
        stop = []
        signal.signal(signal.SIGINT, lambda *a: stop.append(1))
        print("40 rows used, 0 set aside")
        for step in range(1, 10_000):
            sys.stdout.write(f"\\r{step}/10000 steps"); sys.stdout.flush()
            if stop:
                print(f"\\nStopped by SIGINT after step {step} of 10000; checkpoint-{step} saved.")
                sys.exit(0)
            time.sleep(0.01)
    """))
    job = TrainJob.start([sys.executable, str(script)], tmp_path)
    deadline = time.time() + 30
    while "steps" not in job.progress and time.time() < deadline:
        time.sleep(0.05)
    assert job.running and job.state() == "running" and job.tail().startswith("40 rows used, 0 set aside\n")
    assert os.getpgid(job.process.pid) != os.getpgid(0)  # its own session: a Ctrl-C at the terminal is not sent twice
    assert job.stop() and not job.stop()  # sent once: a second SIGINT would stop train at once
    assert job.wait(timeout=30) == 0
    assert job.state() == "stopped cleanly" and job.outcome().startswith("Stopped by SIGINT after step")


def test_train_log_reads_the_latest_line_of_each_step(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from vlmpref.train.train_log import JsonlLog, read_train_log
    from vlmpref.ui.training import curves

    log = JsonlLog(tmp_path / "train_log.jsonl")
    state, args = TrainerState(), TrainingArguments(output_dir=str(tmp_path), report_to=[])
    for step, loss in ((1, 0.69), (2, 0.6), (2, 0.55)):  # step 2 again: a resumed run logs it anew
        state.global_step, state.epoch = step, step / 4
        log.on_log(args, state, TrainerControl(), logs={"loss": loss, "rewards/margins": step / 10})
    log.on_log(args, state, TrainerControl(), logs={"eval_loss": 0.7, "eval_rewards/margins": 0.1})
    with (tmp_path / "train_log.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')  # cut short by a crash
    history = read_train_log(tmp_path)
    assert [(h["step"], h.get("loss"), h.get("eval_loss")) for h in history] == \
        [(1, 0.69, None), (2, 0.55, None), (2, None, 0.7)]
    points = curves(tmp_path)
    assert points["loss"] == [{"step": 1, "value": 0.69, "series": "train"},
                              {"step": 2, "value": 0.55, "series": "train"},
                              {"step": 2, "value": 0.7, "series": "held-out"}]
    assert points["reward accuracy"] == []
    (tmp_path / "train_log.jsonl").unlink()
    (tmp_path / "train_summary.json").write_text(json.dumps({"log_history": [{"step": 5, "loss": 0.4}]}))
    assert read_train_log(tmp_path) == [{"step": 5, "loss": 0.4}]


# ---- the evaluation browser


def test_outcome_rules():
    from vlmpref.ui.evals import outcome

    right, wrong = {"correct": True, "hallucinated": []}, {"correct": False, "hallucinated": []}
    assert outcome(wrong, right) == "got better" and outcome(right, wrong) == "got worse"
    assert outcome(right, right) == "unchanged"
    assert outcome({**right, "hallucinated": ["dog"]}, right) == "got better"  # as right, fewer objects not there
    assert outcome(right, {**wrong, "hallucinated": []}) == "got worse"
    assert outcome({**wrong, "hallucinated": []}, {**right, "hallucinated": ["cat"]}) == "got better"  # right wins


def test_evaluation_view_filters_and_pages(eval_pair):
    from vlmpref.ui.evals import examples_html, open_evaluation

    view = open_evaluation(*eval_pair)
    samples = list(zip(view.before.samples, view.after.samples))
    # the fixture: before answers every row wrongly, after rightly except row 0
    expected_better = sum(1 for b, a in samples if not b["correct"] and a["correct"])
    assert view.counts()["got better"] == expected_better > 0 and view.counts()["all"] == len(samples)
    assert view.counts()["got worse"] == sum(1 for b, a in samples if b["correct"] and not a["correct"])
    qtype = view.question_types[0]
    assert all(e.sample["question_type"] == qtype for e in view.filter(qtype, "all"))
    assert view.table()[0][:3] == ["answer accuracy", "0.0% [0.0, 20.4]", "93.3% [70.2, 98.8]"]
    page = examples_html(view.filter("all", "all"), view.folders, page=2, per_page=4)
    assert f'data-count="{len(samples)}"' in page and "page 2 of 4" in page and page.count('<tr class="example"') == 4
    assert page.count("data:image/png;base64,") == 4  # each example with its image
    alone = open_evaluation(eval_pair[0])
    assert alone.headers() == ["metric", "value [95% interval]", "n"] and alone.table()[0][0] == "answer accuracy"


def test_nothing_below_the_ui_imports_it():
    """The UI sits on top of the pipeline, beside the CLI: no stage imports it."""
    import ast

    import vlmpref

    package = Path(vlmpref.__file__).parent
    importers = []
    for path in package.rglob("*.py"):
        if path.is_relative_to(package / "ui") or path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "vlmpref.ui" or n.startswith("vlmpref.ui.") for n in names):
                importers.append(path.name)
    assert importers == []


def test_missing_gradio_is_a_clear_error(monkeypatch):
    from vlmpref.ui import run_ui

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    for module in ("vlmpref.ui.app", "vlmpref.ui.widgets", "vlmpref.ui.train_tab"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(VlmprefError, match=r"The web UI needs Gradio; install it with `pip install 'vlmpref\[ui\]'`"):
        run_ui(UIConfig(), block=False)
