"""Full mode's verdicts into the report: one OpGradientResult per input, its diagnostics,
the reference Jacobians the later checks compare with, and swapped gradients.

A Jacobian of up to jsonform.DENSE_LIMIT entries (or a dense one) is stored as arrays of
its own shape (output shape + input shape), as the contract's JSON writes it; a larger
sparse one as its entries (the `entries` form fast mode's results and the JSON already
use): (output, input) pairs with each method's value, so a diagonal Jacobian of 1e5
elements costs 1e5 entries, not 1e10.
"""

from __future__ import annotations

import math

import numpy as np

from gradcheck_cli.jsonform import DENSE_LIMIT
from gradcheck_cli.op import verdict as oc
from gradcheck_cli.op.checks import ReferenceJacobian
from gradcheck_cli.op.full_entries import InputEntries
from gradcheck_cli.report import Diagnostic

DENSE_SHARE = 4  # a Jacobian past DENSE_LIMIT stays dense when at least 1/DENSE_SHARE of it is compared


def results(pt, layout, fds: dict, found: dict, verdicts: dict, unlocalized: int, sym, vjps, offsets: dict,
            grouping, refine_rows: int, ref_scales: tuple) -> tuple:
    """(gradient results, reference Jacobians, whether each input's Jacobian passed).
    `ref_scales`: full_entries.scales of `found` (the largest |reference| per row and column)."""
    wrt = list(pt.prep.spec.wrt)
    out, refs, jac_ok = [], {}, {}
    srow, scol = ref_scales
    failing = {}
    for k, w in enumerate(wrt):
        fd, e, v = fds[w], found[w], verdicts[w]
        in_shape = tuple(np.shape(pt.arrays[w]))
        n = fd.n_in
        ref_vals = e.sym if e.sym is not None else e.fd
        method = {"fd_batching": fd.mode, "fd_groups": fd.groups, "fd_rows": fd.rows_evaluated,
                  "backward_groups": grouping.n_groups, "entries_compared": int(e.rows.size)}
        if fd.pattern != "columns":
            method["fd_pattern"] = fd.pattern
        out.append(_gradient(pt, w, layout, in_shape, fd, e, v, None if sym is None else sym[w], method))
        jac_ok[w] = v.passed  # a None gradient is zeros: it passes exactly when zeros are right
        # at an accepted kink any value between the one-sided slopes is right: the VJP checks
        # then hold the backward to the value it already gave there
        vjp_ref = np.where(v.kink & v.ok, e.auto, ref_vals)
        refs[w] = ReferenceJacobian(e.rows, e.cols, vjp_ref, v.allowed, pt.tol["atol"] + pt.tol["scale"] * srow,
                                    pt.tol["scale"] * scol[offsets[w]:offsets[w] + n], n, fd.noise, fd.steps)
        input_diagnostics(pt, w, layout, fd, e, v, in_shape, k in vjps.none, sym is not None)
        if not v.passed:
            failing[w] = (e, ref_vals, v.allowed, n)
    if unlocalized:
        pt.fail("gradient_leak", (
            f"autograd puts gradient on {unlocalized} input element(s) no output it was seeded with depends on "
            f"(seen in grouped backward calls; more than {refine_rows} rows would be needed to name them)"))
    if len(failing) >= 2:
        pt.diags.extend(swapped(failing, pt.tol["atol"]))
    return out, refs, jac_ok


def _gradient(pt, w, layout, in_shape, fd, e: InputEntries, v, sym_w, method) -> oc.OpGradientResult:
    m, n = layout.m, fd.n_in
    out_shape = tuple(layout.report_shape)
    worst = v.worst()
    common = dict(wrt=w, input_shape=in_shape, output_shape=out_shape, fd_computed=None,
                  max_abs_error=oc.max_error(v.abs_err), max_rel_error=oc.max_error(v.rel_err), reference=v.primary,
                  passed=v.passed, tolerance=dict(pt.tol), errors=v.errors, failed_elements=int((~v.ok).sum()),
                  layout=layout, details={"method": method})
    if m * n > DENSE_LIMIT and e.rows.size * DENSE_SHARE < m * n:  # large and sparse: its entries
        return oc.OpGradientResult(shape=(int(e.rows.size),), autograd=e.auto, symbolic=e.sym, finite_difference=e.fd,
                                   fd_error_estimate=e.fd_err, worst_index=None if worst is None else (worst,),
                                   failing=v.failing(), entries=np.stack([e.rows, e.cols], axis=1), **common)
    shape = out_shape + in_shape
    A = np.zeros((m, n))
    A[e.rows, e.cols] = e.auto
    F = np.zeros((m, n))
    F[fd.rows, fd.cols] = fd.est
    E = np.zeros((m, n))
    E[fd.rows, fd.cols] = fd.err
    worst_index = None
    if worst is not None:
        worst_index = tuple(int(i) for i in np.unravel_index(int(e.rows[worst]), out_shape)) + \
            tuple(int(i) for i in np.unravel_index(int(e.cols[worst]), in_shape))
    return oc.OpGradientResult(shape=shape, autograd=A.reshape(shape),
                               symbolic=None if sym_w is None else sym_w.reshape(shape),
                               finite_difference=F.reshape(shape), fd_error_estimate=E.reshape(shape),
                               worst_index=worst_index, failing=v.failing(n), **common)


