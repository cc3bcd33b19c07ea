"""The Train tab's work: check a run's options, estimate it, run `vlmpref train` as a process, and watch it.

    cfg, argv = plan_run(folders, {"model": "...", "dataset": "...", "max_steps": 100, ...})
    text, fits = estimate_text(cfg, gpu="rtx-4070")        # what `vlmpref estimate` says
    job = TrainJob.start(argv, cfg.output_dir)             # python -m vlmpref train ... (its own process)
    curves(cfg.output_dir)                                 # loss, reward margin, reward accuracy so far
    job.stop()                                             # SIGINT: the step finishes, a checkpoint is written

Form values left empty are not passed, so they come from the config file, the preset, or train's defaults.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from vlmpref import config as config_io
from vlmpref.errors import VlmprefError
from vlmpref.train.config import CONFIG_NAME, TrainConfig
from vlmpref.ui.folders import Folders

# form fields that are paths or ids, checked against the allowed folders
PATH_FIELDS = ("model", "dataset", "eval_dataset", "output_dir")


def train_flags(form: dict) -> dict:
    """The options the user filled in, by TrainConfig name (empty, "auto" and unticked boxes are left out)."""
    flags = {}
    for name, value in form.items():
        if value is None or value == "" or value == [] or value == "auto" or value is False:
            continue
        if isinstance(value, str):
            value = value.strip()
        if isinstance(value, float) and value.is_integer() and name not in ("learning_rate", "num_train_epochs",
                                                                              "beta", "warmup_steps"):
            value = int(value)
        flags[name] = value
    return flags


def plan_run(folders: Folders, form: dict) -> tuple[TrainConfig, list[str]]:
    """The resolved TrainConfig (every check train makes on its options) and the command that runs it."""
    flags = train_flags(form)
    config = flags.pop("config", None)
    if config:
        config = str(folders.readable(config, "config file"))
    if flags.get("preset", "").endswith((".yaml", ".yml")):
        flags["preset"] = str(folders.readable(flags["preset"], "preset file"))
    for name, what in (("model", "model"), ("dataset", "dataset"), ("eval_dataset", "held-out dataset")):
        if flags.get(name):
            flags[name] = folders.model_or_hub(flags[name], what)
    if flags.get("output_dir"):
        flags["output_dir"] = str(folders.writable(flags["output_dir"]))
    cfg = config_io.resolve(TrainConfig, flags=flags, yaml_path=config)
    # values that came from the config file are checked too
    for name, what in (("model", "model"), ("dataset", "dataset"), ("eval_dataset", "held-out dataset")):
        if getattr(cfg, name):
            folders.model_or_hub(getattr(cfg, name), what)
    if cfg.preset and cfg.preset.endswith((".yaml", ".yml")):
        folders.readable(cfg.preset, "preset file")
    out = folders.writable(cfg.output_dir)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        resumable = (out / CONFIG_NAME).is_file()
        raise VlmprefError(f"Output folder {folders.show(out)} is not empty; choose another name, tick overwrite"
                           f"{', or resume that run' if resumable else ''}.")
    argv = [sys.executable, "-m", "vlmpref", "train"]
    if config:
        argv += ["--config", config]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return cfg, argv


def resume_argv(folders: Folders, run_dir: str | Path) -> list[str]:
    """`vlmpref train --resume RUN`, after checking that the run can be continued."""
    run = folders.readable(run_dir, "run folder")
    if not (run / CONFIG_NAME).is_file():
        raise VlmprefError(f"{folders.show(run)} holds no {CONFIG_NAME}: no run was started there.")
    summary = run / "train_summary.json"
    if summary.is_file() and not json.loads(summary.read_text()).get("interrupted"):
        raise VlmprefError(f"The run in {folders.show(run)} already finished; its adapter is there.")
    return [sys.executable, "-m", "vlmpref", "train", "--resume", str(run)]


# ---- the estimate


def data_shape(dataset: str, split: str) -> tuple[int, str] | None:
    """(rows, WIDTHxHEIGHT of the first image) of a local dataset split, read cheaply; None when unknown."""
    from vlmpref.data.images import load_rgb
    from vlmpref.data.normalize import _undecoded, find_columns
    from vlmpref.data.sources import base_folder, load_raw

    if base_folder(dataset) is None:
        return None  # a Hub id: nothing is downloaded to estimate
    try:
        raw = load_raw(dataset, split)
        column = find_columns(raw.column_names, dataset)[0]
        size = "640x480"
        if column and len(raw):
            value = _undecoded(raw, column)[0][column]
            value = value[0] if isinstance(value, list) and value else value
            width, height = load_rgb(value, base_folder(dataset)).size
            size = f"{width}x{height}"
        return len(raw), size
    except Exception:  # noqa: BLE001 - the estimate then uses its defaults; train reports the real problem
        return None


def estimate_text(cfg: TrainConfig, gpu: str | None = None) -> tuple[str, bool | None]:
    """What `vlmpref estimate` prints for this run's settings and data, and whether it fits (None: no one GPU)."""
    from rich.console import Console

    from vlmpref.plan.run import EstimateConfig, run_estimate

    shared = {name: getattr(cfg, name) for name in EstimateConfig.__dataclass_fields__
              if hasattr(cfg, name) and name not in ("config", "preset", "trust_remote_code")}
    shape = data_shape(cfg.dataset, cfg.split)
    if shape:
        shared.update(pairs=max(shape[0], 1), image_size=shape[1])
    est_cfg = EstimateConfig(**shared, gpu=gpu or None, trust_remote_code=cfg.trust_remote_code)
    console = Console(record=True, width=110, file=io.StringIO())
    report = run_estimate(est_cfg, console=console)
    text = console.export_text()
    if cfg.max_steps and cfg.max_steps > 0:
        pairs = cfg.max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
        seconds = pairs * report["seconds_per_pair"]
        text += (f"This run: --max-steps {cfg.max_steps} x {cfg.per_device_train_batch_size} x "
                 f"{cfg.gradient_accumulation_steps} = {pairs:,} pairs, about {_duration(seconds)} on that GPU.\n")
    fits = report["gpus"][0]["fits"] if len(report.get("gpus", [])) == 1 else None
    return text, fits


