"""The Gradio app behind `vlmpref ui`: the layout of the three tabs and what each button does.

    from vlmpref.ui import UIConfig
    from vlmpref.ui.app import launch
    app = launch(UIConfig(run=["runs/demo"], port=7860), block=False)   # returns once it listens
    app.close()

The work itself lives beside this file (compare.py, evals.py, training.py, folders.py) and in the pipeline's
stages; this module lays out the Compare and Evaluation tabs (the Train tab is train_tab.py) and serves them.
Gradio is kept offline (widgets.py imports it after `offline_environment`).
"""

from __future__ import annotations

import atexit
import time
from pathlib import Path

from vlmpref.errors import VlmprefError
from vlmpref.ui import UIConfig, login
from vlmpref.ui.folders import Folders
from vlmpref.ui.train_tab import stop_jobs, train_tab
from vlmpref.ui.widgets import CSS, choices, gr, guard, pair_choices

# ---- Compare


def _compare_tab(cfg: UIConfig, folders: Folders, found):
    from vlmpref.ui.compare import (GENERATION_DEFAULTS, decode_upload, load_pair, marked_answer, parse_objects,
                                    run_settings, stream_pair, vocabulary_for)

    # finished runs first, their checkpoints after
    adapters = choices(folders, sorted(found.adapters, key=lambda p: (p.name.startswith("checkpoint-"), str(p))))
    datasets = choices(folders, [d for d in found.datasets if d.is_dir()])
    gr.Markdown("Ask the base model and the tuned model (base + adapter) the same question about the same image, "
                "with the same generation settings. When the image's objects are known, objects an answer names "
                "that are not in the image are <mark class=\"h\">marked</mark>.")
    with gr.Row():
        with gr.Column():
            adapter = gr.Dropdown(adapters, value=adapters[0][1] if adapters else None, label="Tuned model (adapter)",
                                  allow_custom_value=True, elem_id="compare-adapter")
            base_info = gr.Markdown(elem_id="compare-base")
            source = gr.Dropdown(datasets, value=datasets[0][1] if datasets else None, label="Pick an image from",
                                 allow_custom_value=True, elem_id="compare-dataset")
            split = gr.Textbox("test", label="Split", elem_id="compare-split")
            gallery = gr.Gallery(label="Images (click one)", columns=8, height=200, allow_preview=False,
                                 buttons=[], elem_id="compare-gallery")
            upload = gr.File(label="... or upload an image", file_types=["image"], type="filepath",
                             elem_id="compare-upload")
        with gr.Column():
            shown = gr.Image(label="Image", type="pil", format="png", interactive=False, height=240,
                             buttons=["fullscreen"], elem_id="compare-image")
            objects = gr.Textbox(label="Objects in the image (ground truth, comma-separated; empty if unknown)",
                                 elem_id="compare-objects")
            asked = gr.Dropdown([], label="Questions the data asks about this image", elem_id="compare-questions")
            question = gr.Textbox(label="Question", elem_id="compare-question")
            with gr.Accordion("Generation settings (the same for both models)", open=False):
                max_new_tokens = gr.Slider(1, 512, GENERATION_DEFAULTS["max_new_tokens"], step=1,
                                           label="max new tokens")
                do_sample = gr.Checkbox(GENERATION_DEFAULTS["do_sample"], label="sample (otherwise greedy)")
                temperature = gr.Slider(0.05, 2.0, GENERATION_DEFAULTS["temperature"], label="temperature")
                top_p = gr.Slider(0.05, 1.0, GENERATION_DEFAULTS["top_p"], label="top p")
                seed = gr.Number(0, precision=0, label="seed")
                vocab = gr.Dropdown(["auto", "shapes", "coco80"], value="auto", label="object vocabulary")
            ask = gr.Button("Ask both models", variant="primary", elem_id="compare-ask")
    with gr.Row(equal_height=True):
        with gr.Column():
            gr.Markdown("### Base model")
            base_out = gr.HTML(elem_id="answer-base")
        with gr.Column():
            gr.Markdown("### Tuned model")
            tuned_out = gr.HTML(elem_id="answer-tuned")
    status = gr.Markdown(elem_id="compare-status")
    picture = gr.State(None)  # the decoded image the models see (the page shows a copy)
    pictures = gr.State([])  # the gallery's images with their questions and objects

    @guard
    def describe_run(path):
        if not path:
            return "No adapter found in the folders; train one (Train tab) or start the UI with --run on a run."
        settings = run_settings(folders.readable(path, "adapter folder"))
        return f"base: `{settings.get('model', '?')}` ({settings.get('quantization', 'none')})"

    @guard
    def load_images(path, split_name):
        from vlmpref.data import load_preference_data
        from vlmpref.eval.pope import image_key
        from vlmpref.generate import question_text

        if not path:
            return [], []
        path = folders.readable(path, "dataset")
        data = load_preference_data(str(path), f"{split_name.strip() or 'test'}[:60]", num_proc=1,
                                    max_image_pixels=cfg.max_image_pixels)
        by_image: dict[str, dict] = {}
        for row in data.dataset:
            if not row["images"]:
                continue
            entry = by_image.setdefault(image_key(row["images"]), {"image": row["images"][0], "questions": [],
                                                                   "objects": row.get("objects")})
            entry["questions"].append(question_text(row["prompt"]))
        items = list(by_image.values())
        return [(e["image"], f"{len(e['questions'])} question(s)") for e in items], items

    def pick(items, evt: gr.SelectData):
        entry = items[evt.index]
        names = parse_objects(entry["objects"])
        first = entry["questions"][0] if entry["questions"] else ""
        return (entry["image"], entry["image"], ", ".join(names) if names else "",
                gr.update(choices=entry["questions"], value=first), first)

    @guard
    def uploaded(path):
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        image = decode_upload(path, cfg.max_image_pixels)
        return image, image, ""

    @guard
    def answer(path, image, text, truth, vocab_name, max_tokens, sample, temp, nucleus, seed_value):
        if not path:
            raise VlmprefError("No tuned model chosen; pick an adapter folder.")
        if image is None:
            raise VlmprefError("No image yet; pick one from the data or upload one.")
        if not (text or "").strip():
            raise VlmprefError("No question; type one.")
        adapter_dir = folders.readable(path, "adapter folder")
        yield "", "", "Loading the base and the tuned model..."
        started = time.time()
        pair = load_pair(adapter_dir, check=lambda base: folders.model_or_hub(base, "base model of that run"))
        names = parse_objects(truth)
        vocabulary = vocabulary_for(names, vocab_name)
        settings = dict(max_new_tokens=int(max_tokens), do_sample=bool(sample), temperature=float(temp),
                        top_p=float(nucleus))
        base_text = tuned_text = ""
        for base_text, tuned_text in stream_pair(pair, image, text.strip(), seed=int(seed_value or 0), **settings):
            yield (marked_answer(base_text, names, vocabulary), marked_answer(tuned_text, names, vocabulary),
                   "Answering...")
        how = ("greedy, at the same time" if not sample else
               f"sampling, temperature {temp:g}, top p {nucleus:g}, seed {int(seed_value or 0)}, one after the other")
        known = "" if names else " No ground truth for this image, so nothing is marked."
        yield (marked_answer(base_text, names, vocabulary), marked_answer(tuned_text, names, vocabulary),
               f"Done in {time.time() - started:.1f} s; both with {how}, at most {int(max_tokens)} new tokens."
               f"{known}")

    adapter.change(describe_run, adapter, base_info)
    source.change(load_images, [source, split], [gallery, pictures])
    split.submit(load_images, [source, split], [gallery, pictures])
    gallery.select(pick, pictures, [shown, picture, objects, asked, question])
    asked.input(lambda q: q, asked, question)
    upload.upload(uploaded, upload, [shown, picture, objects])
    inputs = [adapter, picture, question, objects, vocab, max_new_tokens, do_sample, temperature, top_p, seed]
    ask.click(answer, inputs, [base_out, tuned_out, status])
    question.submit(answer, inputs, [base_out, tuned_out, status])
    return [(describe_run, adapter, base_info), (load_images, [source, split], [gallery, pictures])], \
        {"adapter": adapter, "source": source}


