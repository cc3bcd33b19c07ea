"""Output fits where it goes: tables sent to a file or pipe are not cut at rich's 80 columns; labels in square
brackets (splits such as [test], extras such as [ui]) are printed, not read as style tags; lists of reasons say
how many were left out."""

import io

import pytest
from datasets import Dataset

from vlmpref.cli import main
from vlmpref.data import PreferenceData
from vlmpref.errors import VlmprefError
from vlmpref.terminal import make_console


def test_tables_to_a_file_keep_every_column(eval_pair, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)
    before, after = eval_pair
    assert main(["compare", str(before), str(after), "--output-dir", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out  # captured: not a terminal, as in CI logs and `| tee`
    rows = [line for line in out.splitlines() if "answer accuracy" in line]
    assert rows and len(rows[0]) > 80 and "✓" in rows[0] and "pts [" in rows[0]
    assert make_console(file=io.StringIO()).width > 200
    monkeypatch.setenv("COLUMNS", "100")  # the user's choice still wins
    assert make_console(file=io.StringIO()).width == 100


def test_split_labels_are_printed(shapes_dir, capsys):
    assert main(["data", "check", "--dataset", str(shapes_dir), "--split", "test[:3]", "--dataset-num-proc",
                 "1"]) == 0
    assert f"{shapes_dir} [test[:3]]: 3 rows, 3 usable, 0 set aside" in capsys.readouterr().out


def test_data_check_applies_trains_length_policy(shapes_dir, tiny_model_dir, capsys):
    common = ["data", "check", "--dataset", str(shapes_dir), "--split", "test[:5]", "--model", str(tiny_model_dir),
              "--dataset-num-proc", "1", "--max-length"]
    assert main([*common, "40", "--truncation", "skip"]) == 0
    out = capsys.readouterr().out
    assert "over --max-length 40" in out and "5 rows, 5 usable, 0 set aside" not in out
    assert main([*common, "4000"]) == 0
    assert "5 rows, 5 usable, 0 set aside" in capsys.readouterr().out


def test_the_set_aside_stop_says_how_many_reasons_it_left_out():
    reasons = [f"problem {chr(97 + i)}" for i in range(5)]
    data = PreferenceData(dataset=Dataset.from_dict({"row_id": [9]}),
                          set_aside=Dataset.from_dict({"row_id": list(range(5)), "problem": reasons}),
                          source="d.jsonl", split="train")
    with pytest.raises(VlmprefError) as error:
        data.check_share(0.5, "rejected_rows.jsonl")
    assert "; and 2 more kinds of problem)" in str(error.value)
    assert data.summary().endswith("; and 2 more kinds of problem)")
