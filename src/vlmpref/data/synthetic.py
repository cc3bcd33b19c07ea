"""The "shapes" world: images of simple colored shapes with questions, correct and hallucinated answers.

    vlmpref data synthetic --output-dir runs/shapes --train-scenes 400 --test-scenes 100

Every image is drawn from a scene (shapes, colors, columns) that is known exactly, so answers can be checked
and object hallucination counted. Train and test scenes are disjoint: a fixed fifth of all (shape, color,
column) layouts only ever appears in test splits. Everything is deterministic given the seed.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {
    "red": (215, 45, 45),
    "green": (45, 165, 65),
    "blue": (45, 85, 215),
    "yellow": (230, 195, 30),
    "purple": (145, 65, 185),
}
COLUMNS = ("left", "middle", "right")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
QUESTION_TYPES = ("color", "count", "exist", "position", "describe")

# Paraphrases keep the model from keying on one exact string; `{shape}` / `{column}` are filled per scene.
QUESTIONS = {
    "color": ("What color is the {shape}?", "Which color does the {shape} have?", "What is the color of the {shape}?"),
    "count": ("How many shapes are there?", "How many shapes are in the image?", "Count the shapes in the image."),
    "exist": ("Is there a {shape} in the image?", "Does the image contain a {shape}?", "Can you see a {shape}?"),
    "position": ("What shape is on the {column}?", "Which shape is on the {column}?", "What is on the {column}?"),
    "describe": ("Describe the image.", "What shapes do you see?", "List the shapes in the image."),
}


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    column: str

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Shape, ...]
    seed: int

    @property
    def key(self) -> tuple:
        """The layout that decides every answer; train and test never share one."""
        return tuple(sorted((o.shape, o.color, o.column) for o in self.objects))

    def at(self, column: str) -> Shape | None:
        return next((o for o in self.objects if o.column == column), None)

    def left_to_right(self) -> list[Shape]:
        return sorted(self.objects, key=lambda o: COLUMNS.index(o.column))


def random_scene(rng: random.Random, max_objects: int = 3) -> Scene:
    k = rng.randint(1, max_objects)
    shapes = rng.sample(SHAPES, k)
    columns = rng.sample(COLUMNS, k)
    objects = tuple(Shape(s, rng.choice(list(COLORS)), c) for s, c in zip(shapes, columns))
    return Scene(objects=objects, seed=rng.randrange(2**31))


def is_heldout_layout(key: tuple) -> bool:
    """A fixed fifth of all layouts is reserved for test splits, whatever the seed.

    So the held-out split of any seed is disjoint from every training split, including the data the demo's
    base model was pre-trained on.
    """
    return zlib.crc32(repr(key).encode()) % 5 == 0


def generate_scenes(n: int, seed: int, heldout: bool, max_objects: int = 3) -> list[Scene]:
    """`n` scenes drawn from the held-out layouts (`heldout=True`) or from the training layouts."""
    rng = random.Random(seed)
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = random_scene(rng, max_objects)
        if is_heldout_layout(scene.key) == heldout:
            scenes.append(scene)
    return scenes


# ---- drawing


def render(scene: Scene, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Draw the scene: one shape per column, jittered in size and height, on a light background."""
    rng = random.Random(scene.seed)
    width, height = size
    shade = rng.randint(225, 250)
    image = Image.new("RGB", size, (shade, shade, rng.randint(220, 250)))
    draw = ImageDraw.Draw(image)
    cell = width / len(COLUMNS)
    for obj in scene.objects:
        r = cell * rng.uniform(0.28, 0.4)
        cx = cell * (COLUMNS.index(obj.column) + 0.5) + rng.uniform(-0.08, 0.08) * cell
        cy = rng.uniform(r + 1, height - r - 1)
        fill = COLORS[obj.color]
        box = (cx - r, cy - r, cx + r, cy + r)
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
        elif obj.shape == "cross":
            t = 0.32 * r
            draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
            draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    return image


# ---- questions and answers


