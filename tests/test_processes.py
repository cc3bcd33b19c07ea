"""Data parallel on the CPU: two processes (gloo) under torchrun and accelerate launch, both engines.

The two-process run must end at the one-process adapter (gradients averaged over processes = accumulation),
write one checkpoint folder per step, one summary, one log; a signal to one process stops both after the same
step with one checkpoint; kill -9 of the whole job resumes, on the same or another number of processes, to the
uninterrupted run's adapter.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # each launch starts two Python processes that load torch: ~25 s on 2 cores


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _command(processes: int, launcher: str = "torchrun") -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "vlmpref", "train"]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                "--master-port", _free_port(), "-m", "vlmpref", "train"]
    accelerate = str(Path(sys.executable).parent / "accelerate")
    return [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", _free_port(),
            "-m", "vlmpref", "train"]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


def _options(model, data, out, engine="fast", steps=2, **more) -> list[str]:
    options = {"model": model, "dataset": data, "split": "train[:24]", "engine": engine, "max-steps": steps,
               "per-device-train-batch-size": 1, "gradient-accumulation-steps": 4, "learning-rate": 1e-2,
               "report-to": "none", "dataset-num-proc": 1, "seed": 3, "output-dir": out, **more}
    if engine == "fast":
        # the same micro-batches on one and two processes: `auto` would pack each process's share (2 pairs) where
        # one process packs all 4, and bf16 rows of another length round differently (Adam at this learning rate
        # then moves near-zero gradients' weights by up to the learning rate)
        options.setdefault("pairs-per-forward", 2)
    else:
        # TRL's DDP divides bf16 gradients by the process count before summing them, which rounds otherwise than
        # accumulation in one process; in float32 the two agree to rounding
        options.setdefault("quantization", "none")
    flags = ["--no-bf16"] if engine == "trl" else []
    return [text for key, value in options.items() for text in (f"--{key}", str(value))] + flags


def _train(processes, *options, launcher="torchrun", check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(processes, launcher) + list(options), env=_env(), capture_output=True, text=True,
                          timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def _same_adapter(a: Path, b: Path) -> None:
    x, y = _adapter(a), _adapter(b)
    assert x.keys() == y.keys() and x
    moved = max(t.float().abs().max().item() for t in x.values())
    assert moved > 0  # trained: the lora_B matrices start at zero
    for name in x:
        # the same arithmetic in another order (gradients summed over processes, not micro-batches): float32 rounding
        torch.testing.assert_close(x[name].float(), y[name].float(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, shapes_dir, tmp_path_factory):
    """Uninterrupted one-process runs: 2 steps of each engine, and 6 steps of the fast engine."""
    root = tmp_path_factory.mktemp("one")
    runs = {}
    for name, engine, steps in (("fast", "fast", 2), ("trl", "trl", 2), ("fast6", "fast", 6)):
        _train(1, *_options(tiny_model_dir, shapes_dir, root / name, engine=engine, steps=steps))
        runs[name] = root / name
    return runs


@pytest.mark.parametrize("engine, launcher", [("fast", "torchrun"), ("trl", "accelerate")])
def test_two_processes_end_at_the_one_process_adapter(one_process, tiny_model_dir, shapes_dir, tmp_path, engine,
                                                      launcher):
    out = tmp_path / "two"
    held_out = {"eval-split": "test[:4]", "eval-steps": 1} if engine == "fast" else {}  # eval changes no weight
    done = _train(2, *_options(tiny_model_dir, shapes_dir, out, engine=engine,
                               **{"save-steps": 1, "save-total-limit": 2, **held_out}), launcher=launcher)
    _same_adapter(out, one_process[engine])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["engine"] == engine
    assert summary["pairs_trained"] == 8 and summary["pairs_per_step"] == 4  # the configured effective batch
    assert "Data parallel: 2 processes, each 1 pair(s) x 2 accumulation steps" in done.stdout
    assert done.stdout.count("Trained 2 steps (8 pairs)") == 1  # reported once, by the main process
    # written once: each checkpoint holds both processes' RNG states, nothing is left in staging
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / "checkpoint-2").iterdir()}
    assert not (out / ".checkpoint-staging").exists()
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    kinds = [(r["step"], "eval" if any(k.startswith("eval_") for k in r) else "end" if "train_runtime" in r else "train")
             for r in logs]
    assert len(kinds) == len(set(kinds))  # one line per log, not one per process
    if held_out:  # the held-out set scored once per evaluation, by the main process
        evals = [json.loads(line)["step"] for line in (out / "eval_log.jsonl").read_text().splitlines()]
        assert evals == [1, 2]


def test_accumulation_that_does_not_divide_is_refused_once(tiny_model_dir, shapes_dir, tmp_path):
    odd = {"gradient-accumulation-steps": 3, "pairs-per-forward": "auto"}
    done = _train(2, *_options(tiny_model_dir, shapes_dir, tmp_path / "odd", **odd), check=False)
    assert done.returncode != 0
    assert done.stderr.count("--gradient-accumulation-steps 3 cannot be shared by 2 processes") == 1
    # an option refused before the processes meet is said once too
    bad = {"gradient-accumulation-steps": 3, "pairs-per-forward": 2}
    done = _train(2, *_options(tiny_model_dir, shapes_dir, tmp_path / "bad", **bad), check=False)
    assert done.returncode != 0 and done.stderr.count("--pairs-per-forward must divide the effective batch 3") == 1
    # no traceback from vlmpref's code (torchrun prints its own report of the exit status)
    assert not [line for line in done.stderr.splitlines() if line.strip().startswith('File "') and "vlmpref" in line]


def _workers(launcher: subprocess.Popen) -> dict[str, psutil.Process]:
    """The launched training processes by rank."""
    found = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "vlmpref" in " ".join(child.cmdline()):
            found[rank] = child
    return found


def _wait_for(condition, timeout=300.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_signal_to_one_process_stops_both_after_the_same_step(one_process, tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / "signal"
    job = subprocess.Popen(_command(2) + _options(tiny_model_dir, shapes_dir, out, steps=6,
                                                  **{"save-steps": 100, "logging-steps": 1}),
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    _wait_for(lambda: log.is_file() and log.read_text().strip())  # the first step is done
    _workers(job)["1"].send_signal(signal.SIGINT)  # not the main process
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["interrupted"] and summary["steps"] < 6
    # both stopped after the same step: one checkpoint, holding both processes' states
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{summary['steps']}"]
    assert "rng_state_1.pth" in {p.name for p in (out / f"checkpoint-{summary['steps']}").iterdir()}
    # resumed on one process, it ends where the uninterrupted run ended, reusing the reference log-probs
    _train(1, "--resume", str(out))
    _same_adapter(out, one_process["fast6"])
    assert json.loads((out / "train_summary.json").read_text())["reference_logps"] == "reused"


def test_kill_9_of_the_whole_job_resumes_to_the_same_adapter(one_process, tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / "killed"
    job = subprocess.Popen(_command(2) + _options(tiny_model_dir, shapes_dir, out, steps=6, **{"save-steps": 1}),
                           env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (out / "checkpoint-2").is_dir() or job.poll() is not None)
    # the launcher and every process it started, at once (torchrun puts its workers in sessions of their own)
    everyone = [psutil.Process(job.pid)] + psutil.Process(job.pid).children(recursive=True)
    for process in everyone:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    job.wait()
    psutil.wait_procs(everyone[1:], timeout=30)
    assert not (out / "train_summary.json").exists(), "the job ended before it could be killed"
    _train(2, "--resume", str(out))
    _same_adapter(out, one_process["fast6"])
