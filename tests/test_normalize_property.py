"""Property: whatever a row holds, the normalizer returns a usable row or the promised error, never a crash.

Promised errors: RowProblem / ImageProblem for one row (recorded as its set-aside reason); VlmprefError for a
whole dataset that cannot be read. Anything else escaping is a bug hypothesis will shrink to a small example.
"""

import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmpref.data import load_preference_data
from vlmpref.data.images import ImageProblem
from vlmpref.data.normalize import RowProblem, normalize_row
from vlmpref.errors import VlmprefError

COLUMNS = ("images", "prompt", "chosen", "rejected")


def _encoded(image, fmt):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


_MODES = st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I", "F", "CMYK"])


@st.composite
def pil_images(draw):
    mode = draw(_MODES)
    size = (draw(st.integers(0, 12)), draw(st.integers(0, 12)))
    return Image.new(mode, size)


@st.composite
def image_payloads(draw):
    """What a dataset may hold for an image: good and broken files, dicts, PIL images, paths, junk."""
    image = Image.new(draw(st.sampled_from(["RGB", "RGBA", "L", "P", "I;16"])),
                      (draw(st.integers(1, 10)), draw(st.integers(1, 10))))
    fmt = draw(st.sampled_from(["PNG", "TIFF"] if image.mode == "I;16" else ["PNG", "GIF", "BMP", "TIFF"]))
    data = _encoded(image, fmt)
    cut = draw(st.integers(0, len(data)))
    flips = draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=4))
    mangled = bytearray(data[:cut] if draw(st.booleans()) else data)
    for at, value in flips:
        if at < len(mangled):
            mangled[at] = value
    return draw(st.one_of(
        st.just(data), st.just(bytes(mangled)), st.binary(max_size=64),
        st.just({"bytes": data, "path": None}), st.just({"bytes": bytes(mangled), "path": None}),
        st.fixed_dictionaries({"bytes": st.one_of(st.none(), st.binary(max_size=16), st.text(max_size=5)),
                               "path": st.one_of(st.none(), st.text(max_size=20), st.integers())}),
        pil_images(),
        st.sampled_from(["good.png", "missing.png", "../outside.png", "/etc/passwd", "~nobody-here/x.png",
                         "a\x00b.png", "x" * 5000, "", "   ", "sub/../good.png"]),
        st.text(max_size=30),
    ))


def _scalars():
    return st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                     st.binary(max_size=20))


_anything = st.recursive(_scalars(), lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)

_roles = st.one_of(st.sampled_from(["user", "assistant", "system"]), _anything)
_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=30), _anything)}),
    st.fixed_dictionaries({"type": st.just("image")}),
    st.dictionaries(st.sampled_from(["type", "text", "image"]), _anything, max_size=3),
    _anything,
)
_messages = st.lists(st.fixed_dictionaries({"role": _roles,
                                            "content": st.one_of(st.text(max_size=30), st.lists(_parts, max_size=4),
                                                                 _anything)}),
                     max_size=3)
_texts = st.one_of(st.text(max_size=40), _messages, _anything)


@st.composite
def random_rows(draw):
    return {"images": draw(st.one_of(st.lists(image_payloads(), max_size=3), image_payloads(), st.none(),
                                     _anything)),
            "prompt": draw(_texts), "chosen": draw(_texts), "rejected": draw(_texts)}


@st.composite
def good_payloads(draw):
    image = Image.new(draw(st.sampled_from(["RGB", "RGBA", "L", "P", "CMYK"])),
                      (draw(st.integers(1, 10)), draw(st.integers(1, 10))))
    data = _encoded(image, "TIFF" if image.mode == "CMYK" else "PNG")
    return draw(st.sampled_from([data, {"bytes": data, "path": None}, image, "good.png", "sub/../good.png"]))


@st.composite
def plausible_rows(draw):
    """Rows close to valid, so that the deeper checks (placeholders, images, answers) are reached often."""
    images = draw(st.lists(st.one_of(good_payloads(), good_payloads(), image_payloads()), max_size=2))
    question = draw(st.text(min_size=1, max_size=30))
    if draw(st.booleans()):
        placeholders = draw(st.sampled_from([len(images), len(images), 0, len(images) + 1]))
        prompt = [{"role": "user", "content": [{"type": "image"}] * placeholders + [{"type": "text", "text": question}]}]
    else:
        prompt = question
    chosen = draw(st.text(min_size=1, max_size=30))
    rejected = draw(st.one_of(st.text(min_size=1, max_size=30), st.just(chosen)))
    if draw(st.booleans()):
        chosen = [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}]
    return {"images": images, "prompt": prompt, "chosen": chosen, "rejected": rejected}


rows = lambda: st.one_of(random_rows(), plausible_rows(), plausible_rows())  # noqa: E731


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("property")
    Image.new("RGB", (6, 4), (1, 2, 3)).save(path / "good.png")
    (path / "sub").mkdir()
    return path.resolve()


def _check_usable(row: dict) -> None:
    """What a returned row promises: RGB images matching the placeholders, text turns, distinct answers."""
    placeholders = sum(p["type"] == "image" for m in row["prompt"] for p in m["content"])
    assert placeholders == len(row["images"])
    assert all(image.mode == "RGB" and min(image.size) > 0 for image in row["images"])
    assert row["prompt"][-1]["role"] == "user"
    for answer in (row["chosen"], row["rejected"]):
        assert answer and all(m["role"] == "assistant" for m in answer)
        assert all(p["type"] == "text" and isinstance(p["text"], str) and p["text"].strip()
                   for m in answer for p in m["content"])
    json.dumps([row["prompt"], row["chosen"], row["rejected"]]).encode("utf-8")  # storable as Arrow strings


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(row=rows())
def test_normalize_row_returns_a_usable_row_or_the_promised_error(row, folder):
    try:
        out = normalize_row(row, COLUMNS, base=folder)
    except (RowProblem, ImageProblem) as exc:
        assert str(exc) and "\n" not in str(exc)
        event(type(exc).__name__)
    else:
        _check_usable(out)
        event(f"usable, {len(out['images'])} image(s)")


_json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False),
                                      st.text(max_size=12)),
                            lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                            max_leaves=8)
_json_rows = st.lists(st.fixed_dictionaries(
    {"image": st.one_of(st.just("good.png"), st.sampled_from(["good.png", "missing.png", "../x.png"]), _json_values),
     "question": st.one_of(st.text(min_size=1, max_size=20), _json_values),
     "chosen": st.one_of(st.text(min_size=1, max_size=20), _json_values),
     "rejected": st.one_of(st.text(min_size=1, max_size=20), _json_values)},
    optional={"extra": _json_values}), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(lines=_json_rows)
def test_a_jsonl_file_of_random_rows_is_fully_accounted_for(lines, folder):
    """Through the whole loader (Arrow's JSON reader, the multi-process map): every row is used or set aside
    with a reason, or the file is refused with one VlmprefError sentence."""
    path = Path(folder) / "random.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    try:
        data = load_preference_data(str(path), num_proc=1)
    except VlmprefError as exc:
        assert str(exc) and "\n" not in str(exc)
        event("refused as a whole")
        return
    event(f"{len(data.dataset)} of {len(lines)} rows usable")
    assert data.total == len(lines)
    assert sorted(list(data.dataset["row_id"]) + list(data.set_aside["row_id"])) == list(range(len(lines)))
    assert all(data.set_aside["problem"])
    for row in data.dataset:
        _check_usable(row)