# ---- Evaluation


def _evaluation_tab(folders: Folders, found):
    from vlmpref.ui.evals import OUTCOMES, examples_html, open_evaluation

    evals = choices(folders, found.evals)
    pairs = pair_choices(folders, found)
    gr.Markdown("Open an evaluation written by `vlmpref eval` (or the two of a `vlmpref compare` / `vlmpref demo`): "
                "the before/after table with 95% intervals, the plots, and every example with both answers.")
    with gr.Row():
        pair = gr.Dropdown(pairs, value=pairs[0][1] if pairs else None, label="Before → after, found together",
                           elem_id="eval-pair")
        before = gr.Dropdown(evals, value=pairs[0][1].split("|")[0] if pairs else None, label="Before (base)",
                             allow_custom_value=True, elem_id="eval-before")
        after = gr.Dropdown([("(none: one evaluation alone)", "")] + evals,
                            value=pairs[0][1].split("|")[1] if pairs else "", label="After (tuned)",
                            allow_custom_value=True, elem_id="eval-after")
        open_button = gr.Button("Open", variant="primary", elem_id="eval-open")
    notes = gr.Markdown(elem_id="eval-notes")
    table = gr.Dataframe(interactive=False, wrap=True, elem_id="eval-table")
    plots = gr.Gallery(label="Plots", columns=2, height=360, allow_preview=True,
                       object_fit="contain", buttons=["download", "fullscreen"], elem_id="eval-plots")
    gr.Markdown("### Examples\nGot better: the tuned answer is right where the base answer was wrong, or both are "
                "equally right and the tuned one names fewer objects that are not in the image; got worse: the "
                "reverse. Hallucinated: the answer names an object that is not in the image (marked).")
    with gr.Row():
        qtype = gr.Dropdown(["all"], value="all", label="Question type", elem_id="eval-type")
        outcome = gr.Radio(list(OUTCOMES), value="all", label="Show", elem_id="eval-outcome")
        page = gr.Number(1, precision=0, minimum=1, label="Page", elem_id="eval-page")
    examples = gr.HTML(elem_id="eval-examples")
    view = gr.State(None)

    def split_pair(value):
        if not value:
            return gr.skip(), gr.skip()
        b, a = value.split("|")
        return b, a

    @guard
    def open_folders(before_dir, after_dir):
        if not before_dir:
            raise VlmprefError("No evaluation chosen; pick the folder of the model before tuning.")
        b = folders.readable(before_dir, "evaluation folder")
        a = folders.readable(after_dir, "evaluation folder") if after_dir else None
        v = open_evaluation(b, a)
        run = v.training_run()
        try:
            run = folders.readable(run, "run folder") if run else None
        except VlmprefError:
            run = None  # outside the allowed folders: no training curves
        counts = v.counts()
        choices = [(f"{name} ({counts[name]})", name) for name in OUTCOMES] if a else [("all", "all")] + [
            (f"hallucinated ({counts['hallucinated before']})", "hallucinated before")]
        headers = v.headers()
        note_lines = [f"**{'before' if a else 'evaluation'}:** `{folders.show(b)}` ({_model_line(v.before)})"]
        if a:
            note_lines.append(f"**after:** `{folders.show(a)}` ({_model_line(v.after)})")
        note_lines += [f"⚠ {n}" for n in v.notes()]
        import pandas as pd

        return (v, "  \n".join(note_lines), pd.DataFrame(v.table(), columns=headers),
                [(image, caption) for image, caption in v.plots(run)],
                gr.update(choices=["all"] + v.question_types, value="all"), gr.update(choices=choices, value="all"),
                1, examples_html(v.examples, v.folders))

    def show(v, question_type, wanted, page_number):
        if v is None:
            return ""
        return examples_html(v.filter(question_type, wanted), v.folders, page=page_number or 1)

    def refilter(v, question_type, wanted):
        return 1, show(v, question_type, wanted, 1)

    pair.input(split_pair, pair, [before, after])
    outputs = [view, notes, table, plots, qtype, outcome, page, examples]
    open_button.click(open_folders, [before, after], outputs)
    qtype.input(refilter, [view, qtype, outcome], [page, examples])
    outcome.input(refilter, [view, qtype, outcome], [page, examples])
    page.submit(show, [view, qtype, outcome, page], examples)
    return {"pair": pair, "before": before, "after": after}


