"""The JSON forms of a gradient that scale: Jacobians as lists of entries, the worst
entries as objects, arrays too large to echo as a short summary, and the `summary`
detail level (verdicts, worst entries, errors; no arrays).

report.py decides which form a report takes; the numbers are converted here with
report.jsonable (strict JSON: non-finite numbers as strings).
"""

from __future__ import annotations

import math

import numpy as np

from gradcheck_cli.jsonvalues import json_number, jsonable

DENSE_LIMIT = 262_144  # Jacobian entries written as nested lists; larger ones as a list of entries
MAX_ENTRIES = 100_000  # entries written at most (the others: entries_truncated)
ECHO_LIMIT = 65_536  # input / output elements echoed in `point` and `value`; larger: array_summary
SUMMARY_ECHO_LIMIT = 16  # the same under --json-detail summary
WORST_ENTRIES = 5  # out-of-tolerance entries listed under --json-detail summary


def _number(v):
    return None if v is None else json_number(float(v))


def array_summary(arr: np.ndarray) -> dict:
    """A large array in a few numbers: its shape, range, mean and first elements."""
    flat = np.asarray(arr).reshape(-1)
    out = {"format": "array_summary", "shape": [int(s) for s in np.shape(arr)], "elements": int(flat.size)}
    if flat.dtype == bool or flat.size == 0:
        return out
    flat = flat.astype(np.float64, copy=False)
    finite = np.isfinite(flat)
    seen = flat[finite]
    out.update({"min": _number(seen.min()) if seen.size else None, "max": _number(seen.max()) if seen.size else None,
                "mean": _number(seen.mean()) if seen.size else None, "nonfinite": int(flat.size - seen.size),
                "first": jsonable(flat[:8].copy())})
    return out


def echo(value, limit: int = ECHO_LIMIT):
    """A point's or value's array as JSON: in full up to `limit` elements, else summarized."""
    if isinstance(value, (np.ndarray, np.generic)) and np.size(value) > limit:
        return array_summary(value)
    if isinstance(value, (list, tuple)) and len(value) and np.size(value) > limit:
        return array_summary(np.asarray(value))
    return jsonable(value)


# ---- entries -------------------------------------------------------------------------------

def flat_pair(g, idx: tuple) -> tuple[int, int]:
    """(output flat index, input flat index) of the entry at `idx` of the stored arrays."""
    if getattr(g, "flat_pair", None) is not None:
        return g.flat_pair(tuple(idx))
    return dense_flat_pair(g, idx)


def dense_flat_pair(g, idx: tuple) -> tuple[int, int]:
    """flat_pair of a dense Jacobian (its arrays shaped output_shape + input_shape)."""
    n_out = len(g.shape) - len(g.input_shape)
    out_idx, in_idx = idx[:n_out], idx[n_out:]
    o = int(np.ravel_multi_index(out_idx, g.shape[:n_out])) if n_out else 0
    j = int(np.ravel_multi_index(in_idx, g.input_shape)) if g.input_shape else 0
    return o, j


def uses_entries(g) -> bool:
    """Whether the gradient is written as a list of entries (sampled, or a large Jacobian)."""
    return getattr(g, "entries", None) is not None or int(np.prod(g.shape)) > DENSE_LIMIT


def _entry_arrays(g):
    """(pairs, autograd, symbolic, finite differences, error estimate, computed) per entry."""
    entries = getattr(g, "entries", None)
    flat = (lambda a: None if a is None else np.asarray(a).reshape(-1))
    if entries is not None:
        return (entries, flat(g.autograd), flat(g.symbolic), flat(g.finite_difference), flat(g.fd_error_estimate),
                flat(g.fd_computed))
    m = int(np.prod(g.shape[:len(g.shape) - len(g.input_shape)]))
    two = (lambda a: None if a is None else np.asarray(a).reshape(m, -1))
    a2, f2, s2, e2, c2 = two(g.autograd), two(g.finite_difference), two(g.symbolic), two(g.fd_error_estimate), \
        two(g.fd_computed)
    nz = a2 != 0
    if f2 is not None:
        nz |= (f2 != 0) if c2 is None else ((f2 != 0) & c2)  # an entry not sampled is no entry
    if s2 is not None:
        nz |= s2 != 0
    rows, cols = np.nonzero(nz)
    pairs = np.stack([rows, cols], axis=1)[:MAX_ENTRIES]
    take = (lambda a: None if a is None else a[pairs[:, 0], pairs[:, 1]])
    return pairs, take(a2), take(s2), take(f2), take(e2), take(c2)


