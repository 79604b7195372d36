"""--mode full: every Jacobian entry of every output w.r.t. every differentiable input.

Finite differences give the structural nonzeros and their values (jacobian.fd_entries);
backward calls seeded by groups of rows give autograd's entries; a group whose entries
disagree, or that leaks gradient onto elements the op does not depend on, is redone one
row at a time so every failure names exact entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradcheck_cli.op import verdict as oc
from gradcheck_cli.op.batched import BatchedForward, VJPMany
from gradcheck_cli.op.checks import ReferenceJacobian, vjp_checks
from gradcheck_cli.op.jacobian import EPS, FDEntries, Grouping, fd_entries, group_rows, one_hot_rows, seed_vectors
from gradcheck_cli.op import forward_ad
from gradcheck_cli.op.order2 import apply_forward_over_reverse, double_backward
from gradcheck_cli.op.noise import noise_note
from gradcheck_cli.op.runner import OpRaised, flat_numpy
from gradcheck_cli.op.state import batched_disagreement, nonfinite_inputs

REFINE_ROWS = 2048  # one-hot backward calls spent localizing failures


@dataclass
class Autograd:
    """Autograd's Jacobian as grouped backward results plus exact (one-row) rows."""

    G: np.ndarray  # (n_groups, N)
    grouping: Grouping
    exact_rows: np.ndarray  # rows known exactly (singleton groups and refined rows)
    exact: np.ndarray  # (len(exact_rows), N)

    def row_lookup(self, m: int) -> np.ndarray:
        pos = np.full(m, -1)
        pos[self.exact_rows] = np.arange(self.exact_rows.size)
        return pos


def _initial(G: np.ndarray, grouping: Grouping) -> Autograd:
    counts = np.bincount(grouping.colors, minlength=grouping.n_groups)
    single = np.flatnonzero(counts[grouping.colors] == 1)
    exact = G[grouping.colors[single]] / grouping.coef[single][:, None]
    return Autograd(G, grouping, single, exact)


def _add_exact(ad: Autograd, rows: np.ndarray, values: np.ndarray) -> Autograd:
    keep = ~np.isin(ad.exact_rows, rows)
    return Autograd(ad.G, ad.grouping, np.concatenate([ad.exact_rows[keep], rows]),
                    np.concatenate([ad.exact[keep], values]))


@dataclass
class InputEntries:
    """Everything compared for one input: entry coordinates and values by each method."""

    rows: np.ndarray
    cols: np.ndarray
    auto: np.ndarray
    fd: np.ndarray
    fd_err: np.ndarray
    sym: np.ndarray | None
    lo: np.ndarray
    hi: np.ndarray


def _entries(ad: Autograd, fd: FDEntries, off: int, sym: np.ndarray | None, m: int,
             fixed: np.ndarray | None = None) -> InputEntries:
    """Every entry to compare: finite differences' nonzeros, autograd's where finite
    differences saw none, and --reference's.  Columns in `fixed` (non-finite input
    elements, never stepped) are left out."""
    e = _all_entries(ad, fd, off, sym, m)
    if fixed is None or not fixed.any():
        return e
    keep = ~fixed[e.cols]
    return InputEntries(*(None if a is None else a[keep] for a in (e.rows, e.cols, e.auto, e.fd, e.fd_err, e.sym,
                                                                    e.lo, e.hi)))


