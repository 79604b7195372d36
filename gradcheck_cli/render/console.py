"""The console the tables are printed on: its width and whether it gets colour.

* width: an explicit width, else COLUMNS (also when stdout is a pipe: `COLUMNS=80
  gradcheck ... | less`), else the terminal's, else 120 for a pipe or a file;
* colour: FORCE_COLOR (non-empty) forces it, also into a pipe; else NO_COLOR (non-empty,
  no-color.org) turns it off; else only a terminal gets it.  No escape code at all is
  written where colour is off.
"""

from __future__ import annotations

import os
import sys

PIPE_WIDTH = 120  # the width of a table written to a pipe or a file without COLUMNS
MIN_WIDTH = 20


def isatty(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


def env_width() -> int | None:
    """COLUMNS as a number of columns, when it is one."""
    raw = os.environ.get("COLUMNS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return max(MIN_WIDTH, int(raw))
    return None


def colour_wanted(file) -> bool:
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("NO_COLOR"):
        return False
    return isatty(file)


def make_console(file=None, *, force_plain: bool = False, width: int | None = None):
    """A rich Console on `file` (stdout by default) following the rules above;
    `force_plain`: never colour (text for assertion messages, JUnit)."""
    from rich.console import Console

    file = file or sys.stdout
    colour = not force_plain and colour_wanted(file)
    tty = isatty(file)
    width = width or env_width() or (None if tty else PIPE_WIDTH)
    if colour:
        return Console(file=file, color_system="auto" if tty else "standard", force_terminal=True, width=width,
                       highlight=False, soft_wrap=False, emoji=False, markup=False)
    return Console(file=file, color_system=None, force_terminal=False, no_color=True, width=width,
                   highlight=False, soft_wrap=False, emoji=False, markup=False)