def entry_form(g) -> dict:
    """Large or sampled Jacobians: the entries (nonzero in any method, or sampled) as
    parallel lists; `shape` is the lists' length and the Jacobian's own shape is given
    separately (so `shape` still describes the arrays, as everywhere)."""
    pairs, auto, sym, fd, err, computed = _entry_arrays(g)
    worst = None if g.worst_index is None else list(flat_pair(g, tuple(g.worst_index)))
    position = None
    if worst is not None:
        hit = np.flatnonzero((np.asarray(pairs)[:, 0] == worst[0]) & (np.asarray(pairs)[:, 1] == worst[1]))
        position = [int(hit[0])] if hit.size else None
    out = {
        "wrt": g.wrt,
        "shape": [int(len(pairs))],
        "format": "entries",
        "entries": np.asarray(pairs, dtype=np.int64).tolist(),
        "autograd": jsonable(np.asarray(auto)),
        "symbolic": jsonable(None if sym is None else np.asarray(sym)),
        "finite_difference": jsonable(None if fd is None else np.asarray(fd), computed),
        "max_abs_error": json_number(g.max_abs_error),
        "max_rel_error": json_number(g.max_rel_error),
        "passed": g.passed,
        "reference": g.reference,
        "worst_index": position,
        "worst_entry": worst,
        "fd_error_estimate": jsonable(None if err is None else np.asarray(err), computed),
        "tolerance": jsonable(g.tolerance),
        "errors": jsonable(g.errors),
        "failed_elements": g.failed_elements,
        "jacobian_shape": list(g.output_shape) + list(g.input_shape),
        "jacobian_output_shape": list(g.output_shape),
        "jacobian_input_shape": list(g.input_shape),
    }
    if len(pairs) >= MAX_ENTRIES and getattr(g, "entries", None) is None:
        out["entries_truncated"] = True
    return out


# ---- worst entries -------------------------------------------------------------------------

def entry_label(g, idx: tuple) -> str:
    """'x[2]', or 'out[1] / x[2]' for a Jacobian entry (d out[1] / d x[2])."""
    label_for = getattr(g, "label_for", None)
    if label_for is not None:
        return label_for(tuple(idx))
    n_out = len(g.shape) - len(g.input_shape)
    return element_label(g.wrt, idx, len(idx) - n_out)


def element_label(wrt: str, idx: tuple, input_ndim: int | None) -> str:
    """'x[2]', or 'out[1] / x[2]' for a Jacobian entry when the input's dimensions are known."""
    n_out = 0 if input_ndim is None else len(idx) - input_ndim
    out_idx, in_idx = tuple(idx[:n_out]), tuple(idx[n_out:])
    name = f"{wrt}[{', '.join(map(str, in_idx))}]" if in_idx else wrt
    return f"out[{', '.join(map(str, out_idx))}] / {name}" if out_idx else name


def value_at(arr, idx):
    """The element of `arr` at `idx` (None without an array)."""
    return None if arr is None else np.asarray(arr)[idx]


def pair_errors(a, r) -> tuple:
    """(abs, rel) error of autograd `a` against reference `r` ((None, None) without both,
    or when `r` is a string such as "not sampled")."""
    if r is None or isinstance(r, str) or a is None:
        return None, None
    a, r = float(a), float(r)
    if a == r or (math.isnan(a) and math.isnan(r)):
        return 0.0, 0.0
    abs_err = abs(a - r)
    return abs_err, (abs_err / abs(r) if r != 0 else math.inf)


