"""`vlmpref score` on answers from anywhere, COCO-format ground truth, and compare across schema versions."""

import json

import pytest
from PIL import Image

from vlmpref.cli import main
from vlmpref.errors import VlmprefError
from vlmpref.eval.coco import load_coco
from vlmpref.eval.evaluate import pope_probes, read_eval
from vlmpref.eval.run import attach_coco
from vlmpref.eval.score import probe_object, read_answers
from vlmpref.eval.vocab import load_vocabulary
from vlmpref.report.compare import compare_runs, warnings

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 17, "name": "cat"},
              {"id": 63, "name": "couch"}, {"id": 62, "name": "chair"}, {"id": 44, "name": "bottle"}]


@pytest.fixture
def coco_files(tmp_path):
    """A small COCO-format pair of files: three images, their instances and reference captions."""
    images = [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"}, {"id": 2, "file_name": "b.jpg"},
              {"id": 3, "file_name": "c.jpg"}]
    instances = {"images": images, "categories": CATEGORIES, "annotations": [
        {"id": 1, "image_id": 1, "category_id": 18}, {"id": 2, "image_id": 1, "category_id": 63},
        {"id": 3, "image_id": 1, "category_id": 18}, {"id": 4, "image_id": 2, "category_id": 1},
        {"id": 5, "image_id": 2, "category_id": 62}, {"id": 6, "image_id": 3, "category_id": 17},
        {"id": 7, "image_id": 3, "category_id": 63}]}
    captions = {"images": images, "annotations": [
        {"id": 1, "image_id": 1, "caption": "A puppy naps on a sofa next to a remote."},
        {"id": 2, "image_id": 2, "caption": "A woman sits on a chair holding a bottle."},
        {"id": 3, "image_id": 3, "caption": "A cat on a couch."}]}
    paths = tmp_path / "instances.json", tmp_path / "captions.json"
    paths[0].write_text(json.dumps(instances))
    paths[1].write_text(json.dumps(captions))
    return tuple(map(str, paths))


def test_coco_objects_are_segmentation_labels_plus_caption_objects(coco_files):
    coco = load_coco(*coco_files)
    assert coco.lookup(image_id=1) == {"objects": ["dog", "couch"],
                                       "captions": ["A puppy naps on a sofa next to a remote."]}
    assert coco.lookup(file_name="images/COCO_val2014_000000000001.jpg")["objects"] == ["dog", "couch"]
    assert coco.lookup(image_id=99) is None and coco.lookup(image_id="x") is None


