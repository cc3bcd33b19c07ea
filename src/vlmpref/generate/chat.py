"""`vlmpref chat`: talk about one or more images with a base model and an optional adapter, in the terminal.

    vlmpref chat --adapter runs/dpo --image photo.jpg      # the base model and quantization come from the run

Answers stream token by token. The conversation keeps its history, so follow-up questions work; the images
belong to the first question. Commands:

    /image PATH [PATH ...]   talk about other image(s) (starts a new conversation)
    /reset                   forget the conversation, keep the images
    /quit                    leave (so do Ctrl-D and an empty line at end of input)
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from threading import Thread
from typing import TYPE_CHECKING, Iterator, Optional, TextIO

from vlmpref.config import Quantization
from vlmpref.errors import VlmprefError

if TYPE_CHECKING:
    from PIL import Image

HELP = "/image PATH [PATH ...] switches images, /reset forgets the conversation, /quit leaves."


@dataclass
class ChatConfig:
    """Options of `vlmpref chat`."""

    model: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "Base model: Hub id or local folder; auto takes the one the --adapter was trained on."})
    adapter: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "PEFT adapter folder to apply (from vlmpref train, or a checkpoint folder inside it)."})
    image: Optional[list[str]] = field(default=None, metadata={"path": "in", 
        "help": "Image file(s) to talk about; /image PATH switches them during the chat."})
    quantization: Optional[Quantization] = field(default=None, metadata={
        "help": "Load the base as none, 8bit or 4bit; auto uses the adapter's training setting, else none."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest answer, in tokens."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (with --do-sample)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling mass (with --do-sample)."})
    config: Optional[str] = field(default=None, metadata={"path": "in", "help": "YAML file with these options; flags override it."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code to run."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights, which can run code."})

    def __post_init__(self):
        if not self.model and not self.adapter:
            raise VlmprefError("No model given; pass --model with a Hub id or a local folder, or --adapter with a "
                               "folder written by vlmpref train.")
        if self.max_new_tokens <= 0:
            raise VlmprefError(f"--max-new-tokens must be positive, not {self.max_new_tokens}.")


def load_images(paths: list[str]) -> list[Image.Image]:
    """The images of --image or /image, read relative to the current folder."""
    from vlmpref.generate import load_images as load

    return load(paths, flag="the image")


class ChatSession:
    """A conversation: the images, the turns so far, and streamed answers."""

    def __init__(self, model, processor, images: list[Image.Image] | None = None, **generate_kwargs):
        self.model, self.processor = model, processor
        self.images = list(images or [])
        self.history: list[dict] = []
        self.generate_kwargs = generate_kwargs

    def set_images(self, images: list[Image.Image]) -> None:
        """New images start a new conversation: earlier answers were about the old ones."""
        self.images = list(images)
        self.history = []

    def reset(self) -> None:
        self.history = []

    def _user_turn(self, question: str) -> dict:
        images = [] if self.history else [{"type": "image"}] * len(self.images)
        return {"role": "user", "content": images + [{"type": "text", "text": question}]}

    def ask(self, question: str) -> Iterator[str]:
        """Stream the answer to `question`; the finished answer joins the history."""
        from transformers import TextIteratorStreamer

        from vlmpref.generate.answer import model_device, model_dtype, processor_inputs

        messages = self.history + [self._user_turn(question)]
        inputs = processor_inputs(self.processor, [messages], [self.images]).to(model_device(self.model))
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model_dtype(self.model))
        tokenizer = self.processor.tokenizer
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(self.generate_kwargs)
        if not kwargs.get("do_sample"):
            kwargs.pop("temperature", None)
            kwargs.pop("top_p", None)
        thread = Thread(target=self.model.generate, daemon=True,
                        kwargs=dict(**inputs, streamer=streamer, pad_token_id=tokenizer.pad_token_id, **kwargs))
        thread.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            yield piece
        thread.join()
        self.history = messages + [{"role": "assistant", "content": [{"type": "text", "text": "".join(pieces).strip()}]}]


def chat_loop(session: ChatSession, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Read questions and commands line by line; returns the number of questions answered."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout  # at call time: a redirected sys.stdin counts
    interactive = stdin.isatty() and stdout.isatty()
    answered = 0
    while True:
        if interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
            try:
                line = input("you> ")
            except EOFError:
                stdout.write("\n")
                break
        else:
            line = stdin.readline()
            if not line:  # end of input
                break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command in ("/quit", "/exit", "/q"):
                break
            if command == "/reset":
                session.reset()
                stdout.write("(conversation cleared)\n")
            elif command == "/image":
                paths = shlex.split(rest)
                if not paths:
                    stdout.write("usage: /image PATH [PATH ...]\n")
                    continue
                try:
                    session.set_images(load_images(paths))
                except VlmprefError as exc:
                    stdout.write(f"error: {exc}\n")
                    continue
                stdout.write(f"(now talking about {', '.join(paths)}; new conversation)\n")
            else:
                stdout.write(f"unknown command {command}; {HELP}\n")
            stdout.flush()
            continue
        stdout.write("model> ")
        stdout.flush()
        try:
            for piece in session.ask(line):
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        stdout.write("\n")
        stdout.flush()
        answered += 1
    return answered


def run_chat(cfg: ChatConfig, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    from vlmpref.models.inference import load_for_inference

    images = load_images(cfg.image) if cfg.image else []
    loaded = load_for_inference(cfg.model, cfg.adapter, cfg.quantization, trust_remote_code=cfg.trust_remote_code,
                                allow_pickle=cfg.allow_pickle)
    model = loaded.model.eval()
    session = ChatSession(model, loaded.processor, images, max_new_tokens=cfg.max_new_tokens,
                          do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p)
    about = f" about {', '.join(cfg.image)}" if cfg.image else " (no image yet)"
    adapter = f" + {cfg.adapter}" if cfg.adapter else ""
    quantized = f" ({loaded.quantization})" if loaded.quantization != "none" else ""
    stdout.write(f"Chatting with {loaded.base}{quantized}{adapter}{about}. {HELP}\n")
    stdout.flush()
    return chat_loop(session, stdin, stdout)
