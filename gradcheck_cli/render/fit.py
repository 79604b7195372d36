"""Tables that fit the console without cutting a number or a verdict.

rich shrinks a table that is too wide by cutting its cells ("5.55e-1" for 5.55e-17,
"float6", "…").  Here a table is built from Columns, each with a rank: when the table is
too wide, the columns of the highest rank (the least important) are dropped first, then
a lighter frame is tried, and when even the essential columns do not fit, `fit` returns
None and the caller folds the rows into lines of "name value" pairs (fold_pairs).
Columns marked `flex` hold text that may wrap (a check's name, its notes): they shrink to
`flex` columns before anything is dropped.  Every other cell is never wrapped or cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len  # only the text renderers (table, summary) import this module

FRAMES = ("heavy", "plain")  # tried in this order: rich's heavy box, then a light one
MAX_WORD = 24  # a flex column is never made narrower than its longest word, up to this


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    justify: str = "right"
    rank: int = 0  # 0: never dropped; higher ranks are dropped first
    flex: int = 0  # > 0: text that may wrap, down to this many columns


def build_table(columns: list, rows: list, frame: str, flex_widths: dict | None = None):
    """A rich Table of `rows` (dicts keyed by column key, holding str or rich Text);
    `flex_widths`: the width of each flex column (else its minimum)."""
    from rich import box
    from rich.table import Table

    if frame == "heavy":
        table = Table(show_header=True, header_style="bold", show_lines=False, pad_edge=False)
    else:
        table = Table(show_header=True, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                      padding=(0, 1, 0, 0))
    for c in columns:
        if c.flex:
            width = (flex_widths or {}).get(c.key, c.flex)
            table.add_column(c.header, justify=c.justify, overflow="fold", width=width)
        else:
            table.add_column(c.header, justify=c.justify, no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*(row.get(c.key, "") for c in columns))
    return table


def natural_width(table) -> int:
    """The width the table takes when nothing is wrapped or cut."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=100_000, color_system=None)
    return console.measure(table).maximum


def widest_rows(columns: list, rows: list) -> list:
    """The rows that hold some column's widest cell, in their order.  A table of these
    measures exactly as wide as one of all rows (a column is as wide as its widest cell,
    a flex column as its set width), so fit() measures a few rows, not hundreds."""
    keep = set()
    for c in columns:
        if rows and not c.flex:
            keep.add(max(range(len(rows)), key=lambda i: _cell_width(rows[i].get(c.key, ""))))
    return [rows[i] for i in sorted(keep)]


def _cell_width(cell) -> int:
    text = cell.plain if hasattr(cell, "plain") else str(cell)
    return max((cell_len(line) for line in text.split("\n")), default=0)


def _longest_word(cell) -> int:
    text = cell.plain if hasattr(cell, "plain") else str(cell)
    return max((len(w) for w in text.split()), default=0)


def flex_minimums(columns: list, rows: list) -> dict:
    """A flex column's least width: its `flex`, or its longest word (up to MAX_WORD), so
    that a code or a name is wrapped between words, not cut inside one."""
    return {c.key: max(c.flex, min(MAX_WORD, max([_longest_word(r.get(c.key, "")) for r in rows] + [0])))
            for c in columns if c.flex}


def _share(columns: list, rows: list, budget: int, least: dict) -> dict:
    """Widths of the flex columns: each its natural width when all fit in `budget`, else
    the room shared out evenly (water-filling), never below a column's minimum."""
    want = {c.key: max([_cell_width(c.header)] + [_cell_width(r.get(c.key, "")) for r in rows]) for c in columns}
    widths = {c.key: min(least[c.key], want[c.key]) for c in columns}
    room = budget - sum(widths.values())
    while room > 0:
        open_ = [k for k in widths if widths[k] < want[k]]
        if not open_:
            break
        for k in open_:
            if room <= 0:
                break
            widths[k] += 1
            room -= 1
    return widths


def fit(columns: list, rows: list, width: int):
    """The widest table of `rows` that fits `width` without cutting a cell, dropping the
    least important columns first; None when even the essential ones do not fit."""
    ranks = sorted({c.rank for c in columns if c.rank}, reverse=True)
    sample = widest_rows(columns, rows)  # every column's widest row: measures as all the rows do
    all_minimums = flex_minimums([c for c in columns if c.flex], rows)
    for frame in FRAMES:
        kept = list(columns)
        for drop in [None] + ranks:
            if drop is not None:
                kept = [c for c in kept if c.rank != drop]
            flex = [c for c in kept if c.flex]
            minimums = {c.key: all_minimums[c.key] for c in flex}
            least = natural_width(build_table(kept, sample, frame, minimums))
            if least <= width:
                budget = width - least + sum(minimums.values())
                return build_table(kept, rows, frame, _share(flex, rows, budget, minimums))
    return None


def fold_pairs(pairs: list, width: int, indent: str = "  ") -> list:
    """'name value' pairs packed into lines of at most `width` columns (a pair is never
    split; one longer than the line stands alone)."""
    lines, line = [], indent
    for name, value in pairs:
        item = f"{name} {value}" if name else str(value)
        if line.strip() and len(line) + 3 + len(item) > width:
            lines.append(line.rstrip())
            line = indent
        line += (item if not line.strip() else "   " + item)
    if line.strip():
        lines.append(line.rstrip())
    return lines
