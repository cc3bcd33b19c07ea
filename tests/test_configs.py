"""Every shipped YAML under configs/ loads into TrainConfig, opens with the command that runs it, and has an estimate."""

import re
from pathlib import Path

import pytest

from vlmpref import config as config_io
from vlmpref.train.config import TrainConfig
from vlmpref.plan.run import EstimateConfig, run_estimate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
README = (CONFIGS.parent / "README.md").read_text()
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "presets")
# configs/presets links into the package; rglob does not follow the link, so the presets are listed by name
PRESET_FILES = [CONFIGS / "presets" / f"{name}.yaml" for name in config_io.PRESETS]


# What each shipped config runs, as README's config table says: (engine, lora scope, packing, image cache)
EXPECTED = {
    "smolvlm-instruct/dpo-guide.yaml": ("fast", "all", "auto", "auto"),          # exact mode
    "smolvlm-instruct/dpo-guide-trl.yaml": ("trl", "all", "auto", "auto"),       # TRL, the reference
    "smolvlm-instruct/dpo-language-only.yaml": ("fast", "language", "auto", "auto"),  # fast mode, caches
    "smolvlm-500m/dpo.yaml": ("fast", "all", "auto", "auto"),
    "smolvlm-256m/dpo.yaml": ("fast", "all", "auto", "auto"),
}


def test_every_shipped_config_runs_the_engine_and_mode_its_name_and_the_table_say():
    assert {str(p.relative_to(CONFIGS)) for p in RUN_CONFIGS} == set(EXPECTED)
    for path in RUN_CONFIGS:
        name = str(path.relative_to(CONFIGS))
        cfg = config_io.resolve(TrainConfig, yaml_path=path)
        assert (cfg.engine, cfg.lora_scope, cfg.pairs_per_forward, cfg.image_cache) == EXPECTED[name], name
        assert (cfg.engine == "trl") == ("trl" in path.stem), f"{name}: a config that runs TRL says so in its name"
        readme_row = re.search(rf"^\| `configs/{re.escape(name)}` \| (.*) \|$", README, re.M)
        assert readme_row, f"README's config table lists {name}"
        assert ("TRL" in readme_row.group(1)) == (cfg.engine == "trl"), name


@pytest.mark.parametrize("path", RUN_CONFIGS + PRESET_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_and_opens_with_its_command(path):
    first = path.read_text().splitlines()[0]
    if path.parent.name == "presets":
        assert first.startswith(f"# vlmpref train --preset {path.stem} ")
        cfg = config_io.resolve(TrainConfig, flags={"preset": str(path)})
    else:
        assert first == f"# vlmpref train --config configs/{path.relative_to(CONFIGS)}"
        cfg = config_io.resolve(TrainConfig, yaml_path=path)
    assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_has_an_estimate_that_fits_a_12gb_card(path):
    cfg = config_io.resolve(EstimateConfig, flags={"gpu": "12gb", "as_json": True}, yaml_path=path,
                            borrowed_from=TrainConfig)
    report = run_estimate(cfg)
    assert report["gpus"][0]["fits"], f"{path} does not fit 12 GiB"


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_header_states_its_estimate(path):
    """`--gpu 12gb --answer-tokens 256`: N pairs per forward, X GiB (--gpu 8gb: M pairs, Y GiB)."""
    header = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    stated = re.search(r"--gpu 12gb --answer-tokens 256`: (?:(\d+) pairs per forward, )?([\d.]+) GiB"
                       r"(?: \(--gpu 8gb: (\d+) pairs?, ([\d.]+) GiB\))?", header)
    assert stated, f"{path} states its estimate"
    for gpu, pairs, gib in (("12gb", stated[1], stated[2]), ("8gb", stated[3], stated[4])):
        if gib is None:
            continue
        cfg = config_io.resolve(EstimateConfig, flags={"gpu": gpu, "answer_tokens": 256, "as_json": True},
                                yaml_path=path, borrowed_from=TrainConfig)
        report = run_estimate(cfg)
        assert round(report["total_gib"], 1) == float(gib), gpu
        assert report["settings"]["pairs_per_forward"] == (int(pairs) if pairs else "auto"), gpu