def _all_entries(ad: Autograd, fd: FDEntries, off: int, sym: np.ndarray | None, m: int) -> InputEntries:
    n = fd.n_in
    g = ad.grouping
    pos = ad.row_lookup(m)
    a = ad.G[g.colors[fd.rows], off + fd.cols] / g.coef[fd.rows]
    exact_here = pos[fd.rows] >= 0
    a[exact_here] = ad.exact[pos[fd.rows[exact_here]], off + fd.cols[exact_here]]
    pattern_keys = fd.rows * n + fd.cols
    # autograd's nonzeros in exact rows where finite differences saw no dependence
    block = ad.exact[:, off:off + n]
    ri, ci = np.nonzero(block)
    keys = ad.exact_rows[ri] * n + ci
    fresh = ~np.isin(keys, pattern_keys)
    off_rows, off_cols, off_vals = ad.exact_rows[ri[fresh]], ci[fresh], block[ri[fresh], ci[fresh]]
    rows = [fd.rows, off_rows]
    cols = [fd.cols, off_cols]
    auto = [a, off_vals]
    if sym is not None:  # exact nonzeros neither method put an entry on
        sr, sc = np.nonzero(sym)
        skeys = sr * n + sc
        extra = ~np.isin(skeys, np.concatenate([pattern_keys, off_rows * n + off_cols]))
        sr, sc = sr[extra], sc[extra]
        sa = np.where(pos[sr] >= 0, ad.exact[np.maximum(pos[sr], 0), off + sc],
                      ad.G[g.colors[sr], off + sc] / g.coef[sr])
        rows.append(sr)
        cols.append(sc)
        auto.append(sa)
    rows, cols, auto = np.concatenate(rows), np.concatenate(cols), np.concatenate(auto)
    k = fd.rows.size
    fd_vals = np.zeros(rows.size)
    fd_vals[:k] = fd.est
    fd_err = fd.rounding(rows, cols)
    fd_err[:k] = fd.err
    lo, hi = np.full(rows.size, np.nan), np.full(rows.size, np.nan)
    lo[:k], hi[:k] = fd.lo, fd.hi
    sym_vals = None if sym is None else sym[rows, cols]
    return InputEntries(rows, cols, auto, fd_vals, fd_err, sym_vals, lo, hi)


def _scales(entries: dict, m: int, offsets: dict, sizes: dict) -> tuple[np.ndarray, np.ndarray]:
    """Largest |reference| per output row (m,) and per global input column (N,)."""
    srow = np.zeros(m)
    scol = np.zeros(sum(sizes.values()))
    for w, e in entries.items():
        ref = e.sym if e.sym is not None else e.fd
        mag = np.where(np.isfinite(ref), np.abs(ref), 0.0)
        np.maximum.at(srow, e.rows, mag)
        np.maximum.at(scol, offsets[w] + e.cols, mag)
    return srow, scol


def _leaks(ad: Autograd, fds: dict, offsets: dict, m: int, tol: dict, srow: np.ndarray, scol: np.ndarray):
    """Multi-row groups whose gradient lands where none of their rows depends: (groups, count)."""
    g = ad.grouping
    counts = np.bincount(g.colors, minlength=g.n_groups)
    multi = np.flatnonzero(counts > 1)
    if multi.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    exact_set = np.zeros(m, dtype=bool)
    exact_set[ad.exact_rows] = True
    leftover = ad.G.copy()
    noise = np.zeros(m)
    inv_h = np.zeros(leftover.shape[1])
    for w, fd in fds.items():
        leftover[g.colors[fd.rows], offsets[w] + fd.cols] = 0.0
        noise = np.maximum(noise, fd.noise)
        inv_h[offsets[w]:offsets[w] + fd.n_in] = 1.0 / fd.steps
    ac = np.abs(g.coef)
    a_g = np.bincount(g.colors, weights=ac, minlength=g.n_groups)
    b_g = np.bincount(g.colors, weights=ac * srow, minlength=g.n_groups)
    c_g = np.bincount(g.colors, weights=ac * noise, minlength=g.n_groups)
    sub = leftover[multi]
    allowed = (a_g[multi, None] * (tol["atol"] + tol["scale"] * scol[None]) + tol["scale"] * b_g[multi, None]
               + oc.FD_SAFETY * c_g[multi, None] * inv_h[None])
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(sub) <= allowed)
    # groups whose rows are all exact already are localized elsewhere
    all_exact = np.bincount(g.colors, weights=exact_set.astype(float), minlength=g.n_groups) == counts
    bad_groups = multi[bad.any(axis=1) & ~all_exact[multi]]
    return bad_groups, int(bad[~all_exact[multi]].sum())


