"""The evaluation folder: metrics from answers given in hand, the documented schema, write and read back."""

import json

import pytest

from vlmpref.errors import VlmprefError
from vlmpref.eval import evaluate as evaluate_module
from vlmpref.eval.evaluate import SCHEMA_VERSION, read_eval, score_answers
from vlmpref.eval.preference import PairScores
from vlmpref.generate import answer_text


def _scores(n):
    return PairScores([-1.0] * n, [-2.0] * n, [2] * n, [2] * n)


def test_without_a_vocabulary_there_is_no_chair_or_pope(shapes_rows):
    answers = [answer_text(r["chosen"]) for r in shapes_rows]
    result = score_answers(shapes_rows, answers, _scores(len(answers)), vocab=None, relevance="lexical")
    metrics = result["metrics"]
    assert metrics["answer_accuracy"]["value"] == 1.0 and metrics["answer_accuracy"]["n"] == 15
    assert "chair_sentence" not in metrics and "pope" not in metrics  # left out, never reported as 0
    assert all(s["objects"] is None for s in result["samples"])


def test_every_metric_is_documented_and_has_an_interval(eval_pair):
    document = json.loads((eval_pair[1] / "metrics.json").read_text())
    assert document["schema_version"] == SCHEMA_VERSION == 2
    assert {"model", "dataset", "settings", "metrics", "vlmpref_version", "created"} <= set(document)
    doc = evaluate_module.__doc__
    for key, metric in document["metrics"].items():
        assert f'"{key}"' in doc, f"{key} is not in the schema of vlmpref.eval.evaluate"
        leaves = [metric] if "value" in metric else [
            leaf for sub in metric.values() for leaf in ([sub] if "value" in sub else sub.values())]
        for leaf in leaves:
            assert {"value", "n", "ci95", "ci"} <= set(leaf), key
            assert leaf["ci"] in ("wilson", "bootstrap")


def test_samples_and_probes_are_written_and_read_back(eval_pair):
    run = read_eval(eval_pair[0])
    assert len(run.samples) == 15 and len(run.pope) == 3 * 6
    sample = run.samples[2]  # "Can you see a triangle?" answered "Yes, there is a triangle." on a square
    assert sample["hallucinated"] == ["triangle"] and sample["objects"] == ["square"]
    assert sample["accuracy_rule"] == "key" and sample["correct"] is False
    assert (eval_pair[0] / sample["image_file"]).is_file()
    assert len(list((eval_pair[0] / "images").iterdir())) == 3  # one thumbnail per distinct image


def test_read_eval_errors(tmp_path):
    with pytest.raises(VlmprefError, match="holds no metrics.json"):
        read_eval(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": 99, "metrics": {}}))
    with pytest.raises(VlmprefError, match="upgrade vlmpref"):
        read_eval(tmp_path)
