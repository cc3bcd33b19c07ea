"""The Train tab of the web UI: the form, Estimate / Start / Stop / Resume, live curves, set-aside rows.

The work is in `vlmpref.ui.training` (checks, the train command, the process, reading its logs); this module
lays it out and keeps the runs this app started (`JOBS`), which `stop_jobs` stops cleanly when it exits.
"""

from __future__ import annotations

import time
from pathlib import Path

from vlmpref.errors import VlmprefError
from vlmpref.ui import UIConfig
from vlmpref.ui.folders import Folders
from vlmpref.ui.widgets import choices, gr, guard

JOBS: dict[str, object] = {}  # output folder -> TrainJob started by this app


def stop_jobs() -> None:
    """On exit, stop every run this app started, cleanly, so none is left training without a window."""
    running = [job for job in JOBS.values() if job.running]
    for job in running:
        print(f"Stopping the training run in {job.output_dir} (a checkpoint is written)...", flush=True)
        job.stop()
    for job in running:
        job.wait(timeout=600)


def train_tab(cfg: UIConfig, folders: Folders, found):
    from typing import get_args

    from vlmpref.config import PRESETS, LoraScope, Quantization
    from vlmpref.demo import demo_base_path
    from vlmpref.plan.gpus import GPUS
    from vlmpref.plan.options import Engine
    from vlmpref.train.config import LOSS_TYPES
    from vlmpref.ui.training import TrainJob, curves, estimate_text, plan_run, rejected_image, rejected_rows, \
        resume_argv

    demo = str(demo_base_path())
    models = [("vlmpref demo base (shipped, tiny)", demo)] + choices(folders, found.models)
    datasets = choices(folders, found.datasets)
    configs = [("(none)", "")] + choices(folders, found.configs)
    runs = choices(folders, found.runs)
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
            quantization = gr.Radio(["auto", *get_args(Quantization)], value="auto", label="quantization",
                                    elem_id="train-quantization")
            scope = gr.Radio(["auto", *get_args(LoraScope)], value="auto", label="adapters on", elem_id="train-scope")
            engine = gr.Radio(["auto", *get_args(Engine)], value="auto", label="engine", elem_id="train-engine")
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

    @guard
    def estimate(gpu_name, *values):
        train_cfg, _ = plan_run(folders, dict(zip(names, values)))
        return estimate_for(train_cfg, gpu_name)

    @guard
    def start_run(gpu_name, *values):
        train_cfg, argv = plan_run(folders, dict(zip(names, values)))
        key = str(folders.writable(train_cfg.output_dir))
        if key in JOBS and JOBS[key].running:
            raise VlmprefError(f"A run is already training in {folders.show(key)}.")
        text = estimate_for(train_cfg, gpu_name)
        JOBS[key] = TrainJob.start(argv, key)
        return text, gr.update(choices=choices(folders, sorted(set(folders.search().runs) | {Path(key)})),
                               value=key), None

    @guard
    def stop_run(run):
        job = JOBS.get(str(folders.readable(run, "run folder"))) if run else None
        if job is None or not job.running:
            raise VlmprefError("No run started from this page is training in that folder.")
        job.stop()
        return None

    @guard
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