def run_full(pt, tensors: dict, outs: list, layout: oc.OutputLayout, f64, sym) -> tuple:
    """Full-mode gradient results for the point (diagnostics go to pt)."""
    spec, opts = pt.prep.spec, pt.opts
    wrt = list(spec.wrt)
    m = layout.m
    fd_dtype = "float64" if f64 is not None else opts.dtype
    f0 = f64 if f64 is not None else flat_numpy(outs)
    scheme = opts.scheme if fd_dtype == "float64" else "central"
    if opts.fd == "complex":
        pt.note("fd_fallback", "complex-step differences need an op that accepts complex inputs and is "
                               "real-analytic; a black-box op is differenced with richardson instead")
    pt.extra["fd_scheme"] = scheme
    fds: dict[str, FDEntries] = {}
    batches: dict[str, BatchedForward] = {}
    nonfinite_inputs(pt, wrt)
    inputs = [tensors[w] for w in wrt]
    vjps = VJPMany(outs, inputs)
    try:
        for w in wrt:
            batches[w] = BatchedForward(spec, pt.ref_arrays, w, fd_dtype, opts.device, list(layout.shapes), pt.rng)
            noise_note(pt, w, batches[w], EPS[fd_dtype])
            fds[w] = fd_entries(batches[w], pt.ref_arrays[w], f0, scheme, opts.eps, EPS[fd_dtype])
        sizes = {w: fds[w].n_in for w in wrt}
        offsets = dict(zip(wrt, np.cumsum([0] + [sizes[w] for w in wrt])[:-1].tolist()))
        for attempt in range(2):
            grouping = group_rows([fds[w] for w in wrt], [offsets[w] for w in wrt], m, pt.rng)
            ad = _initial(vjps(seed_vectors(grouping, m)), grouping)
            entries, verdicts, unlocalized = _localize(pt, ad, vjps, fds, offsets, sizes, sym, m)
            # shortcuts are trusted only while they agree: before failing a gradient, check the
            # batched forward against plain calls, and find the nonzeros one element at a time
            redo = []
            for w in wrt:
                if not verdicts[w].passed:
                    agrees = _batching_agrees(batches[w], fds[w], entries[w], verdicts[w])
                    if not agrees or fds[w].pattern == "bits":
                        redo.append(w)
            if not redo or attempt:
                break
            for w in redo:
                fds[w] = fd_entries(batches[w], pt.ref_arrays[w], f0, scheme, opts.eps, EPS[fd_dtype],
                                    try_bits=False)
    except OpRaised as exc:
        if exc.phase.startswith("forward"):
            pt.fail("op_error", f"the op raised near the point, during finite differences ({exc.phase}): "
                                f"{exc.message}")
        else:
            from gradcheck_cli.op.state import op_raised

            op_raised(pt, exc)
        return ()
    pt.extra["calls"] = {"forward_rows": int(sum(fd.rows_evaluated for fd in fds.values())),
                         "jacobian_backward": vjps.calls}
    batched_disagreement(pt, vjps)
    pt.extra["fd_batching"] = {w: fds[w].mode for w in wrt}
    results, refs, jac_ok = _results(pt, layout, fds, entries, verdicts, unlocalized, sym, vjps, offsets, grouping)
    run_backward_checks(pt, outs, tensors, layout, lambda w, v, g: refs[w].vjp(v), jac_ok)
    forward_ad.apply_full(pt, refs, outs, tensors, layout, jac_ok)
    if opts.order == 2:
        _order2(pt, layout, refs, f64 is not None)
    return results


def _batching_agrees(batch: BatchedForward, fd: FDEntries, e: InputEntries, v: oc.Verdict) -> bool:
    """Whether the worst failing entry's finite difference, redone with plain calls, is what
    the batched calls gave.  When not, batching is abandoned for this input (loop mode)."""
    if batch.mode == "loop":
        return True
    bad = np.flatnonzero(~v.ok & (np.arange(v.ok.size) < fd.rows.size))
    if bad.size == 0:
        return True
    k = bad[np.argmax(np.nan_to_num(v.ratio[bad], posinf=np.inf))]
    o, j = int(e.rows[k]), int(e.cols[k])
    x = batch.x()
    h = fd.steps[j]
    rows = np.repeat(x[None], 2, axis=0)
    rows[0, j] += h
    rows[1, j] -= h
    plain = np.stack([batch._plain(r) for r in rows])[:, o]
    estimate = (plain[0] - plain[1]) / (2 * h)
    if abs(estimate - fd.est[k]) <= 10 * fd.err[k] + 1e-12 * max(1.0, abs(estimate)):
        return True
    batch.mode = "loop"
    return False