def test_coco_file_errors(tmp_path, coco_files):
    with pytest.raises(VlmprefError, match="does not exist"):
        load_coco(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(VlmprefError, match="not valid JSON"):
        load_coco(str(tmp_path / "bad.json"))
    (tmp_path / "nocat.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(VlmprefError, match="no 'categories'"):
        load_coco(str(tmp_path / "nocat.json"))


def _answers(tmp_path, rows):
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_score_cli_both_readings_and_set_aside_rows(tmp_path, coco_files, capsys):
    answers = _answers(tmp_path, [
        # image 1 holds dog, couch (+ remote from its caption): "bottle" is hallucinated in both readings
        {"id": "a", "question": "Describe the image.", "answer": "Two dogs on a couch with a bottle.", "image_id": 1},
        # image 2 holds person, chair (+ bottle): no cat is named by vlmpref, chair_compat counts the negated cat
        {"id": "b", "question": "Describe the image.", "answer": "A woman on a chair, and no cat.", "image": "b.jpg"},
        {"question": "Is there a dog in the image?", "answer": "There is a dog. It is not moving.", "label": "yes"},
        {"question": "Is there a cat in the image?", "answer": "No!", "label": "no"},
        {"question": "Describe the image.", "answer": "A cat.", "image_id": 42},
        {"question": "", "answer": "A cat.", "objects": ["cat"]},
        {"question": "Is there a cat?", "answer": "No.", "label": "perhaps"},
        "[1, 2]",
    ])
    out = tmp_path / "score"
    assert main(["score", "--answers", answers, "--coco-instances", coco_files[0], "--coco-captions", coco_files[1],
                 "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 CHAIR rows and 2 POPE rows used, 4 set aside" in printed and "chair_compat" in printed
    rejected = [json.loads(line) for line in (out / "rejected_rows.jsonl").read_text().splitlines()]
    assert [r["row_id"] for r in rejected] == [5, 6, 7, 8]
    assert "in neither COCO annotation file" in rejected[0]["reason"] and "no question" in rejected[1]["reason"]
    assert "neither yes nor no" in rejected[2]["reason"] and "not a JSON object" in rejected[3]["reason"]
    run = read_eval(out)
    metrics = run.metrics
    a, b = run.samples
    assert a["objects"] == ["couch", "dog", "remote"] and a["mentioned"] == ["dog", "couch", "bottle"]
    assert a["chair_compat_mentioned"] == ["dog", "couch", "bottle"]
    assert b["mentioned"] == ["person", "chair"] and b["chair_compat_mentioned"] == ["person", "chair", "cat"]
    assert metrics["chair_sentence"]["value"] == pytest.approx(1 / 2)
    assert metrics["chair_instance"]["value"] == pytest.approx(1 / 5)
    assert metrics["chair_compat"]["chair_sentence"]["value"] == pytest.approx(2 / 2)
    assert metrics["chair_compat"]["chair_instance"]["value"] == pytest.approx(2 / 6)
    # POPE: vlmpref reads yes / no (both right), pope_compat yes / yes ("No!" is not the word "No")
    assert metrics["pope"]["given"]["accuracy"]["value"] == 1.0
    assert metrics["pope_compat"]["given"]["accuracy"]["value"] == 0.5
    assert [p["object"] for p in run.pope] == ["dog", "cat"]
    assert "chair_compat" in run.document["settings"]["readings"]


def test_score_errors(tmp_path):
    assert main(["score", "--answers", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "o")]) == 2
    only_bad = _answers(tmp_path, ["{}", '{"question": "q", "answer": "a"}'])
    assert main(["score", "--answers", only_bad, "--output-dir", str(tmp_path / "o2")]) == 2
    with pytest.raises(VlmprefError, match="No answers given"):
        from vlmpref.eval.score import ScoreConfig

        ScoreConfig()


def test_probe_object_and_pope_rows(tmp_path):
    assert probe_object("Is there a dining table in the image?") == "dining table"
    assert probe_object("Is there an apple in the picture?") == "apple"
    assert probe_object("What is this?") is None
    _, pope, _ = read_answers(_answers(tmp_path, [
        {"question": "Is there a dog in the image?", "answer": "yes", "label": "no", "strategy": "adversarial"}]))
    assert pope[0]["label"] is False and pope[0]["strategy"] == "adversarial" and pope[0]["object"] == "dog"


def test_eval_rows_take_coco_ground_truth_and_pope_probes(coco_files):
    """eval's rows with an image_id: objects and captions from COCO; probes ask segmentation labels as present."""
    pictures = [[Image.new("RGB", (4, 4), color)] for color in ("red", "green", "blue")]
    rows = [{"image_id": i + 1, "images": pictures[i]} for i in range(3)] + [{"image_id": 7, "images": pictures[0]}]
    rows = attach_coco(rows, *coco_files)
    assert rows[1]["objects"] == ["person", "chair"] and rows[1]["captions"][0].startswith("A woman")
    assert "objects" not in rows[3]  # unmatched rows keep their own columns
    probes = pope_probes(rows, load_vocabulary("coco80"), per_image=3, seed=0)
    image1 = [p for p in probes if p["row_index"] == 0]
    assert {p["object"] for p in image1 if p["label"]} == {"dog", "couch"}
    # "remote" is named only by image 1's caption: never asked as absent there
    assert not {p["object"] for p in image1 if not p["label"]} & {"dog", "couch", "remote"}
    popular = [p["object"] for p in image1 if p["strategy"] == "popular" and not p["label"]]
    assert popular == ["cat", "chair"]  # couch 2 images (present), then cat, chair, dog, person 1 each, by name
    with pytest.raises(VlmprefError, match="image_id"):
        attach_coco([{"image_id": 99}], *coco_files)


def test_compare_reads_schema_1_and_2(tmp_path):
    """A schema-1 folder (no compat readings) compares with a schema-2 one; the compat rows show only 'after'."""
    metric = {"value": 0.5, "n": 2, "ci95": [0.1, 0.9], "ci": "wilson"}
    old, new = tmp_path / "old", tmp_path / "new"
    for folder, version, extra in ((old, 1, {}), (new, 2, {"chair_compat": {"chair_sentence": metric,
                                                                            "chair_instance": metric}})):
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"schema_version": version, "metrics": {
            "chair_sentence": metric, "chair_instance": metric, **extra}}))
        sample = {"row_id": 0, "question": "q", "objects": ["dog"], "mentioned": ["dog"], "hallucinated": []}
        if version == 2:
            sample.update(chair_compat_mentioned=["dog"], chair_compat_hallucinated=[])
        (folder / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    rows = {r.spec.path: r for r in compare_runs(read_eval(old), read_eval(new))}
    assert rows["chair_sentence"].change["value"] == 0.0
    assert rows["chair_compat.chair_sentence"].before is None and rows["chair_compat.chair_sentence"].after == metric
    assert "vlmpref" in rows["chair_sentence"].spec.label and "chair_compat" in rows[
        "chair_compat.chair_sentence"].spec.label
    assert any("schema 1 before, 2 after" in note for note in warnings(read_eval(old), read_eval(new)))


def test_eval_cli_with_coco_annotations(tiny_model_dir, coco_files, tmp_path, capsys):
    """`vlmpref eval --coco-instances --coco-captions` on a local JSONL dataset with an image_id column."""
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for image_id, color in ((1, "red"), (2, "green"), (3, "blue")):
        Image.new("RGB", (32, 32), color).save(data / f"{image_id}.png")
        rows.append({"image": f"{image_id}.png", "question": "Describe the image.", "chosen": "A dog.",
                     "rejected": f"A {color} bus.", "image_id": image_id})
    (data / "prefs.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--dataset", str(data / "prefs.jsonl"), "--split", "train",
                 "--coco-instances", coco_files[0], "--coco-captions", coco_files[1], "--output-dir", str(out),
                 "--max-new-tokens", "4", "--relevance", "lexical", "--pope-per-image", "2"]) == 0
    assert "3 of 3 rows matched by image_id" in capsys.readouterr().out
    run = read_eval(out)
    assert [s["objects"] for s in run.samples] == [["couch", "dog", "remote"], ["bottle", "chair", "person"],
                                                   ["cat", "couch"]]
    assert all("chair_compat_mentioned" in s for s in run.samples)
    assert {"chair_compat", "pope_compat", "pope"} <= set(run.metrics)
    # 2 present (segmentation labels) and 2 absent objects per image and strategy
    assert len(run.pope) == 3 * 3 * 4 and all("says_yes_compat" in p for p in run.pope)
    present = {p["object"] for p in run.pope if p["label"] and p["image"] == run.samples[1]["image"]}
    assert present == {"person", "chair"}  # "bottle" comes from a caption: named, but never asked as present
