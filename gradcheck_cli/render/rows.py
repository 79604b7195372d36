"""The rows of a check's table: which elements of each gradient are shown, and each
row's cells (numbers formatted, errors against each reference, the verdict, a flag where
the two references disagree with each other).

Every out-of-tolerance element shown is marked FAIL (GradientResult.failing lists them,
worst first); a gradient of more than MAX_ROWS elements shows its failing elements, worst
first (or, when none fails, its worst one), and a line with the counts.
"""

from __future__ import annotations


import numpy as np

from gradcheck_cli.compare import references_differ
from gradcheck_cli.jsonform import element_failed, entry_label, failing_indices, pair_errors, value_at

MAX_ROWS = 8  # elements of a gradient shown in full; larger ones show their failing (or worst) elements
MAX_FAILING_ROWS = 8
REF_NAMES = {"symbolic": "symbolic", "finite_difference": "finite differences"}
FLAG = "!"  # after a reference's value: it disagrees with the other reference here


def fmt(v) -> str:
    """A number with ten significant digits, or its name when not finite (the format
    writes nan, inf and -inf itself)."""
    if v is None:
        return "—"
    return f"{float(v):.10g}"


def fmt_err(v) -> str:
    """An error with three significant digits; 0 (and -0.0) as "0"."""
    if v is None:
        return "—"
    v = float(v)
    return "0" if v == 0 else f"{v:.2e}"


def primary_reference(check) -> str:
    """What the check's error columns compare against: symbolic when any gradient has it."""
    if any(g.symbolic is not None for g in check.gradients):
        return "symbolic"
    if any(g.finite_difference is not None for g in check.gradients):
        return "finite_difference"
    return "none"


def has_both(check) -> bool:
    return any(g.symbolic is not None and g.finite_difference is not None for g in check.gradients)


def _count(g) -> int:
    return int(np.prod(g.shape)) if g.shape else 1


def shown_indices(g) -> list:
    """The elements of `g` shown as rows: all of a small gradient; else its failing ones,
    worst first, or its worst one."""
    shape = tuple(g.shape)
    if _count(g) <= MAX_ROWS:
        return list(np.ndindex(*shape)) if shape else [()]
    failing = failing_indices(g, MAX_FAILING_ROWS) if not g.passed else []
    if failing:
        return failing
    return [tuple(g.worst_index or (0,) * len(shape))]


def _fd_value(g, idx):
    if g.finite_difference is None:
        return None
    if g.fd_computed is not None and not bool(np.asarray(g.fd_computed)[idx]):
        return "not sampled"
    return value_at(g.finite_difference, idx)


def failed_here(g, idx) -> bool:
    """Whether the element is out of tolerance (the producer's verdict; where it did not
    list its failing elements, the worst one, and the plain atol + rtol rule)."""
    known = element_failed(g, idx)
    if known is not None:
        return known
    if tuple(idx) == tuple(g.worst_index or ()):
        return True
    ref = g.symbolic if g.reference == "symbolic" else g.finite_difference
    abs_err, _ = pair_errors(value_at(g.autograd, idx), value_at(ref, idx))
    if abs_err is None:
        return False
    r = abs(float(np.asarray(ref)[idx]))
    return not abs_err <= g.tolerance.get("atol", 0.0) + g.tolerance.get("rtol", 0.0) * r


def _symbolic_scale(g) -> float:
    """The largest |symbolic| entry of `g` (nan as 0, inf as the largest float): what an op
    tolerance's scale term multiplies."""
    return float(np.max(np.abs(np.nan_to_num(np.asarray(g.symbolic, dtype=float)))))


def references_disagree(g, idx, scale) -> bool:
    """Symbolic and finite differences differ by more than the tolerance at this element
    (a 5% off finite difference next to a passing symbolic column is not silent).
    `scale`: _symbolic_scale(g), which gradient_rows computes once (0 where unused)."""
    s, f = value_at(g.symbolic, idx), _fd_value(g, idx)
    if s is None or f is None or isinstance(f, str):
        return False
    tol = g.tolerance or {}
    atol = tol.get("atol", 0.0)
    if tol.get("scale"):  # op tolerances: the largest entry's scale term bounds each entry's
        atol += tol["scale"] * scale
    return bool(references_differ(f, s, atol, tol.get("rtol", 0.0)))


def row(g, idx, primary: str, label_suffix: str, scale) -> dict:
    """One row's cells (str), keyed by column, plus 'failed' and 'flagged' (bool)."""
    a, s, f = value_at(g.autograd, idx), value_at(g.symbolic, idx), _fd_value(g, idx)
    ref = s if primary == "symbolic" else f
    abs_p, rel_p = pair_errors(a, ref)
    _, rel_s = pair_errors(a, f) if primary == "symbolic" else (None, None)
    flagged = references_disagree(g, idx, scale)
    failed = failed_here(g, idx)
    fd_text = f if isinstance(f, str) else fmt(f)
    return {"label": entry_label(g, idx) + label_suffix, "autograd": fmt(a), "symbolic": fmt(s),
            "finite_difference": fd_text + (" " + FLAG if flagged else ""), "abs_primary": fmt_err(abs_p),
            "rel_primary": fmt_err(rel_p), "rel_secondary": fmt_err(rel_s), "verdict": "FAIL" if failed else "ok",
            "failed": failed, "flagged": flagged}


def gradient_rows(g, primary: str) -> list:
    """The rows of one gradient (one 'not run' row when autograd was not computed)."""
    if g.autograd is None:
        return [{"label": g.wrt, "verdict": "not run", "failed": True, "flagged": False}]
    indices = shown_indices(g)
    worst = tuple(g.worst_index or ())
    out = []
    # the worst is named among several failing rows, and always in a gradient too large to show whole
    name_worst = _count(g) > MAX_ROWS or (not g.passed and len(indices) > 1)
    scale = _symbolic_scale(g) if (g.tolerance or {}).get("scale") and g.symbolic is not None else 0.0
    for idx in indices:
        out.append(row(g, idx, primary, " (worst)" if name_worst and tuple(idx) == worst else "", scale))
    return out


def count_line(g, primary: str) -> str | None:
    """'d/dx: 4 of 4 out of tolerance against symbolic (atol 1e-30, rtol 1e-09)', or the
    summary of a large passing gradient; None for a small passing one."""
    if g.autograd is None:
        return None
    details = getattr(g, "details", None) or {}
    entries = (details.get("method") or {}).get("entries_compared")
    compared = f"{entries} entries compared" if entries else str(_count(g))
    against = REF_NAMES.get(g.reference, g.reference)
    tol = ", ".join(f"{k} {g.tolerance[k]:g}" for k in ("atol", "rtol") if k in (g.tolerance or {}))
    shape = f" {list(g.shape)}" if g.shape else ""
    if not g.passed:
        shown = len(shown_indices(g))
        more = "" if _count(g) <= MAX_ROWS else ("; all shown" if shown >= g.failed_elements else
                                                  f"; the {shown} worst shown (every number in --json)")
        return (f"d/d{g.wrt}{shape}: {g.failed_elements} of {compared} out of tolerance against {against}"
                f"{f' ({tol})' if tol else ''}{more}")
    if _count(g) > MAX_ROWS:
        return (f"d/d{g.wrt}{shape}: 0 of {compared} out of tolerance against {against}; max abs err "
                f"{fmt_err(g.max_abs_error)}, max rel err {fmt_err(g.max_rel_error)} (the worst shown; every "
                "number in --json)")
    return None