def run_backward_checks(pt, outs: list, tensors: dict, layout, expect, jac_ok: dict) -> None:
    """grad_output variety (skipped when the backward already raised), reported with the
    determinism check's outcome."""
    apply_backward_checks(pt, backward_checks(pt, outs, tensors, layout, expect, jac_ok))


def backward_checks(pt, outs: list, tensors: dict, layout, expect, jac_ok: dict):
    """Run grad_output variety; its outcome (None when skipped because the backward already
    raised) goes into the report with apply_backward_checks."""
    if any(d.code in ("op_error", "wrong_shape") for d in pt.diags):
        return None
    wrt = list(pt.prep.spec.wrt)
    return vjp_checks(outs, [tensors[w] for w in wrt], wrt, expect, jac_ok, layout.m, pt.tol, pt.rng, layout)


def apply_backward_checks(pt, res) -> None:
    """backward_checks' diagnostics and call count into the point's report (determinism's
    are added after them: ops._report_determinism)."""
    if res is None or any(d.code in ("op_error", "wrong_shape") for d in pt.diags):
        return
    for d in res.diagnostics:
        (pt.note if d.code in oc.INFO_CODES else pt.fail)(d.code, d.message, d.wrt)
    pt.extra.setdefault("calls", {})["checks_backward"] = res.calls


def _localize(pt, ad: Autograd, vjps: VJPMany, fds: dict, offsets: dict, sizes: dict, sym, m: int):
    """Judge every input; redo failing groups one row at a time (bounded); judge again."""
    spent = 0
    while True:
        entries = {w: _entries(ad, fd, offsets[w], None if sym is None else sym[w], m, pt.fixed.get(w))
                   for w, fd in fds.items()}
        verdicts = {w: oc.judge(e.rows, e.cols, m, fds[w].n_in, e.auto, e.fd, e.fd_err, e.sym, pt.tol, e.lo, e.hi,
                                pt.tol["output"] * np.abs(fds[w].f0[e.rows]))
                    for w, e in entries.items()}
        srow, scol = _scales(entries, m, offsets, sizes)
        leak_groups, leak_count = _leaks(ad, fds, offsets, m, pt.tol, srow, scol)
        exact = np.zeros(m, dtype=bool)
        exact[ad.exact_rows] = True
        bad_rows = np.concatenate([e.rows[~v.ok] for e, v in zip(entries.values(), verdicts.values())])
        bad_groups = np.union1d(ad.grouping.colors[bad_rows[~exact[bad_rows]]], leak_groups)
        todo = np.flatnonzero(np.isin(ad.grouping.colors, bad_groups) & ~exact)
        todo = todo[:max(0, REFINE_ROWS - spent)]
        if todo.size == 0:
            return entries, verdicts, leak_count
        ad = _add_exact(ad, todo, one_hot_rows(vjps, todo, m))
        spent += todo.size


