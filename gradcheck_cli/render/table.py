"""The human report: rich tables, every number side by side, a one-line verdict.

Every element out of tolerance is marked FAIL, with counts ("4 of 4 out of tolerance");
the error columns say which reference they compare against ("vs symbolic", "vs finite
differences"), and a reference that disagrees with the other one is flagged (!).  No
number or verdict is ever cut: a table too wide for the console drops its least
important columns first, and folds its rows into lines when even the essential ones do
not fit (fit.py).  Colour and width follow console.py (COLUMNS, FORCE_COLOR, NO_COLOR).
"""

from __future__ import annotations

import io
import itertools
import math

import numpy as np

from gradcheck_cli.render.console import make_console  # noqa: F401  (the renderers' console, re-exported)
from gradcheck_cli.render.fit import Column, fit, fold_pairs
from gradcheck_cli.render.rows import (FLAG, count_line, fmt, fmt_err, gradient_rows, has_both,  # noqa: F401
                                       primary_reference)

STYLE = {"ok": "green", "fail": "bold red", "diag": "yellow", "dim": "dim",
         "failure": "bold red", "warning": "yellow", "info": "dim"}
SEVERITY_ORDER = {"failure": 0, "warning": 1, "info": 2}


def _preview(arr, n: int = 6) -> str:
    flat = np.asarray(arr, dtype=np.float64).reshape(-1)
    shown = ", ".join(fmt(v) if abs(v) >= 1e-3 or v == 0 or not math.isfinite(v) else f"{v:.4g}" for v in flat[:n])
    return f"[{shown}{', ...' if flat.size > n else ''}]"


def _columns(check) -> list:
    """The table's columns; rank says which go first when the console is narrow."""
    primary = primary_reference(check)
    both = has_both(check)
    vs = "vs symbolic" if primary == "symbolic" else "vs finite\ndifferences"
    cols = [Column("label", "d/d", "left"), Column("autograd", "autograd")]
    if primary == "symbolic":
        cols.append(Column("symbolic", "symbolic"))
    if primary == "finite_difference" or both:
        cols.append(Column("finite_difference", "finite\ndifferences", rank=1 if primary == "symbolic" else 0))
    if primary != "none":
        cols += [Column("abs_primary", f"abs err\n{vs}", rank=2), Column("rel_primary", f"rel err\n{vs}")]
    if both:
        cols.append(Column("rel_secondary", "rel err\nvs finite\ndifferences", rank=3))
    cols.append(Column("verdict", "", "left"))
    return cols


def _verdict_style(verdict: str) -> str:
    return STYLE["ok"] if verdict == "ok" else STYLE["fail"]


def _styled(rows: list) -> list:
    from rich.text import Text

    return [{**r, "verdict": Text(r.get("verdict", ""), style=_verdict_style(r.get("verdict", "")))}
            for r in rows]


def _folded(columns: list, rows: list, width: int) -> list:
    """Rows as lines of 'name value' pairs, for a console too narrow for any table."""
    from rich.text import Text

    out = []
    first = columns[0].key
    for r in rows:
        head = Text(f"{r[first]}  ")
        if "verdict" in r:
            head.append(r["verdict"], style=_verdict_style(r["verdict"]))
        out.append(head)
        pairs = [(c.header.replace("\n", " "), r[c.key]) for c in columns
                 if c.key not in (first, "verdict") and c.key in r]
        out += [Text(line, no_wrap=True, overflow="ignore") for line in fold_pairs(pairs, width)]
    return out


def gradient_table(check, width: int) -> list:
    """The gradients' rows as a table that fits `width` (or folded lines), the legend of
    the flag, and the count lines."""
    from rich.text import Text

    primary = primary_reference(check)
    rows = [r for g in check.gradients for r in gradient_rows(g, primary)]
    columns = _columns(check)
    table = fit(columns, _styled(rows), width)
    out = [table] if table is not None else _folded(columns, rows, width)
    if any(r.get("flagged") for r in rows):
        out.append(Text(f"  {FLAG} finite differences and symbolic disagree here by more than the tolerance "
                        "(see reference_disagreement)", style=STYLE["warning"]))
    for g in check.gradients:
        line = count_line(g, primary)
        if line:
            out.append(Text("  " + line, style=STYLE["dim"] if g.passed else STYLE["fail"]))
        if g.formula:
            out.append(Text(f"  d/d{g.wrt} = {g.formula}"))
    return out