def _article_list(names: list[str]) -> str:
    items = [f"a {n}" for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe(objects: list[Shape]) -> str:
    return _article_list([o.name for o in objects]).capitalize() + "."


def count_answer(n: int) -> str:
    return "There is one shape." if n == 1 else f"There are {NUMBER_WORDS[n]} shapes."


def _qa(scene: Scene, qtype: str, rng: random.Random) -> dict:
    """One question with its correct answer, a hallucinated answer, and the key answer word."""
    question = rng.choice(QUESTIONS[qtype])
    present = [o.shape for o in scene.objects]
    absent = [s for s in SHAPES if s not in present]
    if qtype == "color":
        obj = rng.choice(scene.objects)
        # The most plausible wrong color is one that is in the picture (on another shape)
        others = [o.color for o in scene.objects if o.color != obj.color] or [c for c in COLORS if c != obj.color]
        wrong = rng.choice(others)
        return dict(question=question.format(shape=obj.shape), chosen=f"The {obj.shape} is {obj.color}.",
                    rejected=f"The {obj.shape} is {wrong}.", answer=obj.color)
    if qtype == "count":
        n = len(scene.objects)
        wrong = rng.choice([m for m in (1, 2, 3, 4) if m != n and abs(m - n) == 1])
        return dict(question=question, chosen=count_answer(n), rejected=count_answer(wrong),
                    answer=NUMBER_WORDS[n])
    if qtype == "exist":
        if absent and rng.random() < 0.5:
            shape = rng.choice(absent)
            return dict(question=question.format(shape=shape), chosen=f"No, there is no {shape}.",
                        rejected=f"Yes, there is a {shape}.", answer="no")
        shape = rng.choice(present)
        return dict(question=question.format(shape=shape), chosen=f"Yes, there is a {shape}.",
                    rejected=f"No, there is no {shape}.", answer="yes")
    if qtype == "position":
        obj = rng.choice(scene.objects)
        wrong = rng.choice([s for s in SHAPES if s != obj.shape])
        return dict(question=question.format(column=obj.column), chosen=f"A {obj.name}.",
                    rejected=f"A {obj.color} {wrong}.", answer=obj.shape)
    if qtype == "describe":
        objects = scene.left_to_right()
        fake = Shape(rng.choice(absent), rng.choice(list(COLORS)), "") if absent else None
        if fake is not None and (len(objects) == 1 or rng.random() < 0.5):
            wrong = objects + [fake]  # an extra object that is not there
        else:
            i = rng.randrange(len(objects))  # one object swapped for another shape
            swap = rng.choice(absent) if absent else rng.choice([s for s in SHAPES if s != objects[i].shape])
            wrong = objects[:i] + [Shape(swap, objects[i].color, objects[i].column)] + objects[i + 1:]
        return dict(question=question, chosen=describe(objects), rejected=describe(wrong), answer="")
    raise ValueError(f"unknown question type {qtype!r}")


def scene_rows(scene: Scene, image_size: tuple[int, int] = (64, 64),
               question_types: tuple[str, ...] = QUESTION_TYPES) -> Iterator[dict]:
    """Rows in vlmpref's plain format (image, question, chosen, rejected) plus ground truth for evaluation."""
    rng = random.Random(scene.seed + 1)
    image = render(scene, image_size)
    objects = [{"shape": o.shape, "color": o.color, "position": o.column} for o in scene.left_to_right()]
    for qtype in question_types:
        qa = _qa(scene, qtype, rng)
        yield {"image": image, "question": qa["question"], "chosen": qa["chosen"], "rejected": qa["rejected"],
               "answer": qa["answer"], "question_type": qtype, "objects": objects}


@dataclass
class SyntheticConfig:
    """Options of `vlmpref data synthetic`."""

    output_dir: str = field(metadata={"path": "out", "help": "Folder for the dataset (written with save_to_disk: train, test)."})
    train_scenes: int = field(default=400, metadata={"help": "Number of training images (5 questions each)."})
    test_scenes: int = field(default=100, metadata={"help": "Number of held-out images, layouts disjoint from train."})
    image_size: int = field(default=64, metadata={"help": "Square image side, pixels."})
    seed: int = field(default=0, metadata={"help": "Seed; the same seed gives the same images and questions."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder."})


def make_splits(train_scenes: int, test_scenes: int, seed: int = 0, image_size: int = 64,
                question_types: tuple[str, ...] = QUESTION_TYPES):
    """A `DatasetDict` with disjoint `train` and `test` splits of the shapes world."""
    from datasets import Dataset, DatasetDict

    test = generate_scenes(test_scenes, seed=seed * 1000 + 1, heldout=True)
    train = generate_scenes(train_scenes, seed=seed * 1000 + 2, heldout=False)
    size = (image_size, image_size)
    return DatasetDict({
        "train": Dataset.from_list([r for s in train for r in scene_rows(s, size, question_types)]),
        "test": Dataset.from_list([r for s in test for r in scene_rows(s, size, question_types)]),
    })


def write_synthetic(cfg: SyntheticConfig) -> Path:
    from vlmpref.errors import VlmprefError

    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise VlmprefError(f"Output folder {out} is not empty; choose another --output-dir or pass --overwrite.")
    make_splits(cfg.train_scenes, cfg.test_scenes, cfg.seed, cfg.image_size).save_to_disk(str(out))
    return out


def text_corpus() -> Iterator[str]:
    """Every sentence shape the world produces, plus common English, to train the tiny models' tokenizer."""
    rng = random.Random(0)
    for _ in range(300):
        scene = random_scene(rng)
        for qtype in QUESTION_TYPES:
            qa = _qa(scene, qtype, rng)
            yield f"User: {qa['question']}\nAssistant: {qa['chosen']} {qa['rejected']}"
    for q in QUESTIONS.values():
        yield " ".join(q)
    yield from _ENGLISH


_ENGLISH = [
    "The quick brown fox jumps over the lazy dog while the people in the room look at the picture.",
    "A man is standing next to a car on the street, and a woman with a dog walks by the building.",
    "There are two cats sitting on a table near the window, one of them is black and the other is white.",
    "What is happening in this image? Please describe it in detail, including the objects and their colors.",
    "This photo shows a kitchen with a refrigerator, an oven, a sink and a bowl of fruit on the counter.",
    "Yes, the answer is correct because the person holds an umbrella in the rain near the bus stop.",
    "No, I do not see any animal in the picture; it shows a mountain, a lake, trees and a blue sky.",
]
