"""Shared fixtures: tiny models, processors and datasets built offline in seconds."""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Idefics3 (SmolVLM architecture) saved with save_pretrained."""
    from vlmpref.models.tiny import TinyModelConfig, save_tiny_model

    return save_tiny_model(TinyModelConfig(output_dir=str(tmp_path_factory.mktemp("tiny") / "idefics3")))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from vlmpref.models.tiny import TinyModelConfig, save_tiny_model

    return save_tiny_model(TinyModelConfig(output_dir=str(tmp_path_factory.mktemp("tiny") / "llava"),
                                           architecture="llava"))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """The shapes world, 8 training and 4 held-out images (40 and 20 rows), written with save_to_disk."""
    from vlmpref.data.synthetic import make_splits

    path = tmp_path_factory.mktemp("data") / "shapes"
    make_splits(8, 4, seed=0).save_to_disk(str(path))
    return path
