"""The Gradio app behind `vlmpref ui`: the layout of the three tabs and what each button does.

    from vlmpref.ui import UIConfig
    from vlmpref.ui.app import launch
    app = launch(UIConfig(run=["runs/demo"], port=7860), block=False)   # returns once it listens
    app.close()

The work itself lives beside this file (compare.py, evals.py, training.py, folders.py) and in the pipeline's
stages; this module only wires it to components. Gradio is kept offline (see `offline_environment`).
"""

from __future__ import annotations

import atexit
import functools
import inspect
import time
from pathlib import Path

from vlmpref.errors import VlmprefError
from vlmpref.ui import UIConfig, login, offline_environment
from vlmpref.ui.folders import Folders

offline_environment()  # before Gradio is imported: its analytics read the environment at import and start
import gradio as gr  # noqa: E402

CSS = """
.answer{font-size:1.05rem;line-height:1.5;margin:.2rem 0}
mark.h{background:#ffd7d7;color:#b00020;font-weight:600;padding:0 .15rem;border-radius:3px}
.hallucinated{color:#b00020;font-weight:600}.tag{font-size:.85rem;color:#666;margin:.1rem 0}
.ok{color:#1a7f37}.no{color:#c62828}
table.examples{border-collapse:collapse;width:100%;font-size:.9rem}
table.examples td,table.examples th{border-bottom:1px solid #e5e5e5;padding:.35rem .5rem;vertical-align:top;
text-align:left}
table.examples img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;border:1px solid #ddd}
td.outcome{white-space:nowrap}.count{color:#555}
#train-estimate-out textarea{font-family:ui-monospace,Consolas,monospace;font-size:.8rem;line-height:1.25}
#compare-image img{width:100%;height:100%;object-fit:contain;image-rendering:pixelated}
"""


