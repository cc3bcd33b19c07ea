"""What every tab of the web UI shares: Gradio imported offline, the page's CSS, and small helpers.

Importing this module sets `offline_environment()` first, so Gradio's analytics and version check never
start, whatever the environment said.
"""

from __future__ import annotations

import functools
import inspect

from vlmpref.errors import VlmprefError
from vlmpref.ui import offline_environment
from vlmpref.ui.folders import Folders

offline_environment()  # before Gradio is imported: its analytics read the environment at import and start
import gradio as gr  # noqa: E402

CSS = """
.answer{font-size:1.05rem;line-height:1.5;margin:.2rem 0}
mark.h{background:#ffd7d7;color:#b00020;font-weight:600;padding:0 .15rem;border-radius:3px}
.hallucinated{color:#b00020;font-weight:600}.tag{font-size:.85rem;color:#666;margin:.1rem 0}
.ok{color:#1a7f37}.no{color:#c62828}
table.examples{border-collapse:collapse;width:100%;font-size:.9rem}
table.examples td,table.examples th{border-bottom:1px solid #e5e5e5;padding:.35rem .5rem;vertical-align:top;
text-align:left}
table.examples img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;border:1px solid #ddd}
td.outcome{white-space:nowrap}.count{color:#555}
#train-estimate-out textarea{font-family:ui-monospace,Consolas,monospace;font-size:.8rem;line-height:1.25}
#compare-image img{width:100%;height:100%;object-fit:contain;image-rendering:pixelated}
"""


def guard(fn):
    """Show a user's mistake (VlmprefError) as a message in the page instead of a failed request."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except VlmprefError as exc:
                raise gr.Error(str(exc)) from None
        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VlmprefError as exc:
            raise gr.Error(str(exc)) from None
    return wrapper


def choices(folders: Folders, paths) -> list[tuple[str, str]]:
    return [(folders.show(p), str(p)) for p in paths]


def pair_choices(folders: Folders, found) -> list[tuple[str, str]]:
    """Evaluations found side by side, as "before|after" values."""
    return [(f"{folders.show(b.parent)}: {b.name} → {a.name}", f"{b}|{a}") for b, a in folders.eval_pairs(found)]
