"""Interruptions: kill -9 at random moments and `--resume` ends where an uninterrupted run ends; SIGINT and
SIGTERM stop cleanly with a checkpoint; half-written checkpoints are never picked up; NaN stops the run."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmpref import config as config_io
from vlmpref.cli import main
from vlmpref.errors import VlmprefError
from vlmpref.train import TrainConfig, train
from vlmpref.train.checkpoints import STAGING, last_checkpoint, remove_partial_checkpoints

from helpers import cut_and_resume

KILLS = 3


def _args(model_dir, data_dir, out, steps=6):
    # lora dropout stays on (0.1): the RNG state must come back too for the same result
    return ["train", "--model", str(model_dir), "--dataset", str(data_dir), "--split", "train[:12]",
            "--output-dir", str(out), "--max-steps", str(steps), "--per-device-train-batch-size", "2",
            "--gradient-accumulation-steps", "2", "--learning-rate", "5e-3", "--logging-steps", "1",
            "--save-steps", "1", "--report-to", "none", "--dataset-num-proc", "1", "--seed", "0",
            "--no-gradient-checkpointing", "--quantization", "none"]


def _start(argv, log):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-m", "vlmpref.cli", *argv], stdout=log, stderr=subprocess.STDOUT,
                            env=env)


def _wait_for(predicate, process, timeout=120):
    end = time.time() + timeout
    while not predicate():
        if process.poll() is not None or time.time() > end:
            return False
        time.sleep(0.05)
    return True


def _steps(summary):
    keys = ("loss", "learning_rate", "grad_norm", "rewards/margins", "logps/chosen")
    return {h["step"]: tuple(h[k] for k in keys) for h in summary["log_history"] if "loss" in h}


@pytest.mark.slow  # several runs killed and resumed, ~25 s on 2 cores
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tiny_model_dir, shapes_dir, tmp_path):
    seed = int(os.environ.get("VLMPREF_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    # ---- the uninterrupted run (same command, in this process)
    started = time.time()
    assert main(_args(tiny_model_dir, shapes_dir, tmp_path / "whole")) == 0
    span = time.time() - started
    whole = tmp_path / "whole"
    # ---- the same run, killed with SIGKILL at random moments and resumed each time
    out = tmp_path / "killed"
    kill_at, log_path = [], tmp_path / "log.txt"
    reference_before_last = False
    with log_path.open("w") as log:
        argv = _args(tiny_model_dir, shapes_dir, out)
        for attempt in range(KILLS + 1):
            reference_before_last = (out / "reference_logps.json").is_file()
            process = _start(argv, log)
            if attempt < KILLS:
                # the clock starts once the run has begun (config saved, or "Resuming" printed): then any moment
                ready = (lambda: (out / "vlmpref_config.yaml").is_file()) if attempt == 0 else (
                    lambda: log_path.read_text().count("Resuming") >= attempt)
                assert _wait_for(ready, process), log_path.read_text()[-2000:]
                delay = rng.uniform(0, 0.8 * span)
                time.sleep(delay)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    kill_at.append(round(delay, 2))
            code = process.wait(timeout=300)
            assert code in (0, -signal.SIGKILL), log_path.read_text()[-3000:]
            if code == 0 or (out / "train_summary.json").is_file():  # finished, perhaps just before the kill
                break
            argv = ["train", "--resume", str(out)]
    context = f"seed {seed}, kills after {kill_at} s (of ~{span:.0f} s)"
    assert kill_at, context
    summary = json.loads((out / "train_summary.json").read_text())
    expected = json.loads((whole / "train_summary.json").read_text())
    assert not summary["interrupted"] and summary["steps"] == 6, context
    # adapter: the same numbers
    ours, theirs = load_file(out / "adapter_model.safetensors"), load_file(whole / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], rtol=0, atol=1e-6), f"{name}; {context}"
    # every step saw the same pairs (loss, margins, log-probs), learning rate and gradient norm
    assert _steps(summary) == _steps(expected), context
    # optimizer and scheduler state at the end: restored, not restarted
    for name in ("optimizer.pt", "scheduler.pt"):
        a = torch.load(out / "checkpoint-6" / name, weights_only=True)
        b = torch.load(whole / "checkpoint-6" / name, weights_only=True)
        assert _same(a, b), f"{name}; {context}"
    # reference log-probs: computed once, stored, reused by the resumed process
    ref = json.loads((out / "reference_logps.json").read_text())
    assert ref == json.loads((whole / "reference_logps.json").read_text())
    if summary["resumed_from"] is not None or kill_at:
        assert summary["reference_logps"] == ("reused" if reference_before_last else "computed"), context
    assert not (out / STAGING).exists()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.allclose(a.float(), b.float(), rtol=0, atol=1e-6)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _signal_at_step(monkeypatch, signum, step):
    """Deliver `signum` to this process at the end of optimizer step `step`, as Ctrl-C or `kill` would."""
    from vlmpref.train.guards import StopOnSignal

    original = StopOnSignal.on_step_end

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == step:
            os.kill(os.getpid(), signum)
        return original(self, args, state, control, **kw)

    monkeypatch.setattr(StopOnSignal, "on_step_end", on_step_end)


@pytest.fixture
def own_handlers():
    """SIGINT and SIGTERM set to handlers of the test's own, whatever the suite inherited (a shell running it in
    the background ignores SIGINT), so a test can check the run puts back what it found; restored afterwards."""
    mine = {s: (lambda signum, frame: None) for s in (signal.SIGINT, signal.SIGTERM)}
    inherited = {s: signal.signal(s, handler) for s, handler in mine.items()}
    yield mine
    for s, handler in inherited.items():
        signal.signal(s, handler)


# SIGINT (then resumed) by default; SIGTERM, the same path for another signal, in the slow set
@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_finishes_the_step_saves_a_checkpoint_and_exits_0(tiny_model_dir, shapes_dir, tmp_path, capsys,
                                                                 monkeypatch, own_handlers, signum):
    out = tmp_path / "run"
    argv = _args(tiny_model_dir, shapes_dir, out, steps=4)
    argv[argv.index("--save-steps") + 1] = "100"  # the only checkpoint is the one the signal asks for
    _signal_at_step(monkeypatch, signum, 2)
    assert main(argv) == 0
    printed = capsys.readouterr()
    name = signal.Signals(signum).name
    assert f"Stopped by {name} after step 2 of 4; {out / 'checkpoint-2'} saved. Continue with: vlmpref train " \
           f"--resume {out}" in printed.out
    assert f"{name} received: finishing this step and saving a checkpoint" in printed.err
    assert last_checkpoint(out) == out / "checkpoint-2"
    assert not (out / "adapter_model.safetensors").exists()  # the run is not finished
    assert all(signal.getsignal(s) is handler for s, handler in own_handlers.items())  # handlers put back
    if signum == signal.SIGINT:
        monkeypatch.undo()
        assert main(["train", "--resume", str(out), "--logging-steps", "2"]) == 0
        summary = json.loads((out / "train_summary.json").read_text())
        assert (summary["steps"], summary["resumed_from"], summary["reference_logps"]) == (4, "checkpoint-2", "reused")
        assert (out / "adapter_model.safetensors").is_file()
        assert config_io.read_yaml(out / "vlmpref_config.yaml")["logging_steps"] == 2  # a safe option changed


def test_a_checkpoint_killed_half_way_is_never_picked_up(tiny_model_dir, shapes_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    out = tmp_path / "run"
    original = Trainer._save_rng_state

    def dies_at_step_2(self, output_dir):
        if self.state.global_step == 2:
            raise RuntimeError("killed while writing the checkpoint")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", dies_at_step_2)
    with pytest.raises(RuntimeError, match="killed while writing"):
        train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:4]", output_dir=str(out),
                          max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=1,
                          save_total_limit=None, report_to=["none"], dataset_num_proc=1, quantization="none",
                          gradient_checkpointing=False))
    assert not (out / "checkpoint-2").exists()
    assert (out / STAGING / "checkpoint-2").is_dir()  # the half-written one, out of the way
    assert last_checkpoint(out) == out / "checkpoint-1"
    remove_partial_checkpoints(out)
    assert not (out / STAGING).exists() and (out / "checkpoint-1" / "optimizer.pt").is_file()


def test_last_checkpoint_skips_incomplete_folders(tmp_path):
    for step, complete in ((3, True), (5, True), (7, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-5"
    # a checkpoint being replaced when the run died is put back
    (tmp_path / "checkpoint-5").rename(tmp_path / ".checkpoint-5-replaced")
    remove_partial_checkpoints(tmp_path)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-5"


def _saved_run(tmp_path, **kw) -> Path:
    out = tmp_path / "saved"
    out.mkdir()
    config_io.save(TrainConfig(model="runs/tiny", dataset="runs/shapes", output_dir=str(out), learning_rate=1e-4, **kw),
                   out / "vlmpref_config.yaml")
    return out


def test_resume_reads_the_saved_options_and_refuses_unsafe_changes(tmp_path):
    out = _saved_run(tmp_path)
    cfg = config_io.resolve(TrainConfig, flags={"resume": str(out), "save_steps": 5})
    assert (cfg.model, cfg.learning_rate, cfg.save_steps, cfg.output_dir) == ("runs/tiny", 1e-4, 5, str(out))
    from vlmpref.train.resume import check_resumable

    assert check_resumable(cfg) is None  # no checkpoint yet: starts at step 0
    changed = config_io.resolve(TrainConfig, flags={"resume": str(out), "learning_rate": 1e-3})
    with pytest.raises(VlmprefError, match=r"--learning-rate cannot change when resuming \(the run in .* used "
                                           r"0.0001, not 0.001\)"):
        check_resumable(changed)


def test_resume_refusals_are_one_line(tmp_path, capsys):
    out = _saved_run(tmp_path)
    (tmp_path / "x.yaml").write_text("beta: 0.2\n")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--resume", str(tmp_path / "nowhere")], "no such folder"),
        (["--resume", str(tmp_path / "empty")], "holds no vlmpref_config.yaml, so no run was started there"),
        (["--resume", str(out), "--config", str(tmp_path / "x.yaml")], "leave out --config"),
        (["--resume", str(out), "--overwrite"], "give only one of them"),
    ]
    for argv, message in cases:
        assert main(["train", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    (out / "train_summary.json").write_text(json.dumps({"interrupted": None}))
    assert main(["train", "--resume", str(out)]) == 2
    assert "already finished" in capsys.readouterr().err


def test_busy_output_folder_points_to_resume_and_overwrite_clears_the_old_run(tmp_path, tiny_model_dir, shapes_dir):
    from vlmpref.train.run import prepare_run_dir as prepare_output_dir

    out = _saved_run(tmp_path)
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (out / "train_summary.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(VlmprefError, match=r"not empty; choose another --output-dir or pass --overwrite, or continue "
                                           r"that run with `vlmpref train --resume"):
        prepare_output_dir(out, overwrite=False)
    prepare_output_dir(out, overwrite=True)
    assert last_checkpoint(out) is None and not (out / "train_summary.json").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only the old run's own files go


def test_nan_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(tiny_model_dir, shapes_dir, tmp_path,
                                                                      monkeypatch):
    import vlmpref.train.fast.trainer as fast

    calls = []
    original = fast.combined_loss

    def goes_nan(*args, **kwargs):
        calls.append(1)
        loss = original(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(fast, "combined_loss", goes_nan)
    out = tmp_path / "run"
    with pytest.raises(VlmprefError, match=r"Training stopped: the loss is nan at step 3 \(NaN or inf\); the last good "
                                           r"checkpoint, .*checkpoint-2, is kept. Start a new run with a lower "
                                           r"--learning-rate \(this one used 0.005\)"):
        train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:6]", output_dir=str(out),
                          max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=1,
                          learning_rate=5e-3, report_to=["none"], dataset_num_proc=1, quantization="none",
                          gradient_checkpointing=False))
    assert last_checkpoint(out) == out / "checkpoint-2"
    state = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in state.values())


def test_infinite_gradient_norm_stops_before_the_update():
    """The guard runs in transformers' public on_pre_optimizer_step callback, once per step."""
    from vlmpref.train.guards import NonFiniteLoss, _CheckBeforeUpdate

    model = torch.nn.Linear(2, 2)
    trainer = type("Trainer", (), {"_step_losses": torch.tensor(1.5)})()
    state = type("State", (), {"global_step": 6})()
    check = _CheckBeforeUpdate(trainer)
    model.weight.grad = torch.ones(2, 2)
    check.on_pre_optimizer_step(None, state, None, model=model)  # finite: passes, and starts the next step afresh
    assert trainer._step_losses is None
    model.weight.grad = torch.full((2, 2), float("inf"))
    with pytest.raises(NonFiniteLoss, match="the gradient norm is inf at step 7"):
        check.on_pre_optimizer_step(None, state, None, model=model)


def test_resume_of_a_4bit_run_keeps_the_adapter_precision(tiny_model_dir, shapes_dir, tmp_path):
    """TRL trains QLoRA adapters in bf16; PEFT's load_adapter (used on resume) would upcast them to float32, and the
    resumed run would continue in another precision. A run cut after checkpoint-2 must end as the whole run does."""
    whole, cut, resumed = cut_and_resume(tmp_path, model=str(tiny_model_dir), dataset=str(shapes_dir),
                                         split="train[:16]", quantization="4bit", gradient_checkpointing=False)
    assert resumed.summary["resumed_from"] == "checkpoint-2"
    expected, got = load_file(whole / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    assert {t.dtype for t in expected.values()} == {torch.bfloat16, torch.float32}  # A/B bf16, DoRA magnitude fp32
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert torch.equal(got[name], expected[name]), name