def swapped(failing: dict, atol: float) -> list[Diagnostic]:
    """Two failing inputs of one size whose gradients match each other's references
    (autograd's d/da is the reference d/db and the other way round), on the entries either
    compares: every other entry is 0 in both, within atol."""
    names = list(failing)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (ea, ra, la, na), (eb, rb, lb, nb) = failing[a], failing[b]
            if na != nb:
                continue
            ka, kb = ea.rows.astype(np.int64) * na + ea.cols, eb.rows.astype(np.int64) * nb + eb.cols
            keys = np.union1d(ka, kb)
            at_a, at_b = _aligned(ka, keys), _aligned(kb, keys)
            auto_a, auto_b = at_a(ea.auto, 0.0), at_b(eb.auto, 0.0)
            ref_a, ref_b = at_a(ra, 0.0), at_b(rb, 0.0)
            allow_a, allow_b = at_a(la, atol), at_b(lb, atol)
            with np.errstate(all="ignore"):
                ab = np.all(np.abs(auto_a - ref_b) <= allow_b)
                ba = np.all(np.abs(auto_b - ref_a) <= allow_a)
                same = np.all(np.abs(ref_a - ref_b) <= allow_a)
            if ab and ba and not same:
                out.append(Diagnostic("swapped_gradients", (
                    f"the gradients of {a!r} and {b!r} are swapped: autograd's d/d{a} matches the reference "
                    f"d/d{b} and the other way round"), a))
    return out


def _aligned(k: np.ndarray, keys: np.ndarray):
    """(vals, fill) -> vals (one per key in k) at `keys`, fill where k lacks a key: k sorted
    and searched once for every array read."""
    order = np.argsort(k, kind="stable")
    sk = k[order]
    pos = np.minimum(np.searchsorted(sk, keys), max(sk.size - 1, 0))
    hit = sk[pos] == keys if sk.size else np.zeros(keys.size, dtype=bool)

    def at(vals: np.ndarray, fill: float) -> np.ndarray:
        return np.where(hit, vals[order][pos] if sk.size else fill, fill)

    return at


def input_diagnostics(pt, w, layout, fd, e, v, in_shape, missing, have_sym) -> None:
    """One input's diagnostics: a None gradient, non-finite entries, a systematic or an
    elementwise mismatch (named where the numbers show a pattern), kinks, and references
    that disagree with each other."""
    ref_vals = e.sym if e.sym is not None else e.fd
    against = "symbolic" if have_sym else "finite differences"
    if missing:
        if fd.rows.size and v.passed:  # zeros are right here: None means zeros, as in torch
            pt.note("none_gradient_zero", f"the backward returned None for {w!r}; finite differences agree with a "
                                          "zero gradient at this point (within tolerance, kinks allowed for), so "
                                          "None is read as zeros, as torch does", w)
        elif fd.rows.size:
            o, j = int(fd.rows[np.argmax(np.abs(fd.est))]), int(fd.cols[np.argmax(np.abs(fd.est))])
            pt.fail("missing_gradient", (
                f"the backward returned None for {w!r}, which requires grad, but the output depends on it "
                f"(finite differences: d{layout.label(o)}/d{oc.input_label(w, in_shape, j)} = "
                f"{float(np.max(np.abs(fd.est))):.6g} in magnitude); return a gradient for every input that "
                "requires grad"), w)
        else:
            pt.note("no_dependence", f"the backward returned None for {w!r} and the output does not depend on it", w)
    if not np.all(np.isfinite(e.auto)):
        bad = np.flatnonzero(~np.isfinite(e.auto))[0]
        pt.fail("nonfinite", (
            f"autograd gives {e.auto[bad]:.6g} for d{layout.label(int(e.rows[bad]))}/"
            f"d{oc.input_label(w, in_shape, int(e.cols[bad]))} where {against} give(s) {ref_vals[bad]:.6g}"
            + (f" (the backward overflows in {pt.opts.dtype})" if np.isfinite(ref_vals[bad]) else "")), w)
    if v.bias is not None and v.ok.all():
        d = oc.systematic_diagnostic(w, v.bias, pt.opts.dtype)
        pt.fail(d.code, d.message, d.wrt)
    elif not v.passed:
        n_bad = int((~v.ok).sum())
        worst = oc.worst_entries(v, e.auto, ref_vals, layout, w, in_shape, against)
        pt.fail("gradient_mismatch", f"d/d{w}: {n_bad} of {e.rows.size} Jacobian entries out of tolerance; "
                                     f"worst: {worst}", w)
        pt.diags.extend(oc.classify(w, e.auto, ref_vals, v.allowed, e.cols, np.asarray(pt.ref_arrays[w]),
                                    broadcast_factor(layout, in_shape)))
        pt.diags.extend(oc.torch_tolerance_hint(w, e.auto, ref_vals, v.ok, pt.opts))
    if v.kink.any():
        i = int(np.flatnonzero(v.kink)[0])
        pt.note("non_differentiable", (
            f"d{layout.label(int(e.rows[i]))}/d{oc.input_label(w, in_shape, int(e.cols[i]))}: a kink within a "
            f"finite-difference step (one-sided slopes {e.lo[i]:.6g} and {e.hi[i]:.6g}, autograd {e.auto[i]:.6g}); "
            f"any value between the slopes is accepted there ({int(v.kink.sum())} such entries)"), w)
    if v.reference_disagreement:
        pt.note("reference_disagreement", (
            f"d/d{w}: finite differences of the op and --reference's exact derivatives disagree about autograd on "
            f"{v.reference_disagreement} entries (is the reference the op's exact forward?)"), w)


def broadcast_factor(layout, in_shape: tuple) -> float | None:
    """How many output elements each input element is broadcast over (one output whose
    shape the input broadcasts to), else None."""
    if len(layout.shapes) != 1:
        return None
    out_shape = layout.shapes[0]
    n = math.prod(in_shape)
    try:
        fits = tuple(np.broadcast_shapes(in_shape, out_shape)) == tuple(out_shape)
    except ValueError:
        return None
    if not fits or n == 0 or math.prod(out_shape) <= n:
        return None
    return math.prod(out_shape) / n
