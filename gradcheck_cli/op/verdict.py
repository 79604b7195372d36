"""Tolerances, verdicts and bug classes for op Jacobians.

An autograd entry a passes against a reference r (finite differences in float64, or the
exact derivative of --reference) when

    |a - r| <= atol + rtol·|r| + scale·S + output·|f| + 3·fd_error

where S is the largest reference magnitude in the entry's output row or input column
(the size of the numbers the backward works with, so rounding in low precision is not
mistaken for a bug where an entry is small next to its neighbours), |f| is the output
element's magnitude (backward formulas reuse saved outputs: 1e6·tanh(x) near
saturation computes 1 - tanh², which float32 knows to 1e6·eps absolute only), `output`
is 4 epsilons of the dtype, and fd_error is the finite-difference error estimate (step
halving plus rounding; 0 against the exact derivative).  In float64 the floor is far
below a 2e-5 relative bug and far above finite-difference noise (~1e-10).  --atol
replaces atol and drops the scale and output terms; --rtol replaces rtol.

When a gradient fails, the failure is localized (output element, input element, both
values) and, where the numbers show a pattern, named: scale_error, wrong_sign,
broadcast_reduction (mean instead of sum over a broadcast dimension),
swapped_gradients (full_results.py); every failure also carries gradient_mismatch with the worst entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradcheck_cli.compare import elementwise_errors, max_error  # the same elementwise errors as expression checks
from gradcheck_cli.jsonform import dense_flat_pair
from gradcheck_cli.report import Diagnostic, GradientResult, failing_order
from gradcheck_cli.tolerances import FD_SAFETY, OP_TOLERANCES, SYSTEMATIC  # data only, so `op --help` can show it

# diagnostics that inform and do not fail the check
INFO_CODES = frozenset({"nondeterministic_within_tolerance", "within_torch_tolerance"})


def op_tolerance(dtype: str, atol: float | None = None, rtol: float | None = None) -> dict:
    """The dtype's defaults with the user's overrides (--atol drops the scale term)."""
    tol = dict(OP_TOLERANCES[dtype])
    if atol is not None:
        tol["atol"] = float(atol)
        tol["scale"] = 0.0
        tol["output"] = 0.0
    if rtol is not None:
        tol["rtol"] = float(rtol)
    if dtype in SYSTEMATIC and atol is None and rtol is None:
        tol["systematic"] = SYSTEMATIC[dtype]
    tol["fd_safety"] = FD_SAFETY
    return tol


# ---- labels -------------------------------------------------------------------------------

@dataclass(frozen=True)
class OutputLayout:
    """How the op's outputs map to the Jacobian's rows (outputs concatenated, flat)."""

    shapes: tuple  # per output
    offsets: tuple

    @property
    def m(self) -> int:
        return int(self.offsets[-1] + int(np.prod(self.shapes[-1]))) if self.shapes else 0

    @property
    def report_shape(self) -> tuple:
        """One output: its shape.  Several of one shape: (k,) + shape.  Else flat."""
        if len(self.shapes) == 1:
            return tuple(self.shapes[0])
        if len(set(self.shapes)) == 1:
            return (len(self.shapes),) + tuple(self.shapes[0])
        return (self.m,)

    def label(self, flat: int) -> str:
        k = int(np.searchsorted(self.offsets, flat, side="right") - 1)
        return input_label("out" if len(self.shapes) == 1 else f"out{k}", self.shapes[k], flat - self.offsets[k])

    def to_dict(self) -> list:
        return [{"index": k, "shape": list(s), "offset": int(o)} for k, (s, o) in
                enumerate(zip(self.shapes, self.offsets))]


def input_label(name: str, shape: tuple, flat: int) -> str:
    if not shape:
        return name
    idx = np.unravel_index(int(flat), shape)
    return f"{name}[{', '.join(str(int(i)) for i in idx)}]"


def concat_label(arrays: dict, wrt: list, sizes: list, k: int) -> str:
    """The label of element k of the inputs `wrt` flattened and concatenated (sizes: theirs)."""
    i = int(np.searchsorted(np.cumsum(sizes), k, side="right"))
    return input_label(wrt[i], tuple(np.shape(arrays[wrt[i]])), int(k) - sum(sizes[:i]))


@dataclass(frozen=True, eq=False)
class OpGradientResult(GradientResult):
    """One input's Jacobian (all outputs) with labels that say which output and input
    element each entry is.  Sampled (fast mode): arrays hold the sampled entries only,
    listed in `entries` as (output flat index, input flat index)."""

    layout: OutputLayout | None = None
    entries: np.ndarray | None = None  # (k, 2) for sampled results
    details: dict = field(default_factory=dict)

    def flat_pair(self, idx: tuple) -> tuple[int, int]:
        if self.entries is not None:
            o, j = self.entries[int(idx[0])]
            return int(o), int(j)
        return dense_flat_pair(self, idx)

    def label_for(self, idx: tuple) -> str:
        """'out[1, 2] / x[1, 2]': the derivative of that output element w.r.t. that input element."""
        o, j = self.flat_pair(tuple(idx))
        out = self.layout.label(o) if self.layout is not None else str(o)
        return f"{out} / {input_label(self.wrt, self.input_shape, j)}"

    # to_dict: GradientResult's, which writes a sampled or large Jacobian as its list of entries
    # (jsonform.entry_form) and adds `details`


# ---- comparing ----------------------------------------------------------------------------

@dataclass
class Verdict:
    """Outcome per Jacobian entry (entries listed by output row and input column; every
    entry not listed is 0 in autograd and in every reference)."""

    passed: bool
    rows: np.ndarray
    cols: np.ndarray
    ok: np.ndarray
    ratio: np.ndarray  # error / allowed, worst over references (> 1 fails)
    allowed: np.ndarray  # against the primary reference
    abs_err: np.ndarray
    rel_err: np.ndarray
    errors: dict
    kink: np.ndarray
    primary: str
    reference_disagreement: int = 0
    bias: tuple | None = None  # (median ratio - 1, allowed, entries) when a systematic error failed it

    def worst(self) -> int | None:
        """Index (into the entry arrays) of the worst entry."""
        if self.ratio.size == 0:
            return None
        return int(np.argmax(np.where(np.isnan(self.ratio), np.inf, self.ratio)))

    def failing(self, n_in: int | None = None) -> np.ndarray:
        """The out-of-tolerance entries, worst first (GradientResult.failing): positions in
        the entry arrays, or with n_in (the Jacobian's input size) flat indices into the
        dense Jacobian."""
        order = failing_order(~self.ok, self.ratio)
        if n_in is None:
            return order
        return self.rows[order].astype(np.int64) * n_in + self.cols[order].astype(np.int64)


def entry_scales(rows: np.ndarray, cols: np.ndarray, ref: np.ndarray, m: int, n: int) -> np.ndarray:
    """S per entry: the largest |reference| in its output row or input column."""
    mag = np.where(np.isfinite(ref), np.abs(ref), 0.0)
    row, col = np.zeros(m), np.zeros(n)
    np.maximum.at(row, rows, mag)
    np.maximum.at(col, cols, mag)
    return np.maximum(row[rows], col[cols])


def allowed_error(ref: np.ndarray, scale: np.ndarray, fd_err: np.ndarray | None, tol: dict) -> np.ndarray:
    out = tol["atol"] + tol["rtol"] * np.abs(ref) + tol["scale"] * scale
    if fd_err is not None:
        out = out + FD_SAFETY * np.nan_to_num(fd_err, nan=0.0, posinf=np.inf)
    return out


def judge(rows: np.ndarray, cols: np.ndarray, m: int, n: int, auto: np.ndarray, fd: np.ndarray | None,
          fd_err: np.ndarray | None, sym: np.ndarray | None, tol: dict, kink_lo: np.ndarray | None = None,
          kink_hi: np.ndarray | None = None, extra: np.ndarray | None = None) -> Verdict:
    """Verdict on autograd's entries against finite differences and/or the exact
    derivative (both must agree when both are there).  Kink entries pass when autograd
    lies between the one-sided slopes.  `extra` is added to the allowed error (the
    measured rounding noise of a low-precision backward)."""
    ref_for_scale = sym if sym is not None else fd
    scale = entry_scales(rows, cols, ref_for_scale, m, n)
    finite = np.isfinite(auto)
    ok = finite.copy()
    ratio = np.where(finite, 0.0, np.inf)
    kink = np.zeros(auto.shape, dtype=bool) if kink_lo is None else ~np.isnan(kink_lo)
    errors, goods = {}, {}
    allowed_primary = np.full(auto.shape, np.inf)
    abs_e, rel_e = np.zeros(auto.shape), np.zeros(auto.shape)  # the last reference's: the primary one
    for name, ref, err in (("finite_difference", fd, fd_err), ("symbolic", sym, None)):
        if ref is None:
            continue
        allowed = allowed_error(ref, scale, err, tol)
        if extra is not None:
            allowed = allowed + extra
        abs_e, rel_e = elementwise_errors(auto, ref)
        with np.errstate(all="ignore"):
            good = abs_e <= allowed
            if kink.any():
                good |= kink & (auto >= kink_lo - allowed) & (auto <= kink_hi + allowed)
            q = np.where(abs_e == 0, 0.0, abs_e / allowed)  # 0/0 (exact, allowed 0) is no error
            r = np.where(good, np.minimum(q, 1.0), q)
        ratio = np.maximum(ratio, np.where(np.isnan(r), np.inf, r))
        ok &= good
        errors[name] = {"max_abs_error": max_error(abs_e), "max_rel_error": max_error(rel_e)}
        goods[name] = good
        allowed_primary = allowed
    disagreement = int(np.sum(goods["finite_difference"] != goods["symbolic"])) if len(goods) == 2 else 0
    primary = "symbolic" if sym is not None else ("finite_difference" if fd is not None else "none")
    ref = sym if sym is not None else fd
    bias = systematic_error(auto, ref, scale, extra, kink, tol) if ref is not None and "systematic" in tol else None
    return Verdict(bool(ok.all()) and bias is None, rows, cols, ok, ratio, allowed_primary, abs_e, rel_e, errors,
                   kink, primary, disagreement, bias)


MIN_SYSTEMATIC_ENTRIES = 4


def systematic_error(auto: np.ndarray, ref: np.ndarray, scale: np.ndarray, extra: np.ndarray | None,
                     kink: np.ndarray, tol: dict):
    """(bias, allowed, entries) when autograd is off the reference by one factor beyond what
    low-precision rounding explains, else None.  Over the significant entries, rounding
    errors scatter both ways around 1 in autograd / reference; a scale error moves their
    median.  Significant: finite, off kinks, at least atol, a tenth of the largest entry of
    their row or column, and twice the rounding of the saved output they may be computed
    from (`extra`: a saturated tanh's 1 - tanh^2 is 0 in bfloat16, an output near 1e4
    is known to 64 units: such entries say nothing about a 2% factor)."""
    with np.errstate(all="ignore"):
        mag = np.abs(ref)
        use = (np.isfinite(auto) & np.isfinite(ref) & ~kink & (mag > 0) & (mag >= tol["atol"])
               & (mag >= 0.1 * scale))
        if extra is not None:
            use &= mag >= 2 * extra
        k = auto[use] / ref[use]
    if k.size < MIN_SYSTEMATIC_ENTRIES:
        return None
    median = float(np.median(k))
    spread = 1.4826 * float(np.median(np.abs(k - median)))  # the scatter of one ratio, robustly
    allowed = max(tol["systematic"], 3 * spread / np.sqrt(k.size))
    bias = median - 1.0
    return (bias, allowed, int(k.size)) if abs(bias) > allowed else None


def systematic_diagnostic(wrt: str, bias: tuple, dtype: str) -> Diagnostic:
    """The scale_error a systematic bias test found, with its numbers."""
    b, allowed, count = bias
    return Diagnostic("scale_error", (
        f"d/d{wrt}: autograd is {1 + b:.4g}x the reference over its {count} significant entries (median; "
        f"{b:+.2%}), a systematic error that {dtype} rounding of the computation does not explain (it scatters both "
        f"ways; allowed {allowed:.2%}), though each entry alone is within the elementwise tolerance"), wrt)


# ---- naming the bug ----------------------------------------------------------------------

TORCH_DEFAULT = {"atol": 1e-5, "rtol": 1e-3}  # torch.autograd.gradcheck's defaults


def torch_tolerance_hint(wrt: str, auto: np.ndarray, ref: np.ndarray, ok: np.ndarray, opts) -> list[Diagnostic]:
    """An info note when every failing float64 entry is within torch.autograd.gradcheck's
    default tolerance: the gap is small and systematic, a real small bug or an op whose
    forward is itself an approximation (an adaptive ODE solver: its forward's derivative
    includes how its step sizes move with the input, which no backward differentiates).
    Only under the default tolerances: a user who set them has chosen."""
    if opts.dtype != "float64" or opts.atol is not None or opts.rtol is not None:
        return []
    bad = ~ok
    if not bad.any():
        return []
    a, r = auto[bad], ref[bad]
    with np.errstate(all="ignore"):
        err = np.abs(a - r)
        inside = np.all(np.isfinite(err) & (err <= TORCH_DEFAULT["atol"] + TORCH_DEFAULT["rtol"] * np.abs(r)))
    if not inside:
        return []
    decade = 10.0 ** np.ceil(np.log10(max(float(err.max()), 1e-300)))
    return [Diagnostic("within_torch_tolerance", (
        f"d/d{wrt}: every out-of-tolerance entry is within torch.autograd.gradcheck's default tolerance (atol 1e-5, "
        f"rtol 1e-3), far looser than this gate's float64 default; the largest gap is {float(err.max()):.3g}. If the "
        "op's forward is itself an approximation (an adaptive ODE solver or a root finder stopped at a tolerance: "
        "its computed output moves with the input through its step sizes, which no backward differentiates), its "
        f"derivative is only as accurate as that tolerance: say so with --atol {decade:.0e} (or a spec's atol); "
        "otherwise this is a small, real error in the backward"), wrt)]

def classify(wrt: str, auto: np.ndarray, ref: np.ndarray, allowed: np.ndarray, cols: np.ndarray, x: np.ndarray,
             broadcast_factor: float | None) -> list[Diagnostic]:
    """Name the pattern of a failed Jacobian: a constant factor (scale_error, wrong_sign,
    broadcast_reduction), or a sign flipped on part of the entries (wrong_sign)."""
    a, r, tol = auto.reshape(-1), ref.reshape(-1), allowed.reshape(-1)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(r))):
        return []
    significant = np.abs(r) > 2 * tol  # entries clearly nonzero at this precision
    if not significant.any():
        return []
    k = float(np.median(a[significant] / r[significant]))
    with np.errstate(all="ignore"):
        fits = np.abs(a - k * r) <= tol * max(1.0, abs(k)) + 1e-9 * np.abs(r)
    if fits.all() and k != 0 and abs(k - 1) * np.abs(r[significant]).max() > tol[significant].max():
        return [_factor_diagnostic(wrt, k, broadcast_factor)]
    flipped = significant & (np.abs(a + r) <= tol)
    right = np.abs(a - r) <= tol
    if flipped.any() and np.all(flipped | right):
        return [Diagnostic("wrong_sign", _sign_message(wrt, flipped, right, cols, x), wrt)]
    return []


def _factor_diagnostic(wrt: str, k: float, broadcast_factor: float | None) -> Diagnostic:
    if abs(k + 1) < 1e-6:
        return Diagnostic("wrong_sign", f"d/d{wrt}: autograd has the opposite sign of the reference on every "
                                        "entry", wrt)
    if broadcast_factor and broadcast_factor > 1 and abs(k * broadcast_factor - 1) < 1e-6:
        return Diagnostic("broadcast_reduction", (
            f"d/d{wrt}: autograd is 1/{broadcast_factor:g} of the reference on every entry: {wrt!r} is broadcast "
            f"over {broadcast_factor:g} output elements per element, and the backward averages (mean) over the "
            "broadcast dimension(s) where it must sum"), wrt)
    if broadcast_factor and broadcast_factor > 1 and abs(k / broadcast_factor - 1) < 1e-6:
        return Diagnostic("broadcast_reduction", (
            f"d/d{wrt}: autograd is {broadcast_factor:g}x the reference on every entry: the backward sums over "
            f"the {broadcast_factor:g} broadcast copies once too often"), wrt)
    rel = k - 1
    subtle = " (a subtle scale error: torch's default rtol=1e-3 would let it through)" if abs(rel) < 1e-3 else ""
    return Diagnostic("scale_error", (
        f"d/d{wrt}: autograd is {k:.9g}x the reference on every entry (off by {rel:+.3g} relative){subtle}"), wrt)


def _sign_message(wrt, flipped, right, cols, x) -> str:
    n_in = x.size
    xf = x.reshape(-1)
    region = ""
    if n_in:
        fx, rx = xf[cols[flipped]], xf[cols[right & ~flipped]]
        for text, test in ((f"{wrt} < 0", lambda v: v < 0), (f"{wrt} > 0", lambda v: v > 0),
                           (f"|{wrt}| > 1", lambda v: np.abs(v) > 1), (f"|{wrt}| < 1", lambda v: np.abs(v) < 1)):
            if np.all(test(fx)) and not np.any(test(rx)):
                region = f", exactly where {text}"
                break
    return (f"d/d{wrt}: autograd has the opposite sign of the reference on {int(flipped.sum())} of "
            f"{int((flipped | right).sum())} entries{region}; the others agree")


def worst_entries(verdict: Verdict, auto: np.ndarray, ref: np.ndarray, layout: OutputLayout, wrt: str,
                  in_shape: tuple, against: str, limit: int = 3) -> str:
    """'out[1] / x[1]: autograd 0.5 vs finite differences 0.7 (allowed 1e-9); ...' for the worst entries."""
    bad = np.flatnonzero(~verdict.ok)
    if bad.size == 0:
        return ""
    order = bad[np.argsort(-np.nan_to_num(verdict.ratio[bad], nan=np.inf, posinf=np.inf), kind="stable")][:limit]
    parts = []
    for e in order:
        a, r = auto[e], ref[e]
        parts.append(f"{layout.label(int(verdict.rows[e]))} / {input_label(wrt, in_shape, int(verdict.cols[e]))}: "
                     f"autograd {a:.10g} vs {against} {r:.10g} (abs err {abs(a - r):.3g}, "
                     f"allowed {verdict.allowed[e]:.3g})")
    return "; ".join(parts)
