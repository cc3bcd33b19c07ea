"""The GPU calibration script runs end to end on a CPU in --smoke mode (tiny model, one step)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a training run in a subprocess, ~25 s on 2 cores
def test_memory_calibration_smoke(tmp_path):
    output = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_calibration.py"), "--smoke", "--only",
                             "0", "--output", str(output), "--workdir", str(tmp_path / "work")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = json.loads(output.read_text())
    assert record["status"] == "ok", record["status"]
    assert record["measured"]["steps"] == 1 and record["measured"]["seconds_per_pair"] > 0
    assert record["measured"]["peak_reserved_gib"] is None  # no CUDA here
    assert record["estimate"]["reserved_gib"] > 0 and record["tokens"]["tiles"] == 1
    assert "estimate vs measured" in result.stdout


@pytest.mark.slow  # three training runs in a subprocess, ~35 s on 2 cores
def test_dpo_benchmark_smoke(tmp_path):
    """The side-by-side TRL vs fast-engine benchmark runs on a CPU (timings are not checked)."""
    output = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dpo.py"), "--smoke", "--variants", "trl",
                             "fast-exact:2", "fast-lang", "--out", str(output), "--work", str(tmp_path / "work")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    results = {r["variant"]: r for r in report["models"]["tiny"]["results"]}
    # fast-lang without :N packs as `vlmpref train` does (auto: on a CPU, up to 4 that divide the 2 pairs per step)
    assert set(results) == {"trl", "fast-exact:2", "fast-lang:auto=2"}
    assert results["fast-lang:auto=2"]["packing"]["pairs_per_forward"] == 2
    assert results["trl"]["speedup_vs_trl"] == 1.0
    assert results["fast-lang:auto=2"]["image_cache"] and not results["fast-exact:2"]["image_cache"]
    # the shared prefix: one prompt per pair instead of two
    assert results["fast-exact:2"]["tokens_per_pair"] < results["trl"]["tokens_per_pair"]
    assert results["fast-exact:2"]["one_time_seconds"] > 0  # the reference pass, computed once
    assert "pairs/s x" in result.stdout


@pytest.mark.slow  # a subprocess; the estimates it tabulates are checked in-process by test_estimate.py's H200 rows
def test_memory_calibration_compares_a_benchmark_report():
    """--compare turns a bench_dpo.py report into ESTIMATE_VS_MEASURED.md's rows (here section 1, rows 15-17)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_calibration.py"), "--compare",
                             str(ROOT / "benchmarks" / "results" / "h200-run2-256m.json")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| h200-run2-256m.json smolvlm-256m trl | 4.45 | 4.32 | -2.8% |" in result.stdout
    assert "| h200-run2-256m.json smolvlm-256m fast-exact:2 | 3.93 | 4.24 | +7.8% |" in result.stdout
    assert "| h200-run2-256m.json smolvlm-256m fast-lang:8 | 2.10 | 1.81 | -14.2% |" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl"])
def test_dpo_benchmark_smoke_with_a_familys_tiny_model(tmp_path, architecture):
    """--smoke --smoke-architecture runs the same comparison on a tiny model of another family."""
    output = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dpo.py"), "--smoke",
                             "--smoke-architecture", architecture, "--variants", "trl", "fast-exact:2", "--out",
                             str(output), "--work", str(tmp_path / "work")],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = {r["variant"]: r for r in json.loads(output.read_text())["models"][f"tiny-{architecture}"]["results"]}
    assert set(results) == {"trl", "fast-exact:2"}
    assert results["fast-exact:2"]["tokens_per_pair"] < results["trl"]["tokens_per_pair"]