def _model_line(run) -> str:
    model = run.document.get("model") or {}
    data = run.document.get("dataset") or {}
    text = f"{model.get('base', '?')}" + (f" + {model['adapter']}" if model.get("adapter") else "")
    return f"{text}; {data.get('source', '?')} [{data.get('split', '?')}], {len(run.samples)} rows"


# ---- the app


def build_app(cfg: UIConfig, folders: Folders):
    """The Gradio Blocks of the three tabs (not yet listening)."""
    found = folders.search()
    with gr.Blocks(title="vlmpref", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        with gr.Row():
            gr.Markdown(f"## vlmpref: what tuning changed\nFolders: `{folders.describe()}`", elem_id="header")
            rescan = gr.Button("Rescan folders", size="sm", scale=0, elem_id="rescan")
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                on_load, compare_parts = _compare_tab(cfg, folders, found)
            with gr.Tab("Evaluation", id="evaluation"):
                eval_parts = _evaluation_tab(folders, found)
            with gr.Tab("Train", id="train"):
                train_parts = train_tab(cfg, folders, found)
        for fn, inputs, outputs in on_load:
            app.load(fn, inputs, outputs)

        def rescan_folders():
            now = folders.search()
            pairs = pair_choices(folders, now)
            evals = choices(folders, now.evals)
            return (gr.update(choices=choices(folders, now.adapters)),
                    gr.update(choices=choices(folders, [d for d in now.datasets if d.is_dir()])),
                    gr.update(choices=pairs), gr.update(choices=evals),
                    gr.update(choices=[("(none: one evaluation alone)", "")] + evals),
                    gr.update(choices=choices(folders, now.datasets)),
                    gr.update(choices=[("(none)", "")] + choices(folders, now.configs)),
                    gr.update(choices=choices(folders, now.runs)))

        rescan.click(rescan_folders, None, [compare_parts["adapter"], compare_parts["source"], eval_parts["pair"],
                                            eval_parts["before"], eval_parts["after"], train_parts["dataset"],
                                            train_parts["config"], train_parts["watch"]])
    return app


def launch(cfg: UIConfig, block: bool = True):
    """Check the address and login, build the app, and serve it; returns the app (once it listens)."""
    auth = login(cfg)
    from vlmpref.demo import demo_base_path

    if cfg.run == ["runs"] and not Path("runs").exists():
        Path("runs").mkdir()
        print("Created ./runs for the UI's outputs (give other folders with --run).")
    folders = Folders(cfg.run, read_only=[demo_base_path()])
    app = build_app(cfg, folders)
    app.queue(default_concurrency_limit=2)
    atexit.register(stop_jobs)
    _, url, _ = app.launch(
        server_name=cfg.host, server_port=cfg.port, auth=auth, share=False, inbrowser=cfg.open_browser,
        prevent_thread_lock=True, quiet=True, show_error=True, ssr_mode=False, mcp_server=False,
        enable_monitoring=False, pwa=False, run_history=False, footer_links=[], allowed_paths=[],
        max_file_size=cfg.max_upload_mb * 1024 * 1024, strict_cors=True, ssl_certfile=cfg.ssl_certfile,
        ssl_keyfile=cfg.ssl_keyfile, theme=gr.themes.Default(), css=CSS)
    print(f"vlmpref ui: {url} (folders: {folders.describe()}; "
          f"{'login required' if auth else 'no login'}; Ctrl-C to stop)", flush=True)
    if block:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("Stopping.", flush=True)
        finally:
            stop_jobs()
            app.close()
    return app
