"""The human report: rich tables, every number side by side, a one-line verdict.

Colour only on a terminal and never when NO_COLOR is set (non-empty); piped output
has no escape codes at all.
"""

from __future__ import annotations

import io
import math
import os
import sys

import numpy as np

MAX_ROWS_PER_VARIABLE = 8  # tensors with more elements show their worst one, plus a preview

STYLE = {"ok": "green", "fail": "bold red", "diag": "yellow", "dim": "dim"}


def make_console(file=None, *, force_plain: bool = False, width: int | None = None):
    from rich.console import Console

    file = file or sys.stdout
    plain = force_plain or bool(os.environ.get("NO_COLOR")) or not _isatty(file)
    return Console(file=file, color_system=None if plain else "auto", force_terminal=not plain and None,
                   width=width or (None if not plain else 120), highlight=False, soft_wrap=False,
                   emoji=False, markup=False)


def _isatty(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


def fmt(v) -> str:
    """A number with ten significant digits, or its name when not finite."""
    if v is None:
        return "—"
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.10g}"


def fmt_err(v) -> str:
    if v is None:
        return "—"
    v = float(v)
    if math.isnan(v):
        return "nan"
    if v == 0:
        return "0"
    return f"{v:.2e}"


def _entry(arr, idx):
    if arr is None:
        return None
    value = np.asarray(arr)[idx]
    return None if (isinstance(value, float) and math.isnan(value) and False) else value


def _preview(arr, n: int = 6) -> str:
    flat = np.asarray(arr, dtype=np.float64).reshape(-1)
    shown = ", ".join(fmt(v) if abs(v) >= 1e-3 or v == 0 or not math.isfinite(v) else f"{v:.4g}" for v in flat[:n])
    return f"[{shown}{', ...' if flat.size > n else ''}]"


def _index_label(name: str, idx: tuple) -> str:
    return f"{name}[{', '.join(map(str, idx))}]" if idx else name


def _rows_for(g):
    """(label, index) rows to show for one gradient: every element when few, else the worst."""
    shape = tuple(g.shape)
    count = int(np.prod(shape)) if shape else 1
    # a result may name its own entries (op Jacobians: "out[1] / x[1]")
    label = getattr(g, "label_for", None) or (lambda i: _index_label(g.wrt, i))
    if count <= MAX_ROWS_PER_VARIABLE:
        return [(label(idx), idx) for idx in np.ndindex(*shape)] if shape else [(label(()), ())]
    idx = tuple(g.worst_index or (0,) * len(shape))
    return [(label(idx) + " (worst)", idx)]


def _fd_cell(g, idx) -> str:
    if g.finite_difference is None:
        return "—"
    if g.fd_computed is not None and not bool(np.asarray(g.fd_computed)[idx]):
        return "(not sampled)"
    return fmt(np.asarray(g.finite_difference)[idx])


def _errors_at(g, idx):
    a = np.asarray(g.autograd)[idx]
    ref = g.symbolic if g.symbolic is not None else g.finite_difference
    if ref is None:
        return None, None
    r = np.asarray(ref)[idx]
    with np.errstate(all="ignore"):
        if a == r:
            return 0.0, 0.0
        abs_err = abs(a - r)
        return abs_err, (abs_err / abs(r) if r != 0 else math.inf)


