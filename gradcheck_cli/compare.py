"""Tolerances and verdicts.

Tolerances are data keyed by dtype (as in JAX's test utilities), merged with the user's
--atol/--rtol.  An autograd entry passes when, against each available reference r,
|a - r| <= atol + rtol·|r| (+ 3× the finite-difference error estimate against finite
differences).  The references themselves are always float64 or exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck_cli.jsonform import element_label
from gradcheck_cli.report import Diagnostic, failing_order

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
    failing: np.ndarray | None = None  # flat indices of the failed elements, worst first



# two references "disagree" only beyond the tolerance and beyond what float64 finite
# differences can resolve at all (with --atol 0 --rtol 0 rounding alone would count)
REFERENCE_FLOOR = {"rel": 1e-8, "abs": 1e-12}


def references_differ(fd, sym, atol: float, rtol: float):
    """Where finite differences and symbolic differ by more than the tolerance (elementwise)."""
    fd, sym = np.asarray(fd, dtype=np.float64), np.asarray(sym, dtype=np.float64)
    with np.errstate(all="ignore"):
        allowed = np.maximum(atol + rtol * np.abs(sym), REFERENCE_FLOOR["rel"] * np.abs(sym) + REFERENCE_FLOOR["abs"])
        return np.isfinite(fd) & np.isfinite(sym) & (np.abs(fd - sym) > allowed)


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
            kink_hi: np.ndarray | None = None, stop_gradient: bool = False, has_where: bool = False,
            mismatch: str = "gradient_mismatch", input_ndim: int | None = None) -> Comparison:
    """Verdict for one gradient.  Kink entries (where the finite-difference stencil crossed a
    kink) pass when autograd lies between the one-sided slopes; entries that only finite
    differences disagree with, because of detach, pass with a stop_gradient diagnostic.
    Out-of-tolerance elements fail with a `mismatch` diagnostic (severity failure)
    naming how many and the worst: the largest error relative to the allowed error (an
    exact match is never worst, even where the allowed error is 0)."""
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
            ratio = np.maximum(ratio, np.where(np.isfinite(sym) & (abs_s > 0), abs_s / allowed, 0.0))
        ok &= sym_ok | in_kink
        errors["symbolic"] = {"max_abs_error": max_error(abs_s), "max_rel_error": max_error(rel_s)}
    fd_ok = None
    if fd is not None:
        have = ~np.isnan(fd)
        abs_f, rel_f = elementwise_errors(auto, fd)
        allowed_f = atol + rtol * np.abs(fd) + FD_SAFETY * np.nan_to_num(fd_err, nan=0.0, posinf=np.inf)
        with np.errstate(all="ignore"):
            fd_ok = ~have | (abs_f <= allowed_f)
            fd_ratio = np.where(have & np.isfinite(fd) & (abs_f > 0), abs_f / allowed_f, 0.0)
        errors["finite_difference"] = {"max_abs_error": max_error(abs_f, have), "max_rel_error": max_error(rel_f, have)}
        if sym is not None:
            diags += _reference_diagnostics(wrt, auto, sym, fd, fd_err, tol, sym_ok, fd_ok, have & finite_a,
                                            in_kink, stop_gradient)
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
                "where(x > 0, sqrt(where(x > 0, x, 1)), x) instead of where(x > 0, sqrt(x), x)"), wrt, "failure"))
        else:
            diags.append(Diagnostic("nonfinite", f"autograd gives {fmt_values(auto[nonfinite])} for d/d{wrt}", wrt,
                                    "failure"))
        ratio = np.where(nonfinite, np.inf, ratio)
    primary = "symbolic" if sym is not None else ("finite_difference" if fd is not None else "none")
    ref = sym if sym is not None else fd
    if ref is not None:
        abs_e, rel_e = elementwise_errors(auto, ref)
    else:
        abs_e = rel_e = np.zeros(auto.shape)
    # accepted entries (a kink's subgradient) never outrank a failing one (in place: Jacobians are large)
    score = np.array(ratio, dtype=np.float64)
    np.minimum(score, 1.0, out=score, where=ok)
    score[np.isnan(score)] = np.inf
    worst = None
    if auto.size:
        flat_score = score.reshape(-1)
        tied = np.flatnonzero(flat_score == flat_score.max())  # ties (all inf when allowed is 0): larger errors first
        pick = np.lexsort((np.nan_to_num(abs_e.reshape(-1)[tied], nan=np.inf),
                           np.nan_to_num(rel_e.reshape(-1)[tied], nan=np.inf)))[-1]
        worst = tuple(int(i) for i in np.unravel_index(int(tied[pick]), auto.shape))
    out_of_tolerance = ~ok & finite_a
    if out_of_tolerance.any():
        diags.insert(0, _mismatch(mismatch, wrt, auto, ref, primary, out_of_tolerance, worst, tol, fd_err,
                                  input_ndim))
    return Comparison(bool(ok.all()), ok, abs_e, rel_e, score, primary, errors, diags, worst,
                      failing_order(~ok, score))


def _reference_diagnostics(wrt, auto, sym, fd, fd_err, tol, sym_ok, fd_ok, usable, in_kink,
                           stop_gradient) -> list[Diagnostic]:
    """Where the two references disagree with each other (warnings: symbolic decides)."""
    diags = []
    # autograd agrees with the exact derivative; finite differences alone differ
    explained = sym_ok & ~fd_ok & ~in_kink
    # finite differences agree with autograd only through their own error estimate: the
    # step is too coarse to judge at this tolerance (a 5% off forward difference)
    coarse = np.array(usable & sym_ok & fd_ok & ~in_kink, dtype=bool)  # an array even for a scalar gradient
    coarse &= fd != sym  # equal references never disagree (most of a sparse Jacobian: exact zeros)
    where = np.flatnonzero(coarse)
    coarse.reshape(-1)[where] = references_differ(fd.reshape(-1)[where], sym.reshape(-1)[where], tol["atol"],
                                                  tol["rtol"])
    if stop_gradient:
        explained, coarse = explained | coarse, np.zeros_like(coarse)
    if explained.any():
        if stop_gradient:
            diags.append(Diagnostic("stop_gradient", (
                f"finite differences see through detach(): they give {fmt_values(fd[explained])} where autograd "
                f"and symbolic give {fmt_values(auto[explained])}; the check compares autograd with symbolic"), wrt))
        else:
            diags.append(Diagnostic("reference_disagreement", (
                f"symbolic and finite differences disagree on {int(explained.sum())} element(s) "
                f"(symbolic {fmt_values(sym[explained])}, finite differences {fmt_values(fd[explained])}); "
                "autograd agrees with symbolic"), wrt, "warning"))
    if coarse.any():
        with np.errstate(all="ignore"):
            rel = float(np.max(np.abs(fd[coarse] - sym[coarse]) / np.abs(sym[coarse])))
        est = fd_err[coarse] if fd_err is not None else np.zeros(int(coarse.sum()))
        diags.append(Diagnostic("reference_disagreement", (
            f"finite differences differ from symbolic by up to {rel:.3g} relative on {int(coarse.sum())} element(s) "
            f"(finite differences {fmt_values(fd[coarse])}, symbolic {fmt_values(sym[coarse])}), within their own "
            f"error estimate ({fmt_values(est)}): the step is too coarse to judge at this tolerance (a smaller --eps, "
            "or --fd richardson); autograd agrees with symbolic"), wrt, "warning"))
    wrong_both = ~sym_ok & ~in_kink & fd_ok & usable
    if wrong_both.any():
        diags.append(Diagnostic("reference_disagreement", (
            f"autograd agrees with finite differences but not with symbolic on {int(wrong_both.sum())} "
            f"element(s) (symbolic {fmt_values(sym[wrong_both])})"), wrt, "warning"))
    return diags


def _mismatch(code, wrt, auto, ref, primary, bad, worst, tol, fd_err, input_ndim) -> Diagnostic:
    """'d/dx: 4 of 4 element(s) out of tolerance against symbolic; worst x[1]: ...'."""
    what = "the Hessian" if code == "hessian_mismatch" else f"d/d{wrt}"
    against = {"symbolic": "symbolic", "finite_difference": "finite differences"}.get(primary, primary)
    text = f"{what}: {int(bad.sum())} of {bad.size} element(s) out of tolerance against {against}"
    if worst is not None and ref is not None and bool(bad[worst]):
        a, r = float(auto[worst]), float(ref[worst])
        allowed = tol["atol"] + tol["rtol"] * abs(r)
        if primary == "finite_difference" and fd_err is not None:
            allowed += FD_SAFETY * float(np.nan_to_num(fd_err[worst], nan=0.0))
        at = element_label(wrt, worst, input_ndim) if code != "hessian_mismatch" else \
            f"entry [{', '.join(map(str, worst))}]"
        text += f"; worst {at}: autograd {a:.10g} vs {against} {r:.10g} (abs err {abs(a - r):.3g}, allowed {allowed:.3g})"
    return Diagnostic(code, text, wrt, "failure")


def fmt_values(values: np.ndarray) -> str:
    flat = np.asarray(values).reshape(-1)
    shown = ", ".join(f"{v:.6g}" for v in flat[:3])
    return shown + (f", ... ({flat.size} values)" if flat.size > 3 else "")
