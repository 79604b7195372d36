"""--mode fast: for inputs too large for every Jacobian entry.

1. Random projections v^T J u (private seeded generator): autograd gives v^T J in one
   backward call, finite differences give J u in four forward calls (central, with step
   halving for the error estimate); a dense bug anywhere shows in every projection.
2. Sampled rows to localize: a few output rows are computed exactly by one-hot backward
   calls; the input elements they depend on (plus a few random ones) are differenced one
   by one, and everything else in one random direction, so a gradient that lands where
   the op does not depend still shows.  Failures name exact entries.

Fast mode can miss a bug confined to rows it did not sample; the report says how many
rows and entries it compared.
"""

from __future__ import annotations

import numpy as np

from gradcheck_cli import ops_compare as oc
from gradcheck_cli.ops_jacobian import EPS, one_hot_rows, projection_fd, step_sizes
from gradcheck_cli.ops_runner import BatchedForward, OpRaised, VJPMany, flat_numpy
from gradcheck_cli.report import Diagnostic

PROJECTIONS = 4
SAMPLED_ROWS = 8
EXTRA_COLUMNS = 8
MAX_COLUMNS = 256
COLUMN_BUDGET = 20_000_000  # element evaluations for the one-by-one columns


def run_fast(pt, tensors: dict, outs: list, layout: oc.OutputLayout, f64, sym) -> tuple:
    """Fast-mode gradient results for the point (diagnostics go to pt)."""
    from gradcheck_cli.ops_full import _broadcast_factor, run_backward_checks

    spec, opts = pt.prep.spec, pt.opts
    wrt = list(spec.wrt)
    m = layout.m
    fd_dtype = "float64" if f64 is not None else opts.dtype
    eps_dtype = EPS[fd_dtype]
    f0 = f64 if f64 is not None else flat_numpy(outs)
    pt.extra["fd_scheme"] = "central"
    sizes = {w: int(np.prod(np.shape(pt.arrays[w]))) for w in wrt}
    offsets = dict(zip(wrt, np.cumsum([0] + [sizes[w] for w in wrt])[:-1].tolist()))
    inputs = [tensors[w] for w in wrt]
    vjps = VJPMany(outs, inputs)
    rng = pt.rng
    V = rng.standard_normal((PROJECTIONS, m))
    U = {w: rng.standard_normal((PROJECTIONS, sizes[w])) for w in wrt}
    rows = np.sort(rng.choice(m, size=min(m, SAMPLED_ROWS), replace=False))
    try:
        G = vjps(V)
        exact = one_hot_rows(vjps, rows, m)
        batches = {w: BatchedForward(spec, pt.ref_arrays, w, fd_dtype, opts.device, list(layout.shapes), rng)
                   for w in wrt}
        results = []
        for w in wrt:
            results.append(_one_input(pt, w, layout, batches[w], f0, G, V, U[w], rows, exact, offsets[w], sizes[w],
                                      None if sym is None else sym[w], eps_dtype, vjps,
                                      _broadcast_factor(layout, tuple(np.shape(pt.arrays[w])))))
    except OpRaised as exc:
        from gradcheck_cli.ops import _op_raised

        _op_raised(pt, exc)
        return ()
    pt.extra["calls"] = {"forward_rows": int(sum(b.calls for b in batches.values())),
                         "jacobian_backward": vjps.calls}
    pt.extra["fd_batching"] = {w: batches[w].mode for w in wrt}
    pt.extra["sampled_rows"] = [layout.label(int(o)) for o in rows]
    tol = pt.tol

    def expect(w, v, g):
        scale = float(np.max(np.abs(g))) if g.size and np.all(np.isfinite(g)) else 0.0
        return None, tol["atol"] + tol["rtol"] * np.abs(g) + max(tol["scale"], 16 * EPS[opts.dtype]) * scale

    run_backward_checks(pt, outs, tensors, layout, expect, {w: r.passed for w, r in zip(wrt, results)})
    if opts.order == 2:
        from gradcheck_cli.ops_checks import double_backward

        outcome = double_backward(spec, pt.arrays, pt.ref_arrays, opts.dtype, opts.device, rng.standard_normal(m),
                                  tol, opts.eps, rng, f64 is not None, None)
        for d in outcome.diagnostics:
            (pt.note if d.code == "order2_sampled" else pt.fail)(d.code, d.message, d.wrt)
        if outcome.hessian is not None:
            pt.extra["hessian"] = outcome.hessian
    return tuple(results)