def entry_values(g, idx: tuple) -> dict:
    """One entry's numbers: every method's value and the errors against the reference."""
    a, s, f = value_at(g.autograd, idx), value_at(g.symbolic, idx), value_at(g.finite_difference, idx)
    if f is not None and g.fd_computed is not None and not bool(np.asarray(g.fd_computed)[idx]):
        f = None
    ref = s if g.reference == "symbolic" else f if g.reference == "finite_difference" else None
    abs_err, rel_err = pair_errors(a, ref)
    return {"index": [int(i) for i in idx], "label": entry_label(g, idx), "autograd": _number(a),
            "symbolic": _number(s), "finite_difference": _number(f), "abs_error": _number(abs_err),
            "rel_error": _number(rel_err)}


def worst_object(g) -> dict | None:
    """The worst entry (largest error relative to the allowed error) as an object."""
    if g.worst_index is None or g.autograd is None:
        return None
    idx = tuple(int(i) for i in g.worst_index)
    out = entry_values(g, idx)
    failed = element_failed(g, idx)
    out["passed"] = (not failed) if failed is not None else g.passed
    return out


def element_failed(g, idx: tuple) -> bool | None:
    """Whether the entry at `idx` of the stored arrays is out of tolerance (None: not known)."""
    if g.passed:
        return False
    failing = getattr(g, "failing", None)
    if failing is None or g.autograd is None:
        return None
    flat = int(np.ravel_multi_index(tuple(int(i) for i in idx), np.shape(g.autograd))) if np.ndim(g.autograd) else 0
    return bool(np.any(np.asarray(failing) == flat))


def worst_entries(g, limit: int = WORST_ENTRIES) -> list:
    """Up to `limit` out-of-tolerance entries, worst first."""
    return [{**entry_values(g, idx), "passed": False} for idx in failing_indices(g, limit)]


def failing_indices(g, limit: int) -> list:
    """The indices (into the stored arrays) of up to `limit` out-of-tolerance entries,
    worst first; [] where the producer did not list them."""
    failing = getattr(g, "failing", None)
    if failing is None or g.autograd is None:
        return []
    shape = np.shape(g.autograd)
    flats = np.asarray(failing).reshape(-1)[:limit]
    return [tuple(int(i) for i in np.unravel_index(int(flat), shape)) for flat in flats]


# ---- --json-detail summary -----------------------------------------------------------------

def _without_arrays(obj):
    if isinstance(obj, dict):
        return {k: _without_arrays(v) for k, v in obj.items() if not isinstance(v, (np.ndarray, list, tuple))}
    return obj


def summary_form(g) -> dict:
    """Verdict, errors and the worst entries of one gradient: no arrays."""
    out = {"wrt": g.wrt, "shape": list(g.shape), "detail": "summary", "passed": g.passed,
           "max_abs_error": json_number(g.max_abs_error), "max_rel_error": json_number(g.max_rel_error),
           "reference": g.reference, "failed_elements": g.failed_elements,
           "worst_index": None if g.worst_index is None else [int(i) for i in g.worst_index],
           "worst": worst_object(g), "worst_entries": worst_entries(g), "tolerance": jsonable(g.tolerance),
           "errors": jsonable(g.errors)}
    if getattr(g, "entries", None) is not None:  # sampled: `shape` counts the entries, as in entry_form
        out.update({"format": "entries", "jacobian_shape": list(g.output_shape) + list(g.input_shape),
                    "jacobian_output_shape": list(g.output_shape), "jacobian_input_shape": list(g.input_shape)})
    else:
        out.update({"input_shape": list(g.input_shape), "output_shape": list(g.output_shape)})
    details = getattr(g, "details", None)
    if details:
        out.update(jsonable(_without_arrays(details)))
    return out


def hessian_summary(h: dict) -> dict:
    """--order 2's Hessian without its matrices."""
    keep = {k: v for k, v in h.items() if k not in ("autograd", "symbolic", "finite_difference")}
    return {"detail": "summary", **jsonable(keep)}
