"""compare: metrics and paired changes from two evaluation folders, the table, the report files, the CLI.

The folders come from the `eval_pair` fixture (hand-made answers on 15 shapes rows). Hand-counted:
before, every answer is the rejected one: 0/15 right; rows 2, 3, 4, 9, 13 and 14 name a shape that is
not in the image (CHAIR-sentence 6/15), 6 of 17 mentioned objects are hallucinated (CHAIR-instance).
Each image has one present and one absent probe per strategy: saying yes to all gives accuracy 3/6 and
F1 2*3/(3+6). After: 14/15 right, no hallucination, every probe right.
"""

import json

import pytest

from vlmpref.cli import main
from vlmpref.eval.evaluate import read_eval
from vlmpref.report.compare import compare_runs, warnings
from vlmpref.report.html import highlight, pick_examples
from vlmpref.report.table import fmt_change, markdown_rows


@pytest.fixture(scope="module")
def runs(eval_pair):
    return read_eval(eval_pair[0]), read_eval(eval_pair[1])


@pytest.fixture(scope="module")
def rows(runs):
    return {r.spec.path: r for r in compare_runs(*runs)}


def test_metrics_hand_counted(runs):
    before, after = (r.metrics for r in runs)
    assert before["answer_accuracy"]["value"] == 0 and after["answer_accuracy"]["value"] == pytest.approx(14 / 15)
    assert before["chair_sentence"]["value"] == pytest.approx(6 / 15) and after["chair_sentence"]["value"] == 0
    assert before["chair_instance"]["value"] == pytest.approx(6 / 17) and before["chair_instance"]["n"] == 17
    for strategy in ("random", "popular", "adversarial"):
        pope = before["pope"][strategy]
        assert pope["accuracy"]["value"] == pytest.approx(3 / 6) and pope["yes_ratio"]["value"] == 1
        assert pope["f1"]["value"] == pytest.approx(6 / 9)
        assert after["pope"][strategy]["f1"]["value"] == 1 and after["pope"][strategy]["yes_ratio"]["value"] == 0.5
    assert before["relevance"]["value"] == 1 and before["relevance"]["method"] == "lexical"  # wrong, on topic
    assert before["length_normalized_accuracy"]["value"] == 0 and after["length_normalized_accuracy"]["value"] == 1
    # margin: 0.1 * ((-4 - -5) - (-6 - -5)) = 0.2 on every pair
    assert after["reward_margin"]["value"] == pytest.approx(0.2) and "reward_margin" not in before


def test_paired_changes_and_verdicts(rows):
    accuracy = rows["answer_accuracy"]
    assert accuracy.change["value"] == pytest.approx(14 / 15) and accuracy.change["n"] == 15
    assert accuracy.change["ci95"][0] > 0 and accuracy.verdict == "better"
    chair = rows["chair_sentence"]
    assert chair.change["value"] == pytest.approx(-6 / 15) and chair.change["ci95"][1] < 0
    assert chair.verdict == "better"  # fewer hallucinations is better
    assert rows["relevance"].change["value"] == 0 and rows["relevance"].verdict == "within noise"
    assert rows["pope.adversarial.yes_ratio"].verdict == ""  # a share of yes is neither better nor worse
    assert rows["pope.random.accuracy"].change["n"] == 6
    assert rows["reward_margin"].before is None and rows["reward_margin"].change is None


def test_table_text(rows):
    assert fmt_change(rows["answer_accuracy"]).startswith("+93.3 pts [") and fmt_change(rows["answer_accuracy"]).endswith("✓")
    assert "(-100% rel.)" in fmt_change(rows["chair_sentence"])
    table = markdown_rows(list(rows.values()), headline_only=True)
    assert table.splitlines()[0] == "| metric | before | after | change |"
    assert "| answer accuracy | 0.0% [0.0, 20.4] | 93.3% [70.2, 98.8] |" in table


def test_unpaired_runs_get_no_interval(runs):
    before, after = runs
    fewer = type(after)(after.folder, after.document, after.samples[1:], after.pope)
    row = next(r for r in compare_runs(before, fewer) if r.spec.path == "answer_accuracy")
    assert row.change["ci95"] == [None, None] and row.verdict == ""
    assert any("different examples" in w for w in warnings(before, fewer))
    assert warnings(before, after) == []


def test_highlight_marks_spans_and_escapes():
    assert highlight("a <dog> and cat", [[12, 15]]) == 'a &lt;dog&gt; and <mark class="h">cat</mark>'


def test_examples_show_changed_answers_first(runs):
    pairs = pick_examples(*runs, n=3)
    assert [b["row_id"] for b, _ in pairs] == [1, 2, 3]  # row 0 stays wrong after tuning, so it comes later


def test_compare_cli_writes_the_report(eval_pair, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", str(eval_pair[0]), str(eval_pair[1]), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "answer accuracy" in printed and "+93.3 pts" in printed
    assert {"report.html", "report.md", "comparison.json"} <= {p.name for p in out.iterdir()}
    assert (out / "plots" / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert 'src="http' not in page and "<script" not in page and page.count('src="data:image/png;base64,') >= 2
    assert '<mark class="h">triangle</mark>' in page  # "Yes, there is a triangle." in a square-only image
    comparison = json.loads((out / "comparison.json").read_text())
    assert {r["metric"] for r in comparison["rows"]} >= {"answer_accuracy", "chair_sentence", "relevance"}
    markdown = (out / "report.md").read_text()
    assert "![Before and after, with 95% intervals](plots/before_after.png)" in markdown


def test_compare_cli_errors(eval_pair, tmp_path, capsys):
    assert main(["compare", str(eval_pair[0])]) == 2
    assert "give both" in capsys.readouterr().err
    assert main(["compare", str(eval_pair[0]), str(tmp_path)]) == 2
    assert "holds no metrics.json" in capsys.readouterr().err
    assert main(["compare"]) == 2
    assert "Nothing to compare" in capsys.readouterr().err
