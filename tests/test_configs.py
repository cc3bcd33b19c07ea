"""Every shipped YAML under configs/ loads into TrainConfig, opens with the command that runs it, and has an estimate."""

import re
from pathlib import Path

import pytest

from vlmpref import config as config_io
from vlmpref.train.config import TrainConfig
from vlmpref.train.plan import EstimateConfig, run_estimate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "presets")
# configs/presets links into the package; rglob does not follow the link, so the presets are listed by name
PRESET_FILES = [CONFIGS / "presets" / f"{name}.yaml" for name in config_io.PRESETS]


def test_configs_for_every_smolvlm_size():
    names = {str(p.relative_to(CONFIGS)) for p in RUN_CONFIGS}
    assert {"smolvlm-instruct/dpo-guide.yaml", "smolvlm-instruct/dpo-language-only.yaml", "smolvlm-256m/dpo.yaml",
            "smolvlm-500m/dpo.yaml"} <= names


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
    cfg = config_io.resolve(EstimateConfig, flags={"gpu": "12gb", "as_json": True}, yaml_path=path)
    report = run_estimate(cfg)
    assert report["gpus"][0]["fits"], f"{path} does not fit 12 GiB"


@pytest.mark.parametrize("path", [p for p in RUN_CONFIGS if "--answer-tokens 256`: " in p.read_text()],
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_header_states_its_estimate(path):
    documented = float(re.search(r"--answer-tokens 256`: ([\d.]+) GiB", path.read_text()).group(1))
    cfg = config_io.resolve(EstimateConfig, flags={"gpu": "12gb", "answer_tokens": 256, "as_json": True},
                            yaml_path=path)
    assert round(run_estimate(cfg)["total_gib"], 1) == documented