def _one_input(pt, w, layout, batch, f0, G, V, U, rows, exact, off, n, sym, eps_dtype, vjps, bfactor):
    tol = pt.tol
    x = np.asarray(pt.ref_arrays[w], dtype=np.float64).reshape(-1)
    in_shape = tuple(np.shape(pt.arrays[w]))
    # 1. projections
    s_ad = np.einsum("kn,kn->k", G[:, off:off + n], U)
    ju, ju_err = projection_fd(batch, x, U, f0, pt.opts.eps, eps_dtype)
    s_fd = np.einsum("km,km->k", V, ju)
    s_err = np.einsum("km,km->k", np.abs(V), ju_err)
    terms = np.einsum("kn,kn->k", np.abs(G[:, off:off + n]), np.abs(U))
    refs = [("finite differences", s_fd, s_err)]
    if sym is not None:
        refs.append(("symbolic", np.einsum("km,km->k", V, U @ sym.T), np.zeros(PROJECTIONS)))
    proj_ok = np.isfinite(s_ad)
    rounding = tol["output"] * (np.abs(V) @ np.abs(f0)) * np.max(np.abs(U), axis=1)  # see ops_compare
    for label, s_ref, err in refs:
        allowed = (tol["atol"] + tol["rtol"] * np.abs(s_ref) + tol["scale"] * terms + rounding
                   + oc.FD_SAFETY * err)
        with np.errstate(invalid="ignore"):
            good = np.abs(s_ad - s_ref) <= allowed
        if not good.all():
            k = int(np.flatnonzero(~good)[0])
            pt.fail("projection_mismatch", (
                f"d/d{w}: random projection v^T J u #{k}: autograd {s_ad[k]:.10g} vs {label} {s_ref[k]:.10g} "
                f"(allowed {allowed[k]:.3g}); {int((~good).sum())} of {PROJECTIONS} projections disagree"), w)
            ratios = s_ad / s_ref
            if np.all(np.isfinite(ratios)) and np.ptp(ratios) <= 1e-6 * np.max(np.abs(ratios)):
                pt.diags.extend(oc.classify(w, s_ad, s_ref, allowed, np.zeros(PROJECTIONS, dtype=np.int64),
                                            np.zeros(1), bfactor))
        proj_ok &= good
    # 2. sampled rows: exact autograd rows, finite differences on the columns they touch
    block = exact[:, off:off + n]
    cols = np.unique(np.nonzero(block)[1])
    extra = pt.rng.choice(n, size=min(n, EXTRA_COLUMNS), replace=False)
    cols = np.union1d(cols, extra)
    limit = int(min(MAX_COLUMNS, max(16, COLUMN_BUDGET // (4 * (n + layout.m)))))
    if cols.size > limit:  # the rest is covered, in aggregate, by the remainder direction
        cols = np.sort(pt.rng.choice(cols, size=limit, replace=False))
    fd_vals, fd_err = _columns(batch, x, cols, rows, f0, pt.opts.eps, eps_dtype)  # (R, C)
    auto = block[:, cols]
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    sym_vals = None if sym is None else sym[rr, cc].reshape(-1)
    v = oc.judge(rr.reshape(-1), cc.reshape(-1), layout.m, n, auto.reshape(-1), fd_vals.reshape(-1),
                 fd_err.reshape(-1), sym_vals, tol, extra=tol["output"] * np.abs(f0[rr.reshape(-1)]))
    rest_ok = _remainder(pt, w, layout, batch, x, cols, rows, block, f0, eps_dtype)
    passed = bool(proj_ok.all()) and v.passed and rest_ok
    if not v.passed:
        against = "symbolic" if sym is not None else "finite differences"
        ref_vals = sym_vals if sym_vals is not None else fd_vals.reshape(-1)
        pt.fail("gradient_mismatch", f"d/d{w}: {int((~v.ok).sum())} of {v.ok.size} sampled Jacobian entries out of "
                                     f"tolerance; worst: "
                                     f"{oc.worst_entries(v, auto.reshape(-1), ref_vals, layout, w, in_shape, against)}",
                w)
        if not any(d.wrt == w and d.code in ("scale_error", "wrong_sign", "broadcast_reduction") for d in pt.diags):
            pt.diags.extend(oc.classify(w, auto.reshape(-1), ref_vals, v.allowed, cc.reshape(-1), x, bfactor))
    if not np.all(np.isfinite(auto)):
        pt.fail("nonfinite", f"autograd gives non-finite values for d/d{w} in {pt.opts.dtype}", w)
    if list(pt.prep.spec.wrt).index(w) in vjps.none:
        if np.any(fd_vals != 0) or np.any(s_fd != 0):
            pt.fail("missing_gradient", f"the backward returned None for {w!r}, which requires grad, but the "
                                        "output depends on it", w)
            passed = False
    pairs = np.stack([rr.reshape(-1), cc.reshape(-1)], axis=1)
    worst = v.worst()
    k = auto.size
    return oc.OpGradientResult(
        wrt=w, shape=(k,), input_shape=in_shape, output_shape=tuple(layout.report_shape),
        autograd=auto.reshape(-1), symbolic=sym_vals, finite_difference=fd_vals.reshape(-1),
        fd_error_estimate=fd_err.reshape(-1), fd_computed=None, max_abs_error=oc._max(v.abs_err),
        max_rel_error=oc._max(v.rel_err), reference=v.primary, worst_index=None if worst is None else (worst,),
        passed=passed, tolerance=dict(tol), errors=v.errors, failed_elements=int((~v.ok).sum()), layout=layout,
        entries=pairs, details={"sampled": True, "projections": {"autograd": s_ad, "finite_difference": s_fd,
                                                                 "passed": bool(proj_ok.all())},
                                "method": {"fd_batching": batch.mode, "rows_sampled": int(rows.size),
                                           "columns_differenced": int(cols.size)}})


def _columns(batch: BatchedForward, x: np.ndarray, cols: np.ndarray, rows: np.ndarray, f0: np.ndarray,
             eps: float | None, eps_dtype: float):
    """Central differences (with step halving) of outputs `rows` w.r.t. elements `cols`: (R, C)."""
    h = step_sizes(x, "central", eps, eps_dtype)[cols]
    deltas = (1, -1, 2, -2)
    pts = np.repeat(x[None], len(deltas) * cols.size, axis=0)
    for k, d in enumerate(deltas):
        pts[k * cols.size + np.arange(cols.size), cols] += d * h
    pts = batch._representable(pts)
    disp = pts[np.arange(pts.shape[0]), np.tile(cols, len(deltas))] - x[np.tile(cols, len(deltas))]
    out = batch(pts)[:, rows].reshape(len(deltas), cols.size, rows.size)
    t = disp.reshape(len(deltas), cols.size)[:, :, None]
    with np.errstate(all="ignore"):
        d1 = (out[0] - out[1]) / (t[0] - t[1])
        d2 = (out[2] - out[3]) / (t[2] - t[3])
        noise = 4 * eps_dtype * (np.abs(f0[rows])[None] + np.abs(out[0])) + 4 * batch.noise[rows][None]
        err = np.abs(d1 - d2) / 3 + noise / np.abs(t[0])
    return d1.T, err.T


def _remainder(pt, w, layout, batch, x, cols, rows, block, f0, eps_dtype) -> bool:
    """Every element not differenced one by one, at once along a random direction: the
    sampled rows' change must match autograd's rows there (0 when they do not depend)."""
    n = x.size
    rest = np.setdiff1d(np.arange(n), cols)
    if rest.size == 0:
        return True
    u = np.zeros((1, n))
    u[0, rest] = pt.rng.standard_normal(rest.size)
    ju, err = projection_fd(batch, x, u, f0, pt.opts.eps, eps_dtype)
    expected, got = ju[0, rows], block @ u[0]
    tol = pt.tol
    terms = np.abs(block) @ np.abs(u[0])
    allowed = tol["atol"] + tol["rtol"] * np.abs(expected) + tol["scale"] * terms + oc.FD_SAFETY * err[0, rows]
    with np.errstate(invalid="ignore"):
        good = np.abs(got - expected) <= allowed
    if good.all():
        return True
    i = int(np.flatnonzero(~good)[0])
    pt.diags.append(Diagnostic("gradient_mismatch", (
        f"d{layout.label(int(rows[i]))}/d{w} along the {rest.size} elements not differenced one by one: autograd "
        f"{got[i]:.10g} vs finite differences {expected[i]:.10g} (allowed {allowed[i]:.3g}): the gradient lands "
        "where the op does not depend, or misses where it does"), w))
    pt.failed = True
    return False
