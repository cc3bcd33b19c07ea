"""Rich consoles sized to where the output goes.

On a terminal rich wraps to the terminal's width. Sent to a file or a pipe (CI logs, `| tee`), rich would assume
80 columns and cut tables (the change column, the ✓) and wrap long lines; there the output is as wide as it needs.
`COLUMNS` set by the user still wins.
"""

from __future__ import annotations

import os

UNBOUNDED = 1000  # columns for a file or pipe: wider than any table vlmpref prints, so nothing is cut


def make_console(**kwargs):
    """A rich Console: the terminal's width on a terminal, else as wide as the content (see the module)."""
    from rich.console import Console

    columns = os.environ.get("COLUMNS", "")
    if "width" not in kwargs and columns.isdigit():  # read here: rich keeps the os.environ it was imported with
        kwargs["width"] = int(columns)
    console = Console(**kwargs)
    if "width" not in kwargs and not console.is_terminal:
        console.width = UNBOUNDED
    return console