def check_renderables(check):
    """Everything shown for one check, as rich renderables."""
    from rich.table import Table
    from rich.text import Text

    out = []
    head = Text()
    head.append(check.name, style="bold")
    extra = check.extra
    bits = [check.kind, check.dtype]
    if extra.get("loss"):
        bits.append(f"loss {extra['loss']} (target {_preview(extra['target']) if np.ndim(extra['target']) else fmt(extra['target'])})")
    if extra.get("fd_scheme"):
        bits.append(f"finite differences: {extra['fd_scheme']}")
    if extra.get("points_checked"):
        bits.append(f"worst of {extra['points_checked']} points")
    head.append("   " + " · ".join(bits), style=STYLE["dim"])
    out.append(head)
    point = " ".join(f"{k}={_preview(v) if np.ndim(v) else fmt(v)}" for k, v in check.point.items())
    if point:
        out.append(Text(f"at {point}"))
    value = check.value
    if value:
        line = Text("value  ")
        line.append(f"torch ({check.dtype}) {_value_text(value.get('torch'))}")
        if value.get("symbolic") is not None:
            line.append(f"   exact {_value_text(value.get('symbolic'))}")
        for key, label in (("reference", "reference"), ("float64", "float64")):
            if key == "reference" and value.get("symbolic") is not None:
                continue  # an op's --reference is its exact value, shown above
            if value.get(key) is not None:
                line.append(f"   {label} {_value_text(value.get(key))}")
        out.append(line)
    table = Table(show_header=True, header_style="bold", show_lines=False, pad_edge=False)
    for col, justify in (("d/d", "left"), ("autograd", "right"), ("symbolic", "right"),
                         ("finite diff", "right"), ("abs err", "right"), ("rel err", "right"), ("", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    for g in check.gradients:
        if g.autograd is None:  # not computed: the diagnostics below say why
            table.add_row(g.wrt, "—", "—", "—", "—", "—", Text("not run", style=STYLE["fail"]))
            continue
        for label, idx in _rows_for(g):
            a = np.asarray(g.autograd)[idx]
            s = None if g.symbolic is None else np.asarray(g.symbolic)[idx]
            abs_err, rel_err = _errors_at(g, idx)
            ok_here = g.passed or not _element_fails(g, idx)
            mark = Text("ok" if ok_here else "FAIL", style=STYLE["ok"] if ok_here else STYLE["fail"])
            table.add_row(label, fmt(a), fmt(s) if s is not None else "—", _fd_cell(g, idx),
                          fmt_err(abs_err), fmt_err(rel_err), mark)
    if check.gradients:  # an op that raised before any gradient has only its diagnostics to show
        out.append(table)
    for g in check.gradients:
        if g.autograd is None:
            continue
        count = int(np.prod(g.shape)) if g.shape else 1
        if count > MAX_ROWS_PER_VARIABLE:
            out.append(Text(f"  d/d{g.wrt} {list(g.shape)}: autograd {_preview(g.autograd)}; "
                            f"max abs err {fmt_err(g.max_abs_error)}, max rel err {fmt_err(g.max_rel_error)}, "
                            f"{g.failed_elements} of {count} out of tolerance (full numbers in --json)",
                            style=STYLE["dim"]))
        if g.formula:
            out.append(Text(f"  d/d{g.wrt} = {g.formula}"))
    hessian = extra.get("hessian")
    if hessian:
        out.append(_hessian_table(hessian))
    for d in check.diagnostics:
        line = Text("  ")
        line.append(d.code, style=STYLE["diag"])
        line.append(f": {d.message}")
        out.append(line)
    return out


def _element_fails(g, idx) -> bool:
    if g.passed:
        return False
    return tuple(idx) == tuple(g.worst_index or ())


def _value_text(v) -> str:
    if v is None:
        return "—"
    return _preview(v) if np.ndim(v) else fmt(v)


def _hessian_table(h):
    from rich.table import Table

    table = Table(title="Hessian (rows and columns in wrt order)", show_header=True, header_style="bold")
    n = np.asarray(h["autograd"]).shape[0]
    for col in ("entry", "autograd", "symbolic", "finite diff"):
        table.add_column(col, justify="right" if col != "entry" else "left", no_wrap=True)
    labels = _flat_labels(h)
    for i in range(n):
        for j in range(i, n):
            sym = h.get("symbolic")
            fdh = h.get("finite_difference")
            table.add_row(f"{labels[i]}, {labels[j]}", fmt(h["autograd"][i][j]),
                          fmt(sym[i][j]) if sym is not None else "—",
                          fmt(fdh[i][j]) if fdh is not None else "—")
            if table.row_count >= 36:
                return table
    return table


def _flat_labels(h) -> list[str]:
    n = np.asarray(h["autograd"]).shape[0]
    names = h.get("wrt") or []
    labels = list(h.get("labels") or [])
    if len(labels) == n:
        return labels
    if len(names) == n:
        return list(names)
    return [str(i) for i in range(n)]


def verdict_line(report):
    from rich.text import Text

    total = len(report.checks)
    failed = [c for c in report.checks if not c.passed]
    worst = 0.0
    for c in report.checks:
        for g in c.gradients:
            if math.isfinite(g.max_rel_error):
                worst = max(worst, g.max_rel_error)
    if not failed:
        text = Text("PASS", style=STYLE["ok"])
        text.append(f"  {total} check{'s' if total != 1 else ''} passed; gradients agree "
                    f"(worst relative error {fmt_err(worst)})")
        return text
    text = Text("FAIL", style=STYLE["fail"])
    names = ", ".join(c.name for c in failed[:5]) + (" ..." if len(failed) > 5 else "")
    text.append(f"  {len(failed)} of {total} check{'s' if total != 1 else ''} failed: {names}")
    return text


def render(report, console=None) -> None:
    """Print the report's tables and verdict on the console (stdout by default)."""
    console = console or make_console()
    for i, check in enumerate(report.checks):
        if i:
            console.print()
        for item in check_renderables(check):
            console.print(item)
    console.print()
    console.print(verdict_line(report))


def render_text(report, width: int = 120) -> str:
    """The table as plain text (for assertion messages and JUnit)."""
    buf = io.StringIO()
    render(report, make_console(buf, force_plain=True, width=width))
    return buf.getvalue()


def render_check_text(check, width: int = 120) -> str:
    buf = io.StringIO()
    console = make_console(buf, force_plain=True, width=width)
    for item in check_renderables(check):
        console.print(item)
    return buf.getvalue()
