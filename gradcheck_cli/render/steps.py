"""`gradcheck steps` in the terminal: the log-log chart in plain characters, a table of
a few steps per curve, and the best steps; render_steps also writes --plot and --json.
Receives a steps.StepsResult; imports nothing from the command."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

TABLE_STEPS = (1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1.0)
MARKS = "*o+x#@%&"


def render_steps(result, *, as_json: bool, plot: Path | None) -> None:
    """Write the plot file (if asked) first, so a bad path fails before any output; then
    the JSON document or the terminal chart and table on stdout."""
    if plot is not None:
        from gradcheck_cli.render.plot import write_plot

        write_plot(result, Path(plot))
    if as_json:
        import json

        sys.stdout.write(json.dumps(result.to_dict(), allow_nan=False, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(text_report(result)) + "\n")
        if plot is not None:
            sys.stdout.write(f"wrote {plot}\n")
    sys.stdout.flush()


def _fmt(v: float, digits: int = 2) -> str:
    if v is None or not math.isfinite(v):
        return "nan" if v is None or math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v == 0:
        return "0"
    return f"{v:.{digits}e}"


def text_report(result, width: int = 65, height: int = 16) -> list[str]:
    """The chart, the legend, a table of a few steps per curve, and the best steps."""
    lines = [f"finite-difference error against step: {result.scheme} differences of {result.expression}",
             "reference: " + ("exact (SymPy, evaluated in float64)" if result.reference == "symbolic"
                              else result.reference)]
    lines += [""] + text_chart(result.curves, width, height, result.decades) + [""]
    for mark, c in zip(_marks(len(result.curves)), result.curves):
        lines += _curve_table(mark, c, result.scheme, "exact" if result.reference == "symbolic" else "reference")
    lines += [f"note: {n}" for n in result.notes]
    lines.append("step = H as --eps takes it: an element x moves by h = H * max(1, |x|)")
    return lines


def _marks(n: int) -> list[str]:
    return [MARKS[i % len(MARKS)] for i in range(n)]


def text_chart(curves, width: int = 65, height: int = 16, decades: tuple = (-16, 0)) -> list[str]:
    """A log-log chart in plain characters: error (rows) against relative step (columns).
    Zero errors sit on the bottom row; steps that gave no number are left out."""
    lo, hi = decades
    logs = [np.log10(c.error[np.isfinite(c.error) & (c.error > 0)]) for c in curves]
    finite = np.concatenate(logs) if logs else np.array([])
    y_lo = math.floor(finite.min()) if finite.size else -16
    y_hi = math.ceil(finite.max()) if finite.size else 0
    y_hi = max(y_hi, y_lo + 1)
    grid = [[" "] * width for _ in range(height)]
    markers = []
    for mark, c in zip(_marks(len(curves)), curves):
        for H, e in zip(c.relative_steps, c.error):
            if not np.isfinite(e):
                continue
            col = round((math.log10(H) - lo) / (hi - lo) * (width - 1))
            ly = math.log10(e) if e > 0 else y_lo
            row = round((y_hi - ly) / (y_hi - y_lo) * (height - 1))
            grid[min(max(row, 0), height - 1)][col] = mark
        row = [" "] * width
        for label, H in (("d", c.default_relative), ("b", None if c.best is None else c.relative_steps[c.best])):
            if H is not None and np.isfinite(H) and H > 0:
                col = round((math.log10(H) - lo) / (hi - lo) * (width - 1))
                if 0 <= col < width:
                    row[col] = label if row[col] == " " else "B"
        markers.append((mark, "".join(row).rstrip()))
    label_w = 7
    labels: dict[int, str] = {}  # row -> the decade it is closest to, every `every` decades
    every = max(1, math.ceil((y_hi - y_lo) / ((height + 1) // 2)))
    for d in range(y_hi, y_lo - 1, -1):
        if (y_hi - d) % every == 0:
            labels.setdefault(round((y_hi - d) / (y_hi - y_lo) * (height - 1)), f"1e{d:+03d}")
    out = ["|error|".rjust(label_w)]
    for r, cells in enumerate(grid):
        out.append(f"{labels.get(r, ''):>{label_w}} |{''.join(cells).rstrip()}")
    out.append(" " * label_w + " +" + "-" * width)
    axis = [" "] * (width + 6)
    for d in range(lo, hi + 1, 4):
        col = round((d - lo) / (hi - lo) * (width - 1))
        text = f"1e{d:+03d}"
        start = min(max(col - len(text) // 2, 0), width + 6 - len(text))
        axis[start:start + len(text)] = list(text)
    out.append(" " * (label_w + 2) + "".join(axis).rstrip() + "   step")
    for mark, row in markers:
        out.append(f"{mark:>{label_w}}  {row}")
    out.append(" " * (label_w + 2) + "d: the step check chooses here   b: the best step   B: both")
    if any(np.any(c.error == 0) for c in curves):
        out.append(" " * (label_w + 2) + "(points on the bottom row: error exactly 0, "
                   "rounding that happened to cancel)")
    return out


def _curve_table(mark: str, c, scheme: str, truth: str) -> list[str]:
    head = f"{mark} {c.label} at {c.wrt}{_index(c.element)} = {c.x:.10g}: {truth} {c.exact:.15g}"
    rows = [("step", "h", "finite difference", "|error|", "relative")]
    picks = [int(np.argmin(np.abs(np.log10(c.relative_steps) - math.log10(H)))) for H in TABLE_STEPS]
    best = c.best
    if best is not None and best not in picks:
        picks.append(best)
    for i in sorted(set(picks)):
        rel = c.error[i] / abs(c.exact) if c.exact != 0 else float("nan")
        tag = "  <- best" if i == best else ""
        rows.append((f"{c.relative_steps[i]:.2e}", _fmt(c.steps[i]), _fmt(c.finite_difference[i], 15),
                     _fmt(c.error[i]), _fmt(rel) + tag))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    table = [head] + ["  " + "  ".join(r[k].rjust(widths[k]) for k in range(4)) + "  " + r[4] for r in rows]
    if best is not None:
        table.append(f"  best step {c.relative_steps[best]:.2e} (h = {_fmt(c.steps[best])}): "
                     f"error {_fmt(c.error[best])}")
    table.append(f"  check's {scheme} step here {_fmt(c.default_relative)} (h = {_fmt(c.default_step)}): error "
                 f"{_fmt(c.default_error)}, estimated {_fmt(c.default_error_estimate)}")
    return table + [""]


def _index(idx: tuple) -> str:
    return f"[{', '.join(map(str, idx))}]" if idx else ""