def _guard(fn):
    """Show a user's mistake (VlmprefError) as a message in the page instead of a failed request."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except VlmprefError as exc:
                raise gr.Error(str(exc)) from None
        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VlmprefError as exc:
            raise gr.Error(str(exc)) from None
    return wrapper


def _choices(folders: Folders, paths) -> list[tuple[str, str]]:
    return [(folders.show(p), str(p)) for p in paths]


def _pair_choices(folders: Folders, found) -> list[tuple[str, str]]:
    """Evaluations found side by side, as "before|after" values."""
    return [(f"{folders.show(b.parent)}: {b.name} → {a.name}", f"{b}|{a}") for b, a in folders.eval_pairs(found)]


# ---- Compare


def _compare_tab(cfg: UIConfig, folders: Folders, found):
    from vlmpref.ui.compare import (GENERATION_DEFAULTS, decode_upload, load_pair, marked_answer, parse_objects,
                                    run_settings, stream_pair, vocabulary_for)

    # finished runs first, their checkpoints after
    adapters = _choices(folders, sorted(found.adapters, key=lambda p: (p.name.startswith("checkpoint-"), str(p))))
    datasets = _choices(folders, [d for d in found.datasets if d.is_dir()])
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

    @_guard
    def describe_run(path):
        if not path:
            return "No adapter found in the folders; train one (Train tab) or start the UI with --run on a run."
        settings = run_settings(folders.readable(path, "adapter folder"))
        return f"base: `{settings.get('model', '?')}` ({settings.get('quantization', 'none')})"

    @_guard
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

    @_guard
    def uploaded(path):
        if not path:
            return gr.skip(), gr.skip(), gr.skip()
        image = decode_upload(path, cfg.max_image_pixels)
        return image, image, ""

    @_guard
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

    evals = _choices(folders, found.evals)
    pairs = _pair_choices(folders, found)
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

    @_guard
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


# ---- Train


JOBS: dict[str, object] = {}  # output folder -> TrainJob started by this app


def _stop_jobs() -> None:
    """On exit, stop every run this app started, cleanly, so none is left training without a window."""
    running = [job for job in JOBS.values() if job.running]
    for job in running:
        print(f"Stopping the training run in {job.output_dir} (a checkpoint is written)...", flush=True)
        job.stop()
    for job in running:
        job.wait(timeout=600)


def _train_tab(cfg: UIConfig, folders: Folders, found):
    from vlmpref.config import PRESETS
    from vlmpref.demo import demo_base_path
    from vlmpref.models.gpus import GPUS
    from vlmpref.train.config import LOSS_TYPES
    from vlmpref.ui.training import TrainJob, curves, estimate_text, plan_run, rejected_image, rejected_rows, \
        resume_argv

    demo = str(demo_base_path())
    models = [("vlmpref demo base (shipped, tiny)", demo)] + _choices(folders, found.models)
    datasets = _choices(folders, found.datasets)
    configs = [("(none)", "")] + _choices(folders, found.configs)
    runs = _choices(folders, found.runs)
    default_out = folders.roots[0] / time.strftime("dpo-%Y%m%d-%H%M")
    gr.Markdown("Choose a model, data and a preset or config, see what `vlmpref estimate` says, then start "
                "`vlmpref train` as its own process. Empty options come from the config file, the preset, or "
                "train's defaults. Stop writes a checkpoint; Resume continues from it.")
    with gr.Row():
        model = gr.Dropdown(models, value=demo, label="Model", allow_custom_value=True, elem_id="train-model")
        dataset = gr.Dropdown(datasets, value=datasets[0][1] if datasets else None, label="Data",
                              allow_custom_value=True, elem_id="train-dataset")
        split = gr.Textbox("train", label="Split", elem_id="train-split")
        eval_split = gr.Textbox("", label="Held-out split (optional)", placeholder="test[:10%]",
                                elem_id="train-eval-split")
    with gr.Row():
        preset = gr.Dropdown([("(none)", "")] + [(p, p) for p in PRESETS], value="", label="Memory preset",
                             elem_id="train-preset")
        config = gr.Dropdown(configs, value="", label="Config file", allow_custom_value=True, elem_id="train-config")
        output = gr.Textbox(str(default_out), label="Output folder", elem_id="train-output")
        overwrite = gr.Checkbox(False, label="overwrite a used folder", elem_id="train-overwrite")
    with gr.Accordion("Options (empty: from the config, the preset, or train's defaults)", open=False):
        with gr.Row():
            max_steps = gr.Number(None, precision=0, label="max steps", elem_id="train-max-steps")
            epochs = gr.Number(None, label="epochs", elem_id="train-epochs")
            learning_rate = gr.Number(None, label="learning rate", elem_id="train-lr")
            batch = gr.Number(None, precision=0, label="batch per device", elem_id="train-batch")
            accumulation = gr.Number(None, precision=0, label="gradient accumulation", elem_id="train-accumulation")
        with gr.Row():
            quantization = gr.Radio(["auto", "none", "8bit", "4bit"], value="auto", label="quantization",
                                    elem_id="train-quantization")
            scope = gr.Radio(["auto", "all", "language"], value="auto", label="adapters on", elem_id="train-scope")
            engine = gr.Radio(["auto", "fast", "trl"], value="auto", label="engine", elem_id="train-engine")
            loss = gr.Dropdown(list(LOSS_TYPES), value=[], multiselect=True, label="loss type(s)",
                               elem_id="train-loss")
        with gr.Row():
            logging_steps = gr.Number(None, precision=0, label="log every N steps", elem_id="train-logging-steps")
            save_steps = gr.Number(None, precision=0, label="checkpoint every N steps", elem_id="train-save-steps")
            eval_steps = gr.Number(None, precision=0, label="evaluate every N steps", elem_id="train-eval-steps")
    with gr.Row():
        cards = [(f"{key}: {card.name}, {card.memory_gib:g} GB", key) for key, card in GPUS.items()]
        gpu = gr.Dropdown([("this machine", "")] + cards, value="", label="GPU for the estimate", elem_id="train-gpu")
        estimate_button = gr.Button("Estimate", elem_id="train-estimate")
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop (save a checkpoint)", variant="stop", elem_id="train-stop")
        resume = gr.Button("Resume", elem_id="train-resume")
    estimate_out = gr.Textbox(label="vlmpref estimate", lines=10, max_lines=30, interactive=False,
                              elem_id="train-estimate-out")
    watch = gr.Dropdown(runs, value=None, label="Run to watch", allow_custom_value=True, elem_id="train-watch")
    status = gr.Markdown(elem_id="train-status")
    with gr.Row():
        # empty at first: a plot created with an empty table draws no line when points arrive (Gradio 6.31)
        plots = [gr.LinePlot(None, x="step", y="value", color="series", title=title, height=260,
                             buttons=["fullscreen", "export"], elem_id=f"train-plot-{i}")
                 for i, title in enumerate(("loss", "reward margin (chosen - rejected)", "reward accuracy"))]
    log = gr.Textbox(label="Output of vlmpref train", lines=10, max_lines=10, autoscroll=True, interactive=False,
                     elem_id="train-log")
    gr.Markdown("### Rows the data check set aside")
    rejected_note = gr.Markdown(elem_id="train-rejected-note")
    rejected_table = gr.Dataframe(interactive=False, wrap=True, elem_id="train-rejected")
    rejected_gallery = gr.Gallery(label="Their images", columns=8, height=200, buttons=["fullscreen"],
                                  elem_id="train-rejected-images")
    seen = gr.State(None)  # what the page shows, to skip redrawing when nothing changed
    timer = gr.Timer(1.5)

    form_inputs = [model, dataset, split, eval_split, preset, config, output, overwrite, max_steps, epochs,
                   learning_rate, batch, accumulation, quantization, scope, engine, loss, logging_steps, save_steps,
                   eval_steps]
    names = ["model", "dataset", "split", "eval_split", "preset", "config", "output_dir", "overwrite", "max_steps",
             "num_train_epochs", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
             "quantization", "lora_scope", "engine", "loss_type", "logging_steps", "save_steps", "eval_steps"]

    def estimate_for(train_cfg, gpu_name) -> str:
        try:
            text, fits = estimate_text(train_cfg, gpu_name or None)
        except (VlmprefError, OSError, ValueError) as exc:  # advice only: a model whose config cannot be read
            return f"The estimate is not available: {exc}"
        verdict = {True: "FITS the GPU. ", False: "DOES NOT FIT the GPU. ", None: ""}[fits]
        return verdict + text

    @_guard
    def estimate(gpu_name, *values):
        train_cfg, _ = plan_run(folders, dict(zip(names, values)))
        return estimate_for(train_cfg, gpu_name)

    @_guard
    def start_run(gpu_name, *values):
        train_cfg, argv = plan_run(folders, dict(zip(names, values)))
        key = str(folders.writable(train_cfg.output_dir))
        if key in JOBS and JOBS[key].running:
            raise VlmprefError(f"A run is already training in {folders.show(key)}.")
        text = estimate_for(train_cfg, gpu_name)
        JOBS[key] = TrainJob.start(argv, key)
        return text, gr.update(choices=_choices(folders, sorted(set(folders.search().runs) | {Path(key)})),
                               value=key), None

    @_guard
    def stop_run(run):
        job = JOBS.get(str(folders.readable(run, "run folder"))) if run else None
        if job is None or not job.running:
            raise VlmprefError("No run started from this page is training in that folder.")
        job.stop()
        return None

    @_guard
    def resume_run(run):
        if not run:
            raise VlmprefError("No run chosen; pick the run to continue under 'Run to watch'.")
        argv = resume_argv(folders, run)
        key = str(folders.readable(run, "run folder"))
        if key in JOBS and JOBS[key].running:
            raise VlmprefError(f"The run in {folders.show(key)} is training already.")
        JOBS[key] = TrainJob.start(argv, key)
        return None

    def refresh(run, last):
        """What changed in the watched run since the page last drew it (unchanged parts are skipped)."""
        keep = [gr.skip()] * 8
        if not run:
            return keep + [last]
        try:
            path = folders.readable(run, "run folder")
        except VlmprefError as exc:
            return [str(exc)] + keep[1:] + [last]
        last = last if last and last.get("run") == str(path) else {}
        job = JOBS.get(str(path))
        points = curves(path)
        rejected_files = [path / n for n in ("rejected_rows.jsonl", "rejected_rows_eval.jsonl")]
        now = {"run": str(path), "state": job.state() if job else _run_state(path),
               "curves": tuple(len(p) for p in points.values()), "log": job.tail() if job else "",
               "rejected": tuple(f.stat().st_mtime if f.is_file() else 0 for f in rejected_files)}
        if now == last:
            return keep + [last]
        last_step = max((p["step"] for pts in points.values() for p in pts), default=None)
        line = f"**{folders.show(path)}**: {now['state']}" + (f", step {last_step}" if last_step is not None else "")
        if job and not job.running and job.outcome():
            line += f"  \n{job.outcome()}"
        out = [line]
        out += [_points(pts) for pts in points.values()] if now["curves"] != last.get("curves") else keep[:3]
        out.append(now["log"] if now["log"] != last.get("log") else gr.skip())
        if now["rejected"] != last.get("rejected"):
            rows = rejected_rows(path)
            note = (f"{len(rows)} row(s) set aside (in rejected_rows.jsonl), each with its reason; their images "
                    "below where they can be decoded." if rows else "None set aside (yet).")
            out += [note, _rejected_frame(rows), rejected_pictures(rows)]
        else:
            out += keep[:3]
        return out + [now]

    def rejected_pictures(rows: list[dict]) -> list:
        pictures = []
        for row in rows[:24]:
            image, _ = rejected_image(folders, row, cfg.max_image_pixels)
            if image is not None:
                pictures.append((image, f"row {row['row_id']}: {row['reason']}"))
        return pictures

    estimate_button.click(estimate, [gpu, *form_inputs], estimate_out)
    start.click(start_run, [gpu, *form_inputs], [estimate_out, watch, seen])
    stop.click(stop_run, watch, seen)
    resume.click(resume_run, watch, seen)
    outputs = [status, *plots, log, rejected_note, rejected_table, rejected_gallery, seen]
    timer.tick(refresh, [watch, seen], outputs)
    watch.change(refresh, [watch, gr.State(None)], outputs)
    return {"model": model, "dataset": dataset, "config": config, "watch": watch}


def _points(points: list[dict]):
    """Curve points as the plot takes them (None while there are none)."""
    import pandas as pd

    if not points:
        return None
    return pd.DataFrame({"step": pd.Series([p["step"] for p in points], dtype="int64"),
                         "value": pd.Series([p["value"] for p in points], dtype="float64"),
                         "series": pd.Series([p["series"] for p in points], dtype="object")})


def _run_state(path: Path) -> str:
    import json

    summary = path / "train_summary.json"
    if summary.is_file():
        document = json.loads(summary.read_text())
        if document.get("interrupted"):
            return f"stopped by {document['interrupted']} after step {document.get('steps')} (resumable)"
        return f"finished ({document.get('steps')} steps)"
    return "no summary yet (training elsewhere, or stopped without one)"


def _rejected_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame([[r.get("split", ""), r.get("row_id", ""), r.get("reason", "")] for r in rows],
                        columns=["split", "row", "reason"])


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
                train_parts = _train_tab(cfg, folders, found)
        for fn, inputs, outputs in on_load:
            app.load(fn, inputs, outputs)

        def rescan_folders():
            now = folders.search()
            pairs = _pair_choices(folders, now)
            evals = _choices(folders, now.evals)
            return (gr.update(choices=_choices(folders, now.adapters)),
                    gr.update(choices=_choices(folders, [d for d in now.datasets if d.is_dir()])),
                    gr.update(choices=pairs), gr.update(choices=evals),
                    gr.update(choices=[("(none: one evaluation alone)", "")] + evals),
                    gr.update(choices=_choices(folders, now.datasets)),
                    gr.update(choices=[("(none)", "")] + _choices(folders, now.configs)),
                    gr.update(choices=_choices(folders, now.runs)))

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
    atexit.register(_stop_jobs)
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
            _stop_jobs()
            app.close()
    return app
