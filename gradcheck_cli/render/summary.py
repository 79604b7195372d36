"""The `gradcheck run` report: one summary row per check, then the full tables of the
failed checks only, then the one-line verdict.

A suite of hundreds of checks stays readable: passing checks take one line each, and
a failure shows every method's numbers for the element that is wrong (the same table
`gradcheck check` prints).
"""

from __future__ import annotations

import io
import math

from gradcheck_cli.render.fit import Column, fit, fold_pairs
from gradcheck_cli.render.table import STYLE, check_renderables, fmt_err, make_console, verdict_line

# Diagnostics that say nothing about the verdict; left out of the summary's notes column.
QUIET_CODES = frozenset({"warning"})
COLUMNS = [Column("check", "check", "left", flex=12), Column("kind", "kind", "left", rank=3),
           Column("dtype", "dtype", "left"), Column("rel", "worst rel err"), Column("abs", "abs err", rank=2),
           Column("of", "of", "left", rank=1), Column("verdict", "verdict", "left"),
           Column("notes", "notes", "left", flex=10)]


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
    codes = sorted({d.code for d in check.diagnostics if d.severity != "info"} - QUIET_CODES)
    notes = ", ".join(codes)
    if check.extra.get("points_checked"):
        notes = f"worst of {check.extra['points_checked']} points" + (f"; {notes}" if notes else "")
    return check.name, check.kind, check.dtype, rel, abs_, wrt, "PASS" if check.passed else "FAIL", notes


def summary_table(report, width: int = 120) -> list:
    """One row per check, as a table fitting `width` (dropping the least important
    columns first) or, on a very narrow console, as folded lines."""
    from rich.text import Text

    keys = [c.key for c in COLUMNS]
    all_cells = [dict(zip(keys, summary_row(check))) for check in report.checks]
    rows = []
    for check, cells in zip(report.checks, all_cells):
        style = STYLE["ok"] if check.passed else STYLE["fail"]
        rows.append({**cells, "verdict": Text(cells["verdict"], style=style),
                     "notes": Text(cells["notes"], style=STYLE["diag"])})
    table = fit(COLUMNS, rows, width)
    if table is not None:
        return [table]
    out = []
    for check, cells in zip(report.checks, all_cells):
        out.append(Text(f"{cells['check']}  {cells['verdict']}", style=STYLE["ok"] if check.passed else STYLE["fail"]))
        pairs = [(c.header, cells[c.key]) for c in COLUMNS if c.key not in ("check", "verdict") and cells[c.key]]
        out += [Text(line, no_wrap=True, overflow="ignore") for line in fold_pairs(pairs, width)]
    return out


def render(report, console=None) -> None:
    """Print the summary, the failed checks' tables and the verdict (stdout by default)."""
    from rich.text import Text

    console = console or make_console()
    meta = report.meta or {}
    if not report.checks:
        shard = f" in shard {meta['shard']}" if meta.get("shard") else ""
        console.print(Text(f"no checks{shard} (of {meta.get('checks_total', 0)} in the suite)"))
    else:
        from gradcheck_cli.render.plain_table import print_table

        for item in summary_table(report, console.width):
            print_table(console, item)
    failed = [c for c in report.checks if not c.passed]
    for check in failed:
        console.print()
        console.print(Text(f"FAILED {check.name}" + (f"  ({check.extra['spec_file']})"
                                                      if check.extra.get("spec_file") else ""),
                           style=STYLE["fail"]))
        for item in check_renderables(check, console.width):
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
