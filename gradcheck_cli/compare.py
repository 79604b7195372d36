"""Tolerances and verdicts.

Tolerances are data keyed by dtype (as in JAX's test utilities), merged with the user's
--atol/--rtol.  An autograd entry passes when, against each available reference r,
|a - r| <= atol + rtol·|r| (+ 3× the finite-difference error estimate against finite
differences).  The references themselves are always float64 or exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck_cli.report import Diagnostic

from gradcheck_cli.tolerances import DTYPES, FD_SAFETY, TOLERANCES  # noqa: F401  (data lives there)


def tolerance(dtype: str, atol: float | None = None, rtol: float | None = None) -> dict:
    """The dtype's defaults with the user's overrides."""
    tol = dict(TOLERANCES[dtype])
    if atol is not None:
        tol["atol"] = atol
    if rtol is not None:
        tol["rtol"] = rtol
    return tol


@dataclass
class Comparison:
    """Elementwise outcome of comparing autograd with the references."""

    passed: bool
    ok: np.ndarray  # per element
    abs_err: np.ndarray  # against the primary reference
    rel_err: np.ndarray
    ratio: np.ndarray  # error / allowed: > 1 fails
    reference: str
    errors: dict
    diagnostics: list
    worst: tuple | None


def elementwise_errors(a: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
        abs_err = np.abs(a - r)
        same = (a == r) | (np.isnan(a) & np.isnan(r))
        abs_err = np.where(same, 0.0, abs_err)
        rel_err = np.where(same, 0.0, abs_err / np.abs(r))
    return abs_err, rel_err


def max_error(x: np.ndarray, where: np.ndarray | None = None) -> float:
    x = x if where is None else x[where]
    if x.size == 0:
        return 0.0
    return float(np.nanmax(x)) if not np.all(np.isnan(x)) else float("nan")


def compare(wrt: str, auto: np.ndarray, sym: np.ndarray | None, fd: np.ndarray | None,
            fd_err: np.ndarray | None, tol: dict, *, kink_lo: np.ndarray | None = None,
            kink_hi: np.ndarray | None = None, stop_gradient: bool = False, has_where: bool = False) -> Comparison:
    """Verdict for one gradient.  Kink entries (where the finite-difference stencil crossed a
    kink) pass when autograd lies between the one-sided slopes; entries that only finite
    differences disagree with, because of detach, pass with a stop_gradient diagnostic."""
    atol, rtol = tol["atol"], tol["rtol"]
    diags: list[Diagnostic] = []
    finite_a = np.isfinite(auto)
    ok = finite_a.copy()
    ratio = np.zeros(auto.shape)
    errors = {}
    in_kink = np.zeros(auto.shape, dtype=bool)
    if kink_lo is not None:
        slack = atol + rtol * np.maximum(np.abs(kink_lo), np.abs(kink_hi))
        with np.errstate(invalid="ignore"):
            in_kink = (auto >= kink_lo - slack) & (auto <= kink_hi + slack)
    sym_ok = None
    if sym is not None:
        abs_s, rel_s = elementwise_errors(auto, sym)
        allowed = atol + rtol * np.abs(sym)
        with np.errstate(all="ignore"):
            # an infinite exact derivative is matched only by the same infinity, never by tolerance
            sym_ok = np.where(np.isfinite(sym), abs_s <= allowed, auto == sym)
            ratio = np.maximum(ratio, np.where(np.isfinite(sym), abs_s / allowed, 0.0))
        ok &= sym_ok | in_kink
        errors["symbolic"] = {"max_abs_error": max_error(abs_s), "max_rel_error": max_error(rel_s)}
    fd_ok = None
    if fd is not None:
        have = ~np.isnan(fd)
        abs_f, rel_f = elementwise_errors(auto, fd)
        allowed_f = atol + rtol * np.abs(fd) + FD_SAFETY * np.nan_to_num(fd_err, nan=0.0, posinf=np.inf)
        with np.errstate(all="ignore"):
            fd_ok = ~have | (abs_f <= allowed_f)
            fd_ratio = np.where(have & np.isfinite(fd), abs_f / allowed_f, 0.0)
        errors["finite_difference"] = {"max_abs_error": max_error(abs_f, have), "max_rel_error": max_error(rel_f, have)}
        if sym is not None:
            # autograd agrees with the exact derivative; finite differences alone differ
            explained = sym_ok & ~fd_ok & ~in_kink
            if explained.any():
                if stop_gradient:
                    diags.append(Diagnostic("stop_gradient", (
                        f"finite differences see through detach(): they give {fmt_values(fd[explained])} where autograd "
                        f"and symbolic give {fmt_values(auto[explained])}; the check compares autograd with symbolic"), wrt))
                else:
                    diags.append(Diagnostic("reference_disagreement", (
                        f"symbolic and finite differences disagree on {int(explained.sum())} element(s) "
                        f"(symbolic {fmt_values(sym[explained])}, finite differences {fmt_values(fd[explained])}); "
                        "autograd agrees with symbolic"), wrt))
            wrong_both = ~sym_ok & ~in_kink & fd_ok & have & finite_a
            if wrong_both.any():
                diags.append(Diagnostic("reference_disagreement", (
                    f"autograd agrees with finite differences but not with symbolic on {int(wrong_both.sum())} "
                    f"element(s) (symbolic {fmt_values(sym[wrong_both])})"), wrt))
        else:
            ok &= fd_ok | in_kink
            ratio = np.maximum(ratio, fd_ratio)
    nonfinite = ~finite_a
    if nonfinite.any():
        ref = sym if sym is not None else fd
        masked = nonfinite & (np.isfinite(ref) if ref is not None else False)
        if has_where and np.any(masked):
            diags.append(Diagnostic("masked_nan", (
                f"autograd gives {fmt_values(auto[masked])} where the exact derivative is {fmt_values(ref[masked])}: "
                "where() takes the other branch here, but the branch not taken has a non-finite derivative, "
                "and 0 * nan is nan in the backward pass. Make the untaken branch safe, e.g. "
                "where(x > 0, sqrt(where(x > 0, x, 1)), x) instead of where(x > 0, sqrt(x), x)"), wrt))
        else:
            diags.append(Diagnostic("nonfinite", f"autograd gives {fmt_values(auto[nonfinite])} for d/d{wrt}", wrt))
        ratio = np.where(nonfinite, np.inf, ratio)
    primary = "symbolic" if sym is not None else ("finite_difference" if fd is not None else "none")
    ref = sym if sym is not None else fd
    if ref is not None:
        abs_e, rel_e = elementwise_errors(auto, ref)
    else:
        abs_e = rel_e = np.zeros(auto.shape)
    worst = None
    if auto.size:
        score = np.where(np.isnan(ratio), np.inf, ratio)
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), auto.shape))
    return Comparison(bool(ok.all()), ok, abs_e, rel_e, ratio, primary, errors, diags, worst)


def fmt_values(values: np.ndarray) -> str:
    flat = np.asarray(values).reshape(-1)
    shown = ", ".join(f"{v:.6g}" for v in flat[:3])
    return shown + (f", ... ({flat.size} values)" if flat.size > 3 else "")
