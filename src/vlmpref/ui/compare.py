"""The Compare tab's work: load base and tuned model, stream both answers, mark hallucinated objects.

    pair = load_pair("runs/demo/adapter")                 # base from the run's vlmpref_config.yaml
    for base, tuned in stream_pair(pair, image, "Describe the image.", max_new_tokens=48):
        ...                                               # the two answers so far, same settings

Models load through `vlmpref.generate` (as `vlmpref chat` does) and answers stream through its ChatSession;
objects named that the image does not hold are found by the eval module's CHAIR reader.
"""

from __future__ import annotations

import html
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from vlmpref.errors import VlmprefError
from vlmpref.eval.hallucination import chair_answer
from vlmpref.eval.vocab import Vocabulary, load_vocabulary, pick_vocabulary
from vlmpref.report.html import highlight
from vlmpref.runs import run_config

GENERATION_DEFAULTS = {"max_new_tokens": 64, "do_sample": False, "temperature": 0.7, "top_p": 0.9}


def run_settings(adapter_dir: str | Path) -> dict:
    """The training config saved with an adapter: in its folder, or the run folder above a checkpoint."""
    return run_config(adapter_dir)


@dataclass
class ModelPair:
    """The base model and the same base with the adapter, each with its processor."""

    base_name: str
    adapter: str
    quantization: str
    base: tuple  # (model, processor)
    tuned: tuple


_loaded: dict[tuple, ModelPair] = {}
_load_lock = threading.Lock()


def load_pair(adapter_dir: str | Path, base: str | None = None, quantization: str | None = None,
              check=None) -> ModelPair:
    """Base and base + adapter, loaded once and kept (one pair at a time: another run frees the last one).

    `check(path_or_id)` vets the base model the run names (the UI refuses one outside its folders)."""
    from vlmpref.models.inference import load_for_inference

    settings = run_settings(adapter_dir)
    base = base or settings.get("model")
    if not base:
        raise VlmprefError(f"{adapter_dir} does not say which base model it was trained on (no vlmpref_config.yaml "
                           "beside it).")
    if check is not None:
        base = check(str(base))
    quantization = quantization or settings.get("quantization") or "none"
    key = (str(base), str(adapter_dir), quantization)
    with _load_lock:
        if key not in _loaded:
            _loaded.clear()  # free the previous pair before loading the next
            options = dict(trust_remote_code=bool(settings.get("trust_remote_code")),
                           allow_pickle=bool(settings.get("allow_pickle")))
            models = []
            for adapter in (None, str(adapter_dir)):
                loaded = load_for_inference(str(base), adapter, quantization, **options)
                models.append((loaded.model.eval(), loaded.processor))
            _loaded[key] = ModelPair(str(base), str(adapter_dir), quantization, *models)
        return _loaded[key]


def stream_pair(pair: ModelPair, image: Image.Image, question: str, seed: int = 0,
                **generation) -> Iterator[tuple[str, str]]:
    """Both answers to `question` about `image` as they grow, with the same settings.

    Greedy answers are generated at the same time. Sampled ones one after the other, each from `seed`, since
    two models sampling at once would share (and interleave) one random stream."""
    import torch

    from vlmpref.generate.chat import ChatSession

    settings = {**GENERATION_DEFAULTS, **generation}
    pieces: queue.Queue = queue.Queue()
    texts = ["", ""]

    def answer(side: int, model_and_processor: tuple) -> None:
        try:
            if settings["do_sample"]:
                torch.manual_seed(seed)
            session = ChatSession(*model_and_processor, [image], **settings)
            for piece in session.ask(question):
                pieces.put((side, piece))
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            pieces.put((side, exc))
        finally:
            pieces.put((side, None))

    workers = [threading.Thread(target=answer, args=(i, m), daemon=True) for i, m in enumerate((pair.base, pair.tuned))]
    together = not settings["do_sample"]
    for worker in workers if together else workers[:1]:
        worker.start()
    running = len(workers)
    while running:
        side, piece = pieces.get()
        if piece is None:
            running -= 1
            if not together and side == 0:
                workers[1].start()
            continue
        if isinstance(piece, Exception):
            raise piece
        texts[side] += piece
        yield texts[0].strip(), texts[1].strip()
    yield texts[0].strip(), texts[1].strip()


def decode_upload(path: str | Path, max_pixels: int) -> Image.Image:
    """An uploaded file as an RGB image, through the same checks as dataset images (pixel limit first)."""
    from vlmpref.data.images import ImageProblem, load_rgb

    try:
        return load_rgb(Path(path).read_bytes(), max_pixels=max_pixels)
    except ImageProblem as exc:
        raise VlmprefError(f"The uploaded image cannot be used: {exc}.") from None


# ---- ground truth and hallucinated objects


def parse_objects(text: str | list | None) -> list[str] | None:
    """Object names typed by the user ("circle, square") or stored with a row; None when nothing is known."""
    if text is None:
        return None
    if isinstance(text, list):
        names = [o if isinstance(o, str) else (o.get("name") or o.get("shape") or o.get("label") or "") for o in text]
    else:
        names = text.replace(";", ",").split(",")
    names = [n.strip() for n in names if n and n.strip()]
    return names or None


def vocabulary_for(objects: list[str] | None, choice: str = "auto") -> Vocabulary | None:
    """The vocabulary that reads these objects: `choice`, or with auto the built-in one that knows most."""
    if objects is None:
        return None
    if choice != "auto":
        return load_vocabulary(choice)
    return pick_vocabulary([{"objects": objects}], "auto")


def marked_answer(answer: str, objects: list[str] | None, vocab: Vocabulary | None) -> str:
    """The answer as HTML with hallucinated objects marked, and the objects it names that are not there."""
    if not answer:
        return '<p class="answer"><i>(no answer yet)</i></p>'
    if objects is None or vocab is None:
        return f'<p class="answer">{html.escape(answer)}</p>'
    truth = vocab.ground_truth(objects) or set()
    found = chair_answer(answer, truth, vocab)
    text = highlight(answer, found["hallucinated_spans"])
    if found["hallucinated"]:
        note = (f'<p class="tag">not in the image: <span class="hallucinated">'
                f'{html.escape(", ".join(found["hallucinated"]))}</span></p>')
    elif found["mentioned"]:
        note = '<p class="tag">every object named is in the image</p>'
    else:
        note = '<p class="tag">names no object</p>'
    return f'<p class="answer">{text}</p>{note}'