def _heading(check) -> list:
    from rich.text import Text

    out = []
    head = Text()
    head.append(check.name, style="bold")
    extra = check.extra
    bits = [check.kind, check.dtype]
    if extra.get("loss"):
        target = extra["target"]
        bits.append(f"loss {extra['loss']} (target {_value_text(target)})")
    if extra.get("fd_scheme"):
        bits.append(f"finite differences: {extra['fd_scheme']}")
    if extra.get("points_checked"):
        bits.append(f"worst of {extra['points_checked']} points")
    head.append("   " + " · ".join(bits), style=STYLE["dim"])
    out.append(head)
    point = " ".join(f"{k}={_value_text(v)}" for k, v in check.point.items())
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
    return out


def check_renderables(check, width: int = 120) -> list:
    """Everything shown for one check, as rich renderables fitting `width` columns:
    the heading, the gradients' table, the Hessian, then the diagnostics, failures first."""
    from rich.text import Text

    out = _heading(check)
    if check.gradients:  # an op that raised before any gradient has only its diagnostics to show
        out += gradient_table(check, width)
    hessian = check.extra.get("hessian")
    if hessian:
        out += _hessian_renderables(hessian, width)
    for d in sorted(check.diagnostics, key=lambda d: SEVERITY_ORDER.get(d.severity, 1)):
        line = Text("  ")
        line.append(f"[{d.severity}] {d.code}", style=STYLE.get(d.severity, STYLE["diag"]))
        line.append(f": {d.message}")
        out.append(line)
    return out


def _value_text(v) -> str:
    if v is None:
        return "—"
    return _preview(v) if np.ndim(v) else fmt(v)


def _hessian_renderables(h, width: int) -> list:
    """--order 2: the Hessian's upper triangle (at most 36 entries), fitting `width`."""
    from rich.text import Text

    if h.get("autograd") is None:
        return []
    n = np.asarray(h["autograd"]).shape[0]
    labels = _flat_labels(h)
    sym, fdh = h.get("symbolic"), h.get("finite_difference")
    upper = itertools.islice(((i, j) for i in range(n) for j in range(i, n)), 36)
    rows = [{"entry": f"{labels[i]}, {labels[j]}", "autograd": fmt(h["autograd"][i][j]),
             "symbolic": fmt(sym[i][j]) if sym is not None else "—",
             "finite_difference": fmt(fdh[i][j]) if fdh is not None else "—"} for i, j in upper]
    columns = [Column("entry", "entry", "left"), Column("autograd", "autograd"), Column("symbolic", "symbolic"),
               Column("finite_difference", "finite\ndifferences", rank=1)]
    verdict = "" if h.get("passed") is None else ("   ok" if h["passed"] else "   FAIL")
    out = [Text("Hessian (rows and columns in wrt order)" + verdict, style="bold")]
    table = fit(columns, rows, width)
    return out + ([table] if table is not None else _folded(columns, rows, width))


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
    names = ", ".join(_named(c) for c in failed[:5]) + (" ..." if len(failed) > 5 else "")
    text.append(f"  {len(failed)} of {total} check{'s' if total != 1 else ''} failed: {names}")
    return text


def _named(check) -> str:
    """'name (gradient_mismatch)': the check and the codes that failed it."""
    codes = list(dict.fromkeys(d.code for d in check.diagnostics if d.severity == "failure"))
    return f"{check.name} ({', '.join(codes[:3])}{', ...' if len(codes) > 3 else ''})" if codes else check.name


def render(report, console=None) -> None:
    """Print the report's tables and verdict on the console (stdout by default)."""
    console = console or make_console()
    for i, check in enumerate(report.checks):
        if i:
            console.print()
        for item in check_renderables(check, console.width):
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
    for item in check_renderables(check, width):
        console.print(item)
    return buf.getvalue()
