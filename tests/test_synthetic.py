"""The shapes world: deterministic, disjoint splits, answers that agree with the drawn objects."""

from vlmpref.data.synthetic import (COLORS, QUESTION_TYPES, SHAPES, generate_scenes, is_heldout_layout,
                                    make_splits, render, scene_rows)
from vlmpref.eval.answers import answer_correct


def test_same_seed_same_world():
    a, b = make_splits(5, 3, seed=7), make_splits(5, 3, seed=7)
    assert a["train"]["chosen"] == b["train"]["chosen"]
    assert list(a["test"][0]["image"].getdata()) == list(b["test"][0]["image"].getdata())
    assert make_splits(5, 3, seed=8)["train"]["chosen"] != a["train"]["chosen"]


def test_train_and_test_layouts_are_disjoint_for_any_seed():
    test_keys = {s.key for seed in range(3) for s in generate_scenes(200, seed, heldout=True)}
    train_keys = {s.key for seed in range(3) for s in generate_scenes(600, seed + 10, heldout=False)}
    assert test_keys and train_keys and not (test_keys & train_keys)
    assert all(is_heldout_layout(k) for k in test_keys)


def test_every_question_type_has_a_correct_chosen_and_a_wrong_rejected():
    for scene in generate_scenes(60, seed=3, heldout=False):
        for row in scene_rows(scene):
            assert row["chosen"] != row["rejected"]
            key, objects = row["answer"] or None, row["objects"] if not row["answer"] else None
            assert answer_correct(row["chosen"], row["chosen"], key=key, objects=objects), row
            assert not answer_correct(row["rejected"], row["chosen"], key=key, objects=objects), row


def test_rows_carry_the_ground_truth_objects():
    scene = generate_scenes(1, seed=0, heldout=False)[0]
    rows = list(scene_rows(scene))
    assert [r["question_type"] for r in rows] == list(QUESTION_TYPES)
    objects = rows[0]["objects"]
    assert len(objects) == len(scene.objects)
    assert all(o["shape"] in SHAPES and o["color"] in COLORS for o in objects)


def test_render_draws_the_colors_of_the_scene():
    scene = generate_scenes(1, seed=5, heldout=False)[0]
    pixels = set(render(scene).getdata())
    for obj in scene.objects:
        assert COLORS[obj.color] in pixels
