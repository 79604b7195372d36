"""A rich table written straight to text where that text is exactly what rich would print.

rich lays out every cell of every row (~0.45 ms a row: 0.09 s for a 200-check `gradcheck
run` summary, 0.9 s for 2,000) where plain lines cost microseconds.  The common case of a
long summary in a CI log -- no colour, rich's default heavy-header box, every cell on one
line inside its column -- is written here; anything else (colour, another frame, a cell that
would wrap, a table wider than the console, an ASCII-only stream) returns None and rich
prints it.  tests/test_table_render.py compares the two on random tables.
"""

from __future__ import annotations

from rich.text import Text  # only the renderers import this module, and they use rich


def _plain(cell) -> str | None:
    """A cell's text when it has no layout of its own (a str, or a Text without justify
    or overflow settings), else None."""
    if isinstance(cell, str):
        return cell
    if isinstance(cell, Text) and cell.justify is None and cell.overflow is None and not cell.end.strip("\n"):
        return cell.plain
    return None


def table_text(table, console) -> str | None:
    """The lines rich would print for `table` on `console`, or None (see the module doc)."""
    from rich import box
    from rich.cells import cell_len
    from rich.table import Table

    if not isinstance(table, Table) or console.color_system is not None or console.options.ascii_only or console.legacy_windows:
        return None
    if (table.box is not box.HEAVY_HEAD or not table.show_header or table.show_lines or table.show_footer
            or table.pad_edge or table.expand or table.title or table.caption or table.padding != (0, 1, 0, 1)
            or table.width is not None or table.min_width is not None or not table.show_edge or table.leading):
        return None
    columns = table.columns
    if not columns or table.row_count == 0:
        return None
    texts = []
    for column in columns:
        if column.justify not in ("left", "right") or column.ratio or column.min_width or column.max_width \
                or column.vertical != "top":
            return None
        cells = [_plain(c) for c in [column.header, *column.cells]]
        if any(c is None or c != c.strip() or any(ch < " " or ch == "\x7f" for ch in c) for c in cells):
            return None  # a line break, a tab, a control character or edge spaces: rich's own handling
        texts.append(cells)
    widths = []
    for column, cells in zip(columns, texts):
        natural = max(cell_len(c) for c in cells)
        if column.width is not None and natural > column.width:
            return None  # rich would wrap it
        widths.append(column.width if column.width is not None else natural)
    last = len(columns) - 1
    pads = [(0 if i == 0 else 1, 0 if i == last else 1) for i in range(len(columns))]
    if sum(w + left + right for w, (left, right) in zip(widths, pads)) + len(columns) + 1 > console.width:
        return None  # rich would shrink it

    def line(row: int, edge: str, sep: str) -> str:
        parts = []
        for cells, column, width, (left, right) in zip(texts, columns, widths, pads):
            text = cells[row]
            room = " " * (width - cell_len(text))
            body = text + room if column.justify == "left" else room + text
            parts.append(" " * left + body + " " * right)
        return edge + sep.join(parts) + edge

    def rule(left: str, fill: str, cross: str, right: str) -> str:
        return left + cross.join(fill * (w + a + b) for w, (a, b) in zip(widths, pads)) + right

    lines = [rule("┏", "━", "┳", "┓"), line(0, "┃", "┃"), rule("┡", "━", "╇", "┩")]
    lines += [line(i, "│", "│") for i in range(1, len(texts[0]))]
    lines.append(rule("└", "─", "┴", "┘"))
    return "\n".join(lines) + "\n"


def print_table(console, table) -> None:
    """console.print(table), by table_text where it applies."""
    text = table_text(table, console)
    if text is None:
        console.print(table)
    else:
        console.file.write(text)