def _duration(seconds: float) -> str:
    from vlmpref.train.reporting import duration

    return duration(seconds)


# ---- the training process


class TrainJob:
    """`vlmpref train` running in its own process; its output is kept (last lines) for the page."""

    def __init__(self, argv: list[str], output_dir: str | Path, process: subprocess.Popen):
        self.argv, self.output_dir, self.process = argv, Path(output_dir), process
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self.progress = ""  # the progress bar line being redrawn
        self.started = time.time()
        self.stop_sent = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, argv: list[str], output_dir: str | Path) -> "TrainJob":
        import vlmpref

        # the child imports the same vlmpref as this app, wherever it is installed or checked out
        package_root = str(Path(vlmpref.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        # A session of its own: a Ctrl-C in the UI's terminal reaches the UI, which stops the run once, cleanly
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
        return cls(argv, output_dir, process)

    def _read(self) -> None:
        buffer = ""
        while True:
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk.decode("utf-8", errors="replace")
            # progress bars redraw with \r: keep the last drawing, not every one
            parts = re.split(r"(\r\n|\n|\r)", buffer)
            buffer = parts.pop()
            for text, end in zip(parts[::2], parts[1::2]):
                if end == "\r":
                    self.progress = text
                else:
                    self.lines.append(text)
                    self.progress = ""
        if buffer:
            self.lines.append(buffer)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> bool:
        """Ask the run to stop cleanly (SIGINT: the step finishes and a checkpoint is written); True if sent."""
        if not self.running or self.stop_sent:
            return False
        self.process.send_signal(signal.SIGINT)
        self.stop_sent = True
        return True

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=5)
        return code

    def state(self) -> str:
        code = self.process.poll()
        if code is None:
            return "stopping (finishing the step, saving a checkpoint)" if self.stop_sent else "running"
        if code == 0:
            return "stopped cleanly" if self.stop_sent else "finished"
        return f"failed (exit status {code})"

    def tail(self, n: int = 30) -> str:
        lines = list(self.lines)[-n:]
        return "\n".join(lines + ([self.progress] if self.progress else []))

    def outcome(self) -> str:
        """The run's own closing line (summary, clean stop, or error), once it has ended."""
        for line in reversed(self.lines):
            if line.startswith(("Trained ", "Stopped by ", "error:", "Stopped at once")):
                return line
        return ""


# ---- what the run wrote


def curves(output_dir: str | Path) -> dict[str, list[dict]]:
    """Points of the loss, reward margin and reward accuracy curves so far: {title: [{step, value, series}]}."""
    from vlmpref.report.plots import CURVES
    from vlmpref.train.train_log import read_train_log

    history = read_train_log(output_dir)
    out = {}
    for title, key, eval_key in CURVES:
        points = [{"step": h["step"], "value": float(h[k]), "series": series}
                  for k, series in ((key, "train"), (eval_key, "held-out")) for h in history
                  if isinstance(h.get(k), (int, float)) and "step" in h]
        out[title] = points
    return out


def rejected_rows(run_dir: str | Path) -> list[dict]:
    """The rows the data check set aside, with their reasons (training and held-out splits)."""
    rows = []
    for name in ("rejected_rows.jsonl", "rejected_rows_eval.jsonl"):
        path = Path(run_dir) / name
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def rejected_image(folders: Folders, row: dict, max_pixels: int):
    """The image of a set-aside row, decoded with the datasets' limits, or the reason it cannot be shown."""
    from vlmpref.data.images import ImageProblem, load_rgb
    from vlmpref.data.normalize import _undecoded, find_columns
    from vlmpref.data.sources import base_folder

    source = str(row.get("source", ""))
    try:
        if base_folder(source) is None:
            return None, "not a local dataset"
        folders.readable(source, "dataset")
        raw = _raw_split(source, str(row.get("split", "train")))
        column = find_columns(raw.column_names, source)[0]
        if column is None:
            return None, "the dataset has no image column"
        value = _undecoded(raw, column)[int(row["row_id"])][column]
        value = value[0] if isinstance(value, list) and value else value
        if value is None or value == []:
            return None, "the row has no image"
        image = load_rgb(value, base_folder(source), allow_outside=False, max_pixels=max_pixels)
        image.thumbnail((256, 256))
        return image, ""
    except ImageProblem as exc:
        return None, str(exc)
    except (VlmprefError, IndexError, KeyError, ValueError) as exc:
        return None, str(exc)


_raw_cache: dict[tuple[str, str, float], object] = {}


def _raw_split(source: str, split: str):
    from vlmpref.data.sources import load_raw

    path = Path(source)
    key = (source, split, path.stat().st_mtime if path.exists() else 0.0)
    if key not in _raw_cache:
        _raw_cache.clear()
        _raw_cache[key] = load_raw(source, split)
    return _raw_cache[key]
