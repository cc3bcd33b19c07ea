"""Shared fixtures: tiny models, processors and datasets built offline in seconds."""

from __future__ import annotations

import logging
import os

import pytest

import vlmpref  # noqa: F401  # first: lets a CPU torch import PyPI's torchvision (vlmpref/_torchvision.py)

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
def tiny_smolvlm_dir(tmp_path_factory):
    """SmolVLM2's model class (model_type smolvlm) at the tiny Idefics3 sizes."""
    from vlmpref.models.tiny import TinyModelConfig, save_tiny_model

    return save_tiny_model(TinyModelConfig(output_dir=str(tmp_path_factory.mktemp("tiny") / "smolvlm"),
                                           architecture="smolvlm"))


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """tiny_family("qwen2_vl") -> folder of a tiny model of that family (qwen2_vl, qwen2_5_vl, qwen3_vl, gemma3,
    internvl), with its real processor class, built once per session."""
    from vlmpref.models.tiny import TinyModelConfig, save_tiny_model

    built = {}

    def get(architecture: str):
        if architecture not in built:
            built[architecture] = save_tiny_model(TinyModelConfig(
                output_dir=str(tmp_path_factory.mktemp("tiny") / architecture), architecture=architecture))
        return built[architecture]

    return get


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """The shapes world, 8 training and 4 held-out images (40 and 20 rows), written with save_to_disk."""
    from vlmpref.data.synthetic import make_splits

    path = tmp_path_factory.mktemp("data") / "shapes"
    make_splits(8, 4, seed=0).save_to_disk(str(path))
    return path


def _internal_rows(n_scenes: int = 3, seed: int = 7) -> list[dict]:
    """Shapes-world rows in the internal form, built in memory (no datasets, no model)."""
    from vlmpref.data.synthetic import generate_scenes, scene_rows
    from vlmpref.generate import user_prompt

    def said(text):
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    rows = []
    for scene in generate_scenes(n_scenes, seed=seed, heldout=True):
        for row in scene_rows(scene):
            rows.append({"images": [row["image"]], "prompt": user_prompt(row["question"]), "chosen": said(row["chosen"]),
                         "rejected": said(row["rejected"]), "row_id": len(rows), "answer": row["answer"],
                         "question_type": row["question_type"], "objects": row["objects"]})
    return rows


@pytest.fixture(scope="session")
def shapes_rows():
    return _internal_rows()


@pytest.fixture(scope="session")
def eval_pair(tmp_path_factory, shapes_rows):
    """Evaluation folders from hand-made answers on 15 shapes rows (3 images), no model.

    before: answers every row with its rejected (wrong) answer, says yes to every POPE probe, and prefers
    rejected answers; after: answers with the chosen answer except row 0, answers every probe right,
    prefers chosen answers (reference = adapter off, summed log-probs -5 for both answers).
    """
    from vlmpref.eval.evaluate import pope_probes, score_answers, write_eval
    from vlmpref.eval.preference import PairScores
    from vlmpref.eval.vocab import load_vocabulary
    from vlmpref.generate import answer_text

    rows, vocab = shapes_rows, load_vocabulary("shapes")
    root = tmp_path_factory.mktemp("evals")
    n = len(rows)
    folders = []
    for name in ("before", "after"):
        good = name == "after"
        answers = [answer_text(r["chosen" if good and i > 0 else "rejected"]) for i, r in enumerate(rows)]
        probes = pope_probes(rows, vocab)
        for p in probes:
            p["answer"] = ("Yes." if p["label"] else "No.") if good else "Yes, there is."
        scores = PairScores([-4.0 if good else -6.0] * n, [-6.0 if good else -4.0] * n, [4] * n, [4] * n)
        reference = PairScores([-5.0] * n, [-5.0] * n, [4] * n, [4] * n) if good else None
        result = score_answers(rows, answers, scores, reference, probes, vocab, relevance="lexical")
        result["settings"] = {"relevance_method": result.pop("relevance_method"), "vocabulary": "shapes"}
        info = {"model": {"base": "tiny-base", "adapter": "runs/dpo" if good else None, "quantization": "none"},
                "dataset": {"source": "shapes", "split": "test", "rows": n, "set_aside": 0}}
        folders.append(write_eval(result, root / name, rows=rows, info=info))
    return tuple(folders)


def pytest_terminal_summary(terminalreporter, config):
    """Say where the browser tests left their screenshots (kept as test artefacts)."""
    folder = getattr(config, "vlmpref_screenshots", None)
    if folder is not None:
        terminalreporter.write_line(f"UI screenshots: {folder}")
