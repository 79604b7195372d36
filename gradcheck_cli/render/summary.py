"""The `gradcheck run` report: one summary row per check, then the full tables of the
failed checks only, then the one-line verdict.

A suite of hundreds of checks stays readable: passing checks take one line each, and
a failure shows every method's numbers for the element that is wrong (the same table
`gradcheck check` prints).
"""

from __future__ import annotations

import io
import math

from gradcheck_cli.render.table import STYLE, check_renderables, fmt_err, make_console, verdict_line

# Diagnostics that say nothing about the verdict; left out of the summary's notes column.
QUIET_CODES = frozenset({"warning"})


def worst_gradient(check):
    """The gradient entry with the largest relative error (non-finite counts as largest),
    or None for a check without gradients."""
    def key(g):
        rel = g.max_rel_error
        return (not g.passed, math.inf if not math.isfinite(rel) else rel)

    return max(check.gradients, key=key, default=None)


def summary_row(check) -> tuple[str, str, str, str, str, str, str, str]:
    """(name, kind, dtype, worst rel err, its abs err, which gradient, verdict, notes)
    for one check, as plain text."""
    g = worst_gradient(check)
    rel, abs_, wrt = ("—", "—", "—") if g is None else (fmt_err(g.max_rel_error), fmt_err(g.max_abs_error),
                                                       f"d/d{g.wrt}")
    codes = sorted(check.codes() - QUIET_CODES)
    notes = ", ".join(codes)
    if check.extra.get("points_checked"):
        notes = f"worst of {check.extra['points_checked']} points" + (f"; {notes}" if notes else "")
    return check.name, check.kind, check.dtype, rel, abs_, wrt, "PASS" if check.passed else "FAIL", notes


def summary_table(report):
    """The rich Table with one row per check."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", pad_edge=False)
    for col, justify, wrap in (("check", "left", False), ("kind", "left", False), ("dtype", "left", False),
                               ("worst rel err", "right", False), ("abs err", "right", False),
                               ("of", "left", False), ("verdict", "left", False), ("notes", "left", True)):
        table.add_column(col, justify=justify, no_wrap=not wrap, overflow="fold")
    for check in report.checks:
        *cells, verdict, notes = summary_row(check)
        style = STYLE["ok"] if check.passed else STYLE["fail"]
        table.add_row(*cells, Text(verdict, style=style), Text(notes, style=STYLE["diag"]))
    return table


def render(report, console=None) -> None:
    """Print the summary, the failed checks' tables and the verdict (stdout by default)."""
    from rich.text import Text

    console = console or make_console()
    meta = report.meta or {}
    if not report.checks:
        shard = f" in shard {meta['shard']}" if meta.get("shard") else ""
        console.print(Text(f"no checks{shard} (of {meta.get('checks_total', 0)} in the suite)"))
    else:
        console.print(summary_table(report))
    failed = [c for c in report.checks if not c.passed]
    for check in failed:
        console.print()
        console.print(Text(f"FAILED {check.name}" + (f"  ({check.extra['spec_file']})"
                                                      if check.extra.get("spec_file") else ""),
                           style=STYLE["fail"]))
        for item in check_renderables(check):
            console.print(item)
    console.print()
    line = verdict_line(report)
    if meta.get("stopped_early"):
        line.append(f"  ({meta['stopped_early']}; {meta.get('checks_selected', 0) - len(report.checks)} "
                    "not run)")
    if meta.get("shard"):
        line.append(f"  [shard {meta['shard']}: {meta.get('checks_selected')} of {meta.get('checks_total')} "
                    "checks]")
    console.print(line)


def render_text(report, width: int = 120) -> str:
    """The summary as plain text (no colour), for tests and logs."""
    buf = io.StringIO()
    render(report, make_console(buf, force_plain=True, width=width))
    return buf.getvalue()
