"""`vlmpref ui` driven in a real browser: Playwright with the system Chromium, offline.

The app serves a folder holding the shapes world, a jsonl dataset with bad rows, a tiny adapter trained
here on the demo base model, and a pair of evaluation folders. The tests click through the three tabs as a
user would, check what the page shows against values computed here, and save screenshots (the folder is
printed at the end of the run; VLMPREF_SCREENSHOT_DIR chooses it). Every request the browser makes and every
connection the server opens must stay on this machine. Skipped when Chromium or Playwright is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from vlmpref.report.browser import find_chromium

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
LOCAL = ("127.0.0.1", "::1", "localhost")


# ---- what the app serves


def _write_jsonl_dataset(folder: Path) -> list[str]:
    """Shapes rows as a .jsonl file with PNG files, plus three bad rows; returns the reasons expected."""
    from vlmpref.data.synthetic import generate_scenes, scene_rows

    (folder / "images").mkdir(parents=True)
    lines = []
    for s, scene in enumerate(generate_scenes(6, seed=3, heldout=False)):
        for q, row in enumerate(scene_rows(scene)):
            name = f"images/{s}.png"
            row["image"].save(folder / name)
            lines.append({"image": name, "question": row["question"], "chosen": row["chosen"],
                          "rejected": row["rejected"]})
    lines.append(dict(lines[0]))  # a duplicate: set aside, its image can be shown
    lines.append({**lines[1], "rejected": lines[1]["chosen"]})  # identical answers
    lines.append({**lines[2], "image": "images/missing.png"})  # no such file
    (folder / "prefs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ["duplicate of row 0", "chosen and rejected are identical", "image file 'images/missing.png' does not exist"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, eval_pair):
    """The folder the app may open, and the answers the compare view must show."""
    from vlmpref.data import load_preference_data
    from vlmpref.data.synthetic import make_splits
    from vlmpref.demo import demo_base_path
    from vlmpref.eval.pope import image_key
    from vlmpref.generate import generate_batch, question_text
    from vlmpref.models import attach_adapter, load_model, load_processor
    from vlmpref.train import TrainConfig, train

    root = tmp_path_factory.mktemp("ui") / "work"
    root.mkdir()
    make_splits(8, 4, seed=0).save_to_disk(str(root / "shapes"))
    reasons = _write_jsonl_dataset(root / "prefs")
    for name, folder in zip(("eval_before", "eval_after"), eval_pair):
        shutil.copytree(folder, root / "evals" / name)
    (root / "fast.yaml").write_text("quantization: none\nreport_to: [none]\ndataset_num_proc: 1\n"
                                    "gradient_checkpointing: false\nper_device_train_batch_size: 4\n"
                                    "gradient_accumulation_steps: 1\nlearning_rate: 0.01\nlogging_steps: 1\n"
                                    "save_steps: 1000\nmax_steps: 2000\nmax_set_aside_fraction: 0.2\n")

    # ---- a tiny adapter on the demo base, trained hard enough that some answers change
    base = str(demo_base_path())
    train(TrainConfig(model=base, dataset=str(root / "shapes"), split="train", output_dir=str(root / "run"),
                            quantization="none", max_steps=10, per_device_train_batch_size=8,
                            gradient_accumulation_steps=1, learning_rate=2e-2, report_to=["none"], dataset_num_proc=1,
                            save_steps=1000, logging_steps=5, loss_type=["sigmoid"], gradient_checkpointing=False))
    rows = list(load_preference_data(str(root / "shapes"), "test", num_proc=1).dataset)
    processor = load_processor(base)
    base_model = load_model(base, quantization="none").eval()
    tuned = attach_adapter(load_model(base, quantization="none"), str(root / "run")).eval()
    args = ([r["prompt"] for r in rows], [r["images"] for r in rows])
    before = generate_batch(base_model, processor, *args, max_new_tokens=64)
    after = generate_batch(tuned, processor, *args, max_new_tokens=64)
    differ = [i for i in range(len(rows)) if before[i] != after[i]]
    assert differ, "the fixture's adapter changed no answer; train it harder"
    i = differ[0]
    images = list(dict.fromkeys(image_key(r["images"]) for r in rows))
    expected = {"gallery_index": images.index(image_key(rows[i]["images"])),
                "question": question_text(rows[i]["prompt"]), "base": before[i], "tuned": after[i],
                "objects": [o["shape"] for o in rows[i]["objects"]]}
    return {"root": root, "compare": expected, "reasons": reasons}


@pytest.fixture(scope="module")
def connections():
    """Addresses the server process connects to while the app runs (audit hooks cannot be removed, so the
    hook records only while `active` is set)."""
    seen, active = [], [False]

    def hook(event, args):
        if active[0] and event == "socket.connect" and isinstance(args[1], tuple):
            seen.append(args[1][0])

    sys.addaudithook(hook)
    active[0] = True
    yield seen
    active[0] = False


@pytest.fixture(scope="module")
def app_url(workspace, connections):
    from vlmpref.ui import UIConfig
    from vlmpref.ui.app import launch
    from vlmpref.ui.train_tab import JOBS, stop_jobs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(UIConfig(run=[str(workspace["root"])], port=port, max_image_pixels=1_000_000), block=False)
    yield f"http://127.0.0.1:{port}/"
    stop_jobs()
    JOBS.clear()
    app.close()
    assert connections and all(address in LOCAL for address in connections), connections


@pytest.fixture(scope="module")
def screenshots(request, tmp_path_factory):
    folder = Path(os.environ.get("VLMPREF_SCREENSHOT_DIR") or Path(request.config.rootpath) / "test-artifacts" / "ui")
    folder.mkdir(parents=True, exist_ok=True)
    request.config.vlmpref_screenshots = folder  # printed at the end of the run (conftest.py)
    return folder


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.set_default_timeout(60_000)
    page.goto(app_url)
    page.wait_for_selector("#compare-gallery img")
    yield page
    page.close()
    outside = [u for u in requests if not u.startswith((app_url, "data:", "blob:"))]
    assert not outside, f"the page fetched from outside the app: {outside[:5]}"


def _text(page, selector: str) -> str:
    return page.inner_text(selector).strip()


def _fill_train_form(page, dataset: Path, config: Path, output: Path) -> None:
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-dataset input").fill(str(dataset))
    page.keyboard.press("Enter")
    page.locator("#train-config input").fill(str(config))
    page.keyboard.press("Enter")
    page.fill("#train-output textarea", str(output))


def _wait_for_step(page, step: int) -> None:
    """Until the status line says the watched run has logged `step` (or a later one)."""
    page.wait_for_function("""n => { const m = document.querySelector('#train-status').innerText.match(/step (\\d+)/);
                                     return m && Number(m[1]) >= n; }""", arg=step, timeout=120_000)


def _wait_until_stopped(page) -> None:
    page.wait_for_function("document.querySelector('#train-status').innerText.includes('stopped cleanly')",
                           timeout=120_000)


# ---- the tests


def test_compare_shows_base_and_tuned_answers_side_by_side(page, workspace, screenshots, tmp_path):
    from vlmpref.eval.hallucination import chair_answer
    from vlmpref.eval.vocab import load_vocabulary

    expected = workspace["compare"]
    page.locator("#compare-gallery img").nth(expected["gallery_index"]).click()
    page.wait_for_function("document.querySelector('#compare-objects textarea').value != ''")
    assert sorted(page.input_value("#compare-objects textarea").split(", ")) == sorted(expected["objects"])
    page.fill("#compare-question textarea", expected["question"])
    page.click("#compare-ask")
    page.wait_for_function("document.querySelector('#compare-status').innerText.includes('Done')")
    base, tuned = (page.inner_text(f"#answer-{side} p.answer").strip() for side in ("base", "tuned"))
    assert (base, tuned) == (expected["base"], expected["tuned"]) and base != tuned
    assert "both with greedy, at the same time, at most 64 new tokens" in _text(page, "#compare-status")
    vocab = load_vocabulary("shapes")  # the objects named that the image does not hold are marked
    for side, answer in (("base", base), ("tuned", tuned)):
        wrong = chair_answer(answer, set(expected["objects"]), vocab)["hallucinated_spans"]
        assert page.locator(f"#answer-{side} mark.h").count() == len(wrong)
    page.screenshot(path=str(screenshots / "compare.png"), full_page=True)

    # ground truth typed by the user counts too: with only the first object said to be there, every other
    # object an answer names is marked
    truth = {expected["objects"][0]}
    page.fill("#compare-objects textarea", expected["objects"][0])
    marks = {side: len(chair_answer(answer, truth, vocab)["hallucinated_spans"])
             for side, answer in (("base", base), ("tuned", tuned))}
    assert sum(marks.values()) > 0
    page.click("#compare-ask")
    page.wait_for_function("m => document.querySelectorAll('#answer-base mark.h').length == m.base && "
                           "document.querySelectorAll('#answer-tuned mark.h').length == m.tuned && "
                           "document.querySelector('#compare-status').innerText.includes('Done')", arg=marks)
    assert [page.inner_text(f"#answer-{side} p.answer").strip() for side in ("base", "tuned")] == [base, tuned]
    page.screenshot(path=str(screenshots / "compare-marked.png"), full_page=True)

    # an upload goes through the datasets' decoding limits: a decompression bomb is refused
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (2000, 1000)).save(bomb)  # 2 Mpixels in a few kB, over the app's --max-image-pixels 1,000,000
    page.set_input_files("#compare-upload input[type=file]", str(bomb))
    page.wait_for_selector("text=image has 2000x1000 pixels, over the limit of 1,000,000")
    page.screenshot(path=str(screenshots / "compare-upload-refused.png"))


def test_evaluation_browser_filters_examples(page, workspace, screenshots):
    from vlmpref.eval.evaluate import read_eval
    from vlmpref.report.compare import metric_specs

    before = read_eval(workspace["root"] / "evals" / "eval_before")
    after = read_eval(workspace["root"] / "evals" / "eval_after")
    pairs = list(zip(before.samples, after.samples))
    # the rule the page states: right where it was wrong, or as right with fewer objects not in the image
    better = [b for b, a in pairs if (not b["correct"] and a["correct"]) or (
        b["correct"] == a["correct"] and len(a.get("hallucinated") or []) < len(b.get("hallucinated") or []))]
    hallucinated = [b for b in before.samples if b.get("hallucinated")]
    assert 0 < len(better) < len(pairs) and hallucinated

    page.get_by_role("tab", name="Evaluation").click()
    page.click("#eval-open")
    page.wait_for_selector("#eval-examples table.examples")
    table = _text(page, "#eval-table")
    labels = {spec.path: spec.label.strip() for spec in metric_specs(before.metrics, after.metrics)}
    assert labels["answer_accuracy"] in table and labels["chair_sentence"] in table
    accuracy = after.metrics["answer_accuracy"]
    assert f"{100 * accuracy['value']:.1f}% [{100 * accuracy['ci95'][0]:.1f}, {100 * accuracy['ci95'][1]:.1f}]" in table
    assert page.locator("#eval-plots img").count() >= 1  # the before/after bars
    assert page.locator("#eval-examples tr.example").count() == len(pairs)

    page.locator("#eval-outcome label", has_text="got better").click()
    page.wait_for_function(f"document.querySelectorAll('#eval-examples tr.example').length == {len(better)}")
    assert {e.get_attribute("data-outcome") for e in page.locator("#eval-examples tr.example").all()} == {"got better"}
    page.screenshot(path=str(screenshots / "evaluation-got-better.png"), full_page=True)

    qtype = better[-1]["question_type"]
    page.locator("#eval-type input").click()
    page.get_by_role("option", name=qtype, exact=True).click()
    wanted = len([b for b in better if b["question_type"] == qtype])
    page.wait_for_function(f"document.querySelectorAll('#eval-examples tr.example').length == {wanted}")

    page.locator("#eval-type input").click()
    page.get_by_role("option", name="all", exact=True).click()
    page.locator("#eval-outcome label", has_text="hallucinated before").click()
    page.wait_for_function(f"document.querySelectorAll('#eval-examples tr.example').length == {len(hallucinated)}")
    assert page.locator("#eval-examples mark.h").count() >= len(hallucinated)
    page.screenshot(path=str(screenshots / "evaluation-hallucinated.png"), full_page=True)


def test_training_starts_draws_curves_and_stops_cleanly(page, workspace, screenshots):
    root = workspace["root"]
    _fill_train_form(page, root / "prefs" / "prefs.jsonl", root / "fast.yaml", root / "ui-run")
    page.click("#train-estimate")
    page.wait_for_function("document.querySelector('#train-estimate-out textarea').value.includes('s/pair')")
    estimate = page.input_value("#train-estimate-out textarea")
    assert "demo_base" in estimate and "GPU memory needed" in estimate
    assert "This run: --max-steps 2000 x 4 x 1 = 8,000 pairs" in estimate

    page.click("#train-start")
    _wait_for_step(page, 3)  # three logged steps: three points on each curve
    for i in range(3):  # a drawn line through at least three points
        line = page.locator(f"#train-plot-{i} .mark-line path").first
        line.wait_for()
        assert line.get_attribute("stroke") and line.get_attribute("d").count("L") >= 2
    assert "running" in _text(page, "#train-status")
    page.screenshot(path=str(screenshots / "train-running.png"), full_page=True)

    page.click("#train-stop")
    _wait_until_stopped(page)
    status = _text(page, "#train-status")
    summary = json.loads((root / "ui-run" / "train_summary.json").read_text())
    assert summary["interrupted"] == "SIGINT" and 3 <= summary["steps"] < 2000
    assert f"Stopped by SIGINT after step {summary['steps']} of 2000" in status
    assert (root / "ui-run" / f"checkpoint-{summary['steps']}" / "trainer_state.json").is_file()

    rejected = _text(page, "#train-rejected")
    for reason in workspace["reasons"]:
        assert reason in rejected
    page.wait_for_function("document.querySelectorAll('#train-rejected-images img').length == 2")  # not the missing one
    page.screenshot(path=str(screenshots / "train-stopped.png"), full_page=True)


@pytest.mark.slow
def test_resume_continues_a_stopped_run(page, workspace, screenshots):
    """Start, stop, Resume: the run goes on from its checkpoint, and stops cleanly again."""
    root = workspace["root"]
    _fill_train_form(page, root / "shapes", root / "fast.yaml", root / "resumed-run")
    page.click("#train-start")
    _wait_for_step(page, 2)
    page.click("#train-stop")
    _wait_until_stopped(page)
    first = json.loads((root / "resumed-run" / "train_summary.json").read_text())["steps"]

    page.click("#train-resume")
    _wait_for_step(page, first + 2)
    assert "running" in _text(page, "#train-status")
    page.click("#train-stop")
    _wait_until_stopped(page)
    summary = json.loads((root / "resumed-run" / "train_summary.json").read_text())
    assert summary["resumed_from"] == f"checkpoint-{first}" and summary["steps"] >= first + 2
    assert summary["interrupted"] == "SIGINT" and f"step {summary['steps']}" in _text(page, "#train-status")
    page.screenshot(path=str(screenshots / "train-resumed.png"), full_page=True)