def _results(pt, layout, fds, entries, verdicts, unlocalized, sym, vjps, offsets, grouping):
    spec = pt.prep.spec
    wrt = list(spec.wrt)
    m = layout.m
    results, refs, jac_ok = [], {}, {}
    srow, scol = _scales(entries, m, offsets, {w: fds[w].n_in for w in wrt})
    dense_auto, dense_ref, dense_allowed = {}, {}, {}
    for k, w in enumerate(wrt):
        fd, e, v = fds[w], entries[w], verdicts[w]
        in_shape = tuple(np.shape(pt.arrays[w]))
        n = fd.n_in
        ref_vals = e.sym if e.sym is not None else e.fd
        A = np.zeros((m, n))
        A[e.rows, e.cols] = e.auto
        F = np.zeros((m, n))
        F[fd.rows, fd.cols] = fd.est
        E = np.zeros((m, n))
        E[fd.rows, fd.cols] = fd.err
        shape = tuple(layout.report_shape) + in_shape
        worst = v.worst()
        worst_index = None
        if worst is not None:
            worst_index = tuple(int(i) for i in np.unravel_index(int(e.rows[worst]), layout.report_shape)) + \
                tuple(int(i) for i in np.unravel_index(int(e.cols[worst]), in_shape))
        passed = v.passed  # a None gradient is zeros: it passes exactly when zeros are right
        missing = k in vjps.none
        results.append(oc.OpGradientResult(
            wrt=w, shape=shape, input_shape=in_shape, output_shape=tuple(layout.report_shape),
            autograd=A.reshape(shape), symbolic=None if sym is None else sym[w].reshape(shape),
            finite_difference=F.reshape(shape), fd_error_estimate=E.reshape(shape), fd_computed=None,
            max_abs_error=oc.max_error(v.abs_err), max_rel_error=oc.max_error(v.rel_err), reference=v.primary,
            worst_index=worst_index, passed=passed, tolerance=dict(pt.tol), errors=v.errors,
            failed_elements=int((~v.ok).sum()), failing=v.failing(n), layout=layout,
            details={"method": {"fd_batching": fd.mode, "fd_groups": fd.groups, "fd_rows": fd.rows_evaluated,
                                "backward_groups": grouping.n_groups, "entries_compared": int(e.rows.size)}}))
        jac_ok[w] = passed
        # at an accepted kink any value between the one-sided slopes is right: the VJP checks
        # then hold the backward to the value it already gave there
        vjp_ref = np.where(v.kink & v.ok, e.auto, ref_vals)
        refs[w] = ReferenceJacobian(e.rows, e.cols, vjp_ref, v.allowed, pt.tol["atol"] + pt.tol["scale"] * srow,
                                    pt.tol["scale"] * scol[offsets[w]:offsets[w] + n], n, fd.noise, fd.steps)
        _input_diagnostics(pt, w, k, layout, fd, e, v, in_shape, missing, sym is not None)
        if not v.passed:
            dense_auto[w], dense_allowed[w] = A, np.full((m, n), pt.tol["atol"])
            dense_allowed[w][e.rows, e.cols] = v.allowed
            R = np.zeros((m, n))
            R[e.rows, e.cols] = ref_vals
            dense_ref[w] = R
    if unlocalized:
        pt.fail("gradient_leak", (
            f"autograd puts gradient on {unlocalized} input element(s) no output it was seeded with depends on "
            f"(seen in grouped backward calls; more than {REFINE_ROWS} rows would be needed to name them)"))
    if len(dense_auto) >= 2:
        pt.diags.extend(oc.swapped(list(dense_auto), dense_auto, dense_ref, dense_allowed))
    return results, refs, jac_ok


def _input_diagnostics(pt, w, k, layout, fd, e, v, in_shape, missing, have_sym) -> None:
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


def _order2(pt, layout, refs: dict, f64_ok: bool) -> None:
    spec, opts = pt.prep.spec, pt.opts
    m = layout.m
    v = pt.rng.standard_normal(m)
    u = {w: pt.rng.standard_normal(refs[w].n) for w in spec.wrt}
    expected = np.zeros(m)
    allowed = np.zeros(m)
    for w, r in refs.items():
        expected += np.bincount(r.rows, weights=r.values * u[w][r.cols], minlength=m)
        allowed += np.bincount(r.rows, weights=r.allowed * np.abs(u[w][r.cols]), minlength=m)
        allowed += r.floor_row * np.abs(u[w]).sum() + float(np.abs(u[w]) @ r.floor_col)
    outcome = double_backward(spec, pt.arrays, pt.ref_arrays, opts.dtype, opts.device, v, pt.tol, opts.eps,
                              pt.rng, f64_ok, (u, expected, allowed))
    for d in outcome.diagnostics:
        (pt.note if d.code == "order2_sampled" else pt.fail)(d.code, d.message, d.wrt)
    if outcome.hessian is not None:
        pt.extra["hessian"] = outcome.hessian
    apply_forward_over_reverse(pt, v, f64_ok)

