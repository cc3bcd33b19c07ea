"""`vlmpref chat`: streamed answers equal batch generation, history is kept, driven through stdin and a pty."""

import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from vlmpref.generate import generate_batch, user_prompt
from vlmpref.generate.chat import ChatSession, chat_loop
from vlmpref.models import load_model, load_processor


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for color in ("red", "blue"):
        Image.new("RGB", (64, 64), color).save(folder / f"{color}.png")
    return folder


@pytest.fixture(scope="module")
def session_parts(tiny_model_dir):
    return load_model(str(tiny_model_dir)), load_processor(str(tiny_model_dir))


def test_streamed_answer_equals_batch_generation(session_parts):
    model, processor = session_parts
    image = Image.new("RGB", (64, 64), "red")
    session = ChatSession(model, processor, [image], max_new_tokens=8, do_sample=False)
    streamed = "".join(session.ask("What color is it?")).strip()
    assert streamed == generate_batch(model, processor, [user_prompt("What color is it?")], [[image]],
                                      max_new_tokens=8)[0]


def test_history_holds_the_image_once_and_new_images_restart(session_parts):
    model, processor = session_parts
    session = ChatSession(model, processor, [Image.new("RGB", (64, 64), "red")], max_new_tokens=4)
    list(session.ask("What color is it?"))
    list(session.ask("And its shape?"))
    roles = [m["role"] for m in session.history]
    assert roles == ["user", "assistant", "user", "assistant"]
    parts = [p["type"] for m in session.history for p in m["content"]]
    assert parts.count("image") == 1 and session.history[0]["content"][0]["type"] == "image"
    session.set_images([Image.new("RGB", (64, 64), "blue")])
    assert session.history == []


def test_loop_reads_questions_and_commands(session_parts, images):
    model, processor = session_parts
    session = ChatSession(model, processor, [], max_new_tokens=3)
    stdin = io.StringIO(f"Hello?\n/image {images / 'red.png'}\nWhat color?\n/image nowhere.png\n/oops\n/quit\n"
                        "never asked\n")
    stdout = io.StringIO()
    assert chat_loop(session, stdin, stdout) == 2
    out = stdout.getvalue()
    assert out.count("model> ") == 2 and "now talking about" in out
    assert "error: Cannot use the image" in out and "unknown command /oops" in out
    assert len(session.images) == 1 and len(session.history) == 2


def _env():
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow  # the pty test below runs the same command; this one pipes a whole script in
def test_chat_command_through_stdin(tiny_model_dir, images):
    script = f"What color is it?\nAnd now?\n/image {images / 'blue.png'}\nWhich color?\n/quit\n"
    result = subprocess.run([sys.executable, "-m", "vlmpref", "chat", "--model", str(tiny_model_dir), "--image",
                             str(images / "red.png"), "--max-new-tokens", "4"], input=script, capture_output=True,
                            text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Chatting with {tiny_model_dir} about {images / 'red.png'}.")
    assert result.stdout.count("model> ") == 3


def test_chat_command_through_a_pseudo_terminal(tiny_model_dir, images):
    import pty
    import select

    main_fd, sub_fd = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "vlmpref", "chat", "--model", str(tiny_model_dir), "--image",
                                str(images / "red.png"), "--max-new-tokens", "4"], stdin=sub_fd, stdout=sub_fd,
                               stderr=subprocess.PIPE, env=_env(), close_fds=True)
    os.close(sub_fd)

    def read_until(marker: bytes, timeout: float = 120) -> bytes:
        seen = b""
        while marker not in seen:
            ready, _, _ = select.select([main_fd], [], [], timeout)
            assert ready, f"no {marker!r} after {seen!r}"
            seen += os.read(main_fd, 4096)
        return seen

    try:
        assert b"Chatting with" in read_until(b"you> ")
        os.write(main_fd, b"What color is it?\n")
        answer = read_until(b"you> ")
        assert b"model> " in answer
        os.write(main_fd, b"/quit\n")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill() if process.poll() is None else None
        os.close(main_fd)
