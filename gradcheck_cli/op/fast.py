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

Memory (issue 7): at n = 1e6 every vector is 8 MB, so nothing of size (k, n) is held.
Random directions are re-drawn from their generator's saved state instead of kept
(Direction), sparse exact rows are kept as entries and dense ones computed again
(ExactRows), finite differences evaluate one point per call and keep only running
combinations (direction_fd), and every backward call comes before the forward calls: the
graph, with what the op saved for it, is released before the finite differences.  The
determinism check, which runs first (determinism.py), frees its first forward's
graph before the second forward.  Peak at 1e6 elements: the vectors a bare script holds to
run the op's forward and two backward calls (input, output, saved tensors, grad_output,
one gradient, a backward's temporaries), with a strided grad_output (twice the output's
size) in place of the contiguous one; benchmarks/run.py measures it side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradcheck_cli.op import verdict as oc
from gradcheck_cli.op.batched import BatchedForward, VJPMany
from gradcheck_cli.op.determinism import rounding_allowed
from gradcheck_cli.op.forward_ad import apply_projections
from gradcheck_cli.op.directions import Direction, direction_fd, one_sided
from gradcheck_cli.op.jacobian import EPS, step_sizes
from gradcheck_cli.op.noise import noise_note
from gradcheck_cli.op.memory import RELEASE_FROM, release_freed_memory
from gradcheck_cli.op.runner import STREAM_ELEMENTS, OpRaised, flat_numpy
from gradcheck_cli.report import Diagnostic

PROJECTIONS = 4
SAMPLED_ROWS = 8
EXTRA_COLUMNS = 8
MAX_COLUMNS = 256
COLUMN_BUDGET = 20_000_000  # element evaluations for the one-by-one columns
SPARSE_ROW = 16  # an exact row is kept as (index, value) pairs when at most 1/16 of it is nonzero


@dataclass
class Projection:
    """One random projection v^T J u: the directions, re-drawn when needed (never all held at
    once), and what autograd gave for it."""

    v: Direction
    u: dict  # input -> Direction
    norm: dict  # input -> max |u|
    s_ad: dict  # input -> v^T J u by autograd (the VJP's slice dotted with u)
    terms: dict  # input -> sum |v^T J| |u|, the size of the numbers summed


def _draw_projections(rng, vjps: VJPMany, m: int, sizes: dict, offsets: dict, fixed: dict) -> list:
    """PROJECTIONS times: draw v, one backward call for v^T J, then draw u per input and
    reduce (u is 0 on `fixed` elements, which are never stepped).  Only the directions'
    generator states are kept."""
    out = []
    for _ in range(PROJECTIONS):
        v = Direction(rng, m)
        g = vjps.one(v.draw(rng))
        proj = Projection(v, {}, {}, {}, {})
        for w, n in sizes.items():
            d = Direction(rng, n, None if w not in fixed else ~fixed[w])
            u = d.draw(rng)
            gw = g[offsets[w]:offsets[w] + n]
            proj.u[w], proj.norm[w] = d, float(np.max(np.abs(u))) if n else 0.0
            proj.s_ad[w] = _dot(gw, u)
            proj.terms[w] = _dot(np.abs(gw), np.abs(u))
            del u, gw
        del g  # nothing of this call's gradient is held through the next one
        out.append(proj)
    return out


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b without BLAS: with torch's threads about, OpenBLAS's threaded ddot can take
    milliseconds per call to wake its own threads, and fast mode makes thousands of calls."""
    return float(np.einsum("i,i->", a, b))


def _reduce(direction: Direction, signed: tuple, absolute: tuple) -> tuple[list, list]:
    """([d . a for a in signed], [|d| . b for b in absolute]), the direction d re-drawn piece
    by piece (the projection's reductions over the outputs)."""
    s_sums, a_sums = [0.0] * len(signed), [0.0] * len(absolute)
    for a, b, vals in direction.chunks():
        for k, vec in enumerate(signed):
            s_sums[k] += _dot(vals, vec[a:b])
        av = np.abs(vals)
        for k, vec in enumerate(absolute):
            a_sums[k] += _dot(av, np.abs(vec[a:b]))
    return s_sums, a_sums


@dataclass
class ExactRows:
    """The sampled output rows of the Jacobian, exactly, from one-hot backward calls: kept as
    (index, value) pairs when sparse (elementwise ops: one entry each), and computed again by
    another backward call when needed otherwise, so no (rows, N) array is held."""

    vjps: VJPMany
    rows: np.ndarray
    m: int
    sparse: dict = field(default_factory=dict)  # position -> (global indices, values)
    touched: np.ndarray | None = None  # (N,) bool: columns (all inputs) any sampled row touches

    def fill(self, sizes: dict, offsets: dict) -> None:
        total = sum(sizes.values())
        self.touched = np.zeros(total, dtype=bool)
        for i in range(self.rows.size):
            g = self._backward(i)
            nz = np.flatnonzero(g)  # nan is nonzero: it is an entry to report
            if nz.size * SPARSE_ROW <= total:
                self.sparse[i] = (nz, g[nz])
            self.touched[nz] = True
            del g, nz

    def touched_at(self, off: int, n: int) -> np.ndarray:
        """The touched mask of the input at `off` (n elements)."""
        return self.touched[off:off + n]

    def _backward(self, i: int) -> np.ndarray:
        e = np.zeros(self.m)
        e[self.rows[i]] = 1.0
        return self.vjps.one(e)

    def each(self, off: int, n: int):
        """(position, column indices within the input, values) per row, for the input at `off`."""
        for i in range(self.rows.size):
            if i in self.sparse:
                nz, vals = self.sparse[i]
                lo, hi = np.searchsorted(nz, [off, off + n])
                yield i, nz[lo:hi] - off, vals[lo:hi]
            else:
                g = self._backward(i)[off:off + n]
                nz = np.flatnonzero(g)
                yield i, nz, g[nz]
                del g, nz


def run_fast(pt, tensors: dict, outs: list, layout: oc.OutputLayout, f64, sym) -> tuple:
    """Fast-mode gradient results for the point (diagnostics go to pt); memory as the module
    docstring says."""
    from gradcheck_cli.op.full import apply_backward_checks, backward_checks, broadcast_factor
    from gradcheck_cli.op.state import batched_disagreement, nonfinite_inputs

    spec, opts = pt.prep.spec, pt.opts
    wrt = list(spec.wrt)
    m = layout.m
    fd_dtype = "float64" if f64 is not None else opts.dtype
    eps_dtype = EPS[fd_dtype]
    # only read (rounding and noise terms): for one float64 output, a view of it, not a copy
    f0 = f64 if f64 is not None else flat_numpy(outs, copy=False)
    pt.extra["fd_scheme"] = "central"
    sizes = {w: int(np.prod(np.shape(pt.arrays[w]))) for w in wrt}
    offsets = dict(zip(wrt, np.cumsum([0] + [sizes[w] for w in wrt])[:-1].tolist()))
    if sum(sizes.values()) + m >= RELEASE_FROM:
        release_freed_memory()
    vjps = VJPMany(outs, [tensors[w] for w in wrt], max_elements=STREAM_ELEMENTS)
    rng = pt.rng
    tol = pt.tol
    batches = {}

    def expect(w, v, g):  # no Jacobian to compare v^T J with: only the allowed error
        return None, rounding_allowed(g, tol, opts.dtype)

    expect.uses_v = False

    try:
        # 1. backward calls: projections v^T J, the sampled rows and grad_output variety
        # (which need no finite differences in fast mode; their diagnostics are added after
        # the Jacobian's, as ever)
        nonfinite_inputs(pt, wrt)
        projections = _draw_projections(rng, vjps, m, sizes, offsets, pt.fixed)
        rows = np.sort(rng.choice(m, size=min(m, SAMPLED_ROWS), replace=False))
        exact = ExactRows(vjps, rows, m)
        exact.fill(sizes, offsets)
        sampled = {w: _sample(pt, exact, offsets[w], sizes[w], layout, rows, pt.fixed.get(w)) for w in wrt}
        del exact
        checks = backward_checks(pt, outs, tensors, layout, expect, {})  # jac_ok: unused without a Jacobian
        # the last backward call is done: the graph, and what the op saved for it, go now (the
        # list is the caller's too), not after the finite differences
        outs[:] = [o.detach() for o in outs]
        # 2. forward calls: finite differences along the projections, the columns and the rest
        batches = _batches(pt, wrt, fd_dtype, layout, rng)
        results = []
        for w in wrt:
            noise_note(pt, w, batches[w], eps_dtype)
            results.append(_one_input(pt, w, layout, batches[w], f0, projections, rows, sampled.pop(w), sizes[w],
                                      None if sym is None else sym[w], eps_dtype, vjps,
                                      broadcast_factor(layout, tuple(np.shape(pt.arrays[w])))))
    except OpRaised as exc:
        from gradcheck_cli.op.state import op_raised

        op_raised(pt, exc)
        return ()
    pt.extra["calls"] = {"forward_rows": int(sum(b.calls for b in batches.values())),
                         "jacobian_backward": vjps.calls}
    batched_disagreement(pt, vjps)
    pt.extra["fd_batching"] = {w: batches[w].mode for w in wrt}
    pt.extra["sampled_rows"] = [layout.label(int(o)) for o in rows]
    del projections
    apply_backward_checks(pt, checks)
    if opts.order == 2:
        from gradcheck_cli.op.order2 import apply_forward_over_reverse, double_backward

        outcome = double_backward(spec, pt.arrays, pt.ref_arrays, opts.dtype, opts.device, rng.standard_normal(m),
                                  tol, opts.eps, rng, f64 is not None, None)
        for d in outcome.diagnostics:
            (pt.note if d.code == "order2_sampled" else pt.fail)(d.code, d.message, d.wrt)
        if outcome.hessian is not None:
            pt.extra["hessian"] = outcome.hessian
        apply_forward_over_reverse(pt, rng.standard_normal(m), f64 is not None)
    return tuple(results)


@dataclass
class Sampled:
    """One input's sampled entries, chosen before any forward call: the columns differenced
    one by one, the remainder direction over the other elements, and autograd's side."""

    cols: np.ndarray
    remainder: Direction | None
    rnorm: float  # max |u| of the remainder direction
    auto: np.ndarray  # (R, C) autograd's sampled rows on cols
    got: np.ndarray  # (R,) autograd's rows . u (remainder)
    rterms: np.ndarray  # (R,) |rows| . |u|


def _sample(pt, exact: ExactRows, off: int, n: int, layout, rows: np.ndarray, fixed: np.ndarray | None) -> Sampled:
    """The columns the sampled rows touch, plus a few random ones (at most `limit`), and the
    remainder direction over every other element (drawn here); never a `fixed` element."""
    cols = np.flatnonzero(exact.touched_at(off, n))
    extra = pt.rng.choice(n, size=min(n, EXTRA_COLUMNS), replace=False)
    cols = np.union1d(cols, extra)
    if fixed is not None:
        cols = cols[~fixed[cols]]
    limit = int(min(MAX_COLUMNS, max(16, COLUMN_BUDGET // (4 * (n + layout.m)))))
    if cols.size > limit:  # the rest is covered, in aggregate, by the remainder direction
        cols = np.sort(pt.rng.choice(cols, size=limit, replace=False))
    rest = np.ones(n, dtype=bool) if fixed is None else ~fixed
    rest[cols] = False
    remainder = Direction(pt.rng, n, rest) if rest.any() else None
    del rest
    auto, got, rterms, rnorm = _autograd_rows(exact, off, n, cols, rows, remainder, pt.rng)
    return Sampled(cols, remainder, rnorm, auto, got, rterms)


def _batches(pt, wrt: list, fd_dtype: str, layout, rng) -> dict:
    """A BatchedForward per input, sharing the fixed inputs' tensors.  Where one point fills
    a call (n + m at the element cap) batching gains nothing: plain calls, no probes."""
    import torch

    from gradcheck_cli.dtypes import torch_dtype

    spec, opts = pt.prep.spec, pt.opts
    td = torch_dtype(fd_dtype)
    base = {k: torch.tensor(v, dtype=td, device=opts.device) for k, v in pt.ref_arrays.items()} \
        if len(pt.ref_arrays) > 1 else None
    out = {}
    for w in wrt:
        n = int(np.prod(np.shape(pt.ref_arrays[w])))
        probes = min(3, STREAM_ELEMENTS // max(1, n + layout.m) - 1)  # the probe batch fits one call
        out[w] = BatchedForward(spec, pt.ref_arrays, w, fd_dtype, opts.device, list(layout.shapes), rng,
                                max_elements=STREAM_ELEMENTS, probes=probes, base=base)
    return out


def _one_input(pt, w, layout, batch, f0, projections, rows, smp: Sampled, n, sym, eps_dtype, vjps, bfactor):
    tol = pt.tol
    x = np.asarray(pt.ref_arrays[w], dtype=np.float64).reshape(-1)
    in_shape = tuple(np.shape(pt.arrays[w]))
    # 1. projections, one at a time: J u by finite differences (four forward calls), then
    # the reductions over the outputs with v drawn again piece by piece
    s_ad = np.array([p.s_ad[w] for p in projections])
    terms = np.array([p.terms[w] for p in projections])
    norms = np.array([p.norm[w] for p in projections])
    s_fd, s_err, v_f0, s_sym = (np.zeros(PROJECTIONS) for _ in range(4))
    for k, p in enumerate(projections):
        ju, ju_err = direction_fd(batch, x, p.u[w], p.norm[w], f0, pt.opts.eps, eps_dtype)
        (s_fd[k],), (s_err[k], v_f0[k]) = _reduce(p.v, (ju,), (ju_err, f0))  # err >= 0: |err| = err
        del ju, ju_err
        if sym is not None:  # only where the exact Jacobian is small enough to be dense
            s_sym[k] = float(p.v.again() @ (sym @ p.u[w].again()))
    refs = [("finite differences", s_fd, s_err)]
    if sym is not None:
        refs.append(("symbolic", s_sym, np.zeros(PROJECTIONS)))
    proj_ok = np.isfinite(s_ad)
    rounding = tol["output"] * v_f0 * norms  # see verdict.py
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
        if label == "finite differences":
            apply_projections(pt, w, projections, s_ref, allowed)
    # 2. sampled rows: exact autograd rows, finite differences on the columns they touch
    cols, auto = smp.cols, smp.auto
    fd_vals, fd_err = _columns(batch, x, cols, rows, f0, pt.opts.eps, eps_dtype)  # (R, C)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    sym_vals = None if sym is None else sym[rr, cc].reshape(-1)
    v = oc.judge(rr.reshape(-1), cc.reshape(-1), layout.m, n, auto.reshape(-1), fd_vals.reshape(-1),
                 fd_err.reshape(-1), sym_vals, tol, extra=tol["output"] * np.abs(f0[rr.reshape(-1)]))
    rest_ok = smp.remainder is None or _remainder(pt, w, layout, batch, x, smp.remainder, smp.rnorm, rows, smp.got,
                                                   smp.rterms, f0, eps_dtype)
    passed = bool(proj_ok.all()) and v.passed and rest_ok
    if v.bias is not None and v.ok.all():
        d = oc.systematic_diagnostic(w, v.bias, pt.opts.dtype)
        pt.fail(d.code, d.message, d.wrt)
    elif not v.passed:
        against = "symbolic" if sym is not None else "finite differences"
        ref_vals = sym_vals if sym_vals is not None else fd_vals.reshape(-1)
        pt.fail("gradient_mismatch", f"d/d{w}: {int((~v.ok).sum())} of {v.ok.size} sampled Jacobian entries out of "
                                     f"tolerance; worst: "
                                     f"{oc.worst_entries(v, auto.reshape(-1), ref_vals, layout, w, in_shape, against)}",
                w)
        if not any(d.wrt == w and d.code in ("scale_error", "wrong_sign", "broadcast_reduction") for d in pt.diags):
            pt.diags.extend(oc.classify(w, auto.reshape(-1), ref_vals, v.allowed, cc.reshape(-1), x, bfactor))
        pt.diags.extend(oc.torch_tolerance_hint(w, auto.reshape(-1), ref_vals, v.ok, pt.opts))
    if not np.all(np.isfinite(auto)):
        pt.fail("nonfinite", f"autograd gives non-finite values for d/d{w} in {pt.opts.dtype}", w)
    if list(pt.prep.spec.wrt).index(w) in vjps.none:
        if passed and (np.any(fd_vals != 0) or np.any(s_fd != 0)):  # zeros are right: None means zeros
            pt.note("none_gradient_zero", f"the backward returned None for {w!r}; finite differences agree with a "
                                          "zero gradient at this point (within tolerance), so None is read as "
                                          "zeros, as torch does", w)
        elif np.any(fd_vals != 0) or np.any(s_fd != 0):
            pt.fail("missing_gradient", f"the backward returned None for {w!r}, which requires grad, but the "
                                        "output depends on it", w)
            passed = False
    pairs = np.stack([rr.reshape(-1), cc.reshape(-1)], axis=1)
    worst = v.worst()
    k = auto.size
    return oc.OpGradientResult(
        wrt=w, shape=(k,), input_shape=in_shape, output_shape=tuple(layout.report_shape),
        autograd=auto.reshape(-1), symbolic=sym_vals, finite_difference=fd_vals.reshape(-1),
        fd_error_estimate=fd_err.reshape(-1), fd_computed=None, max_abs_error=oc.max_error(v.abs_err),
        max_rel_error=oc.max_error(v.rel_err), reference=v.primary, worst_index=None if worst is None else (worst,),
        passed=passed, tolerance=dict(tol), errors=v.errors, failed_elements=int((~v.ok).sum()),
        failing=v.failing(), layout=layout,
        entries=pairs, details={"sampled": True, "projections": {"autograd": s_ad, "finite_difference": s_fd,
                                                                 "passed": bool(proj_ok.all())},
                                "method": {"fd_batching": batch.mode, "rows_sampled": int(rows.size),
                                           "columns_differenced": int(cols.size)}})


def _autograd_rows(exact: ExactRows, off: int, n: int, cols: np.ndarray, rows: np.ndarray,
                   remainder: Direction | None, rng) -> tuple:
    """Autograd's sampled rows for one input: their entries on `cols` (R, C), and their
    products with the remainder direction u (drawn here, from rng) and |u|."""
    auto = np.zeros((rows.size, cols.size))
    got, terms = np.zeros(rows.size), np.zeros(rows.size)
    u = remainder.draw(rng) if remainder is not None else None
    norm = float(np.max(np.abs(u))) if u is not None and u.size else 0.0
    for i, idx, vals in exact.each(off, n):
        pos = np.minimum(np.searchsorted(cols, idx), max(cols.size - 1, 0))
        hit = cols[pos] == idx if cols.size else np.zeros(idx.size, dtype=bool)
        auto[i, pos[hit]] = vals[hit]
        if u is not None:
            got[i] = _dot(vals, u[idx])
            terms[i] = _dot(np.abs(vals), np.abs(u[idx]))
    return auto, got, terms, norm


def _columns(batch: BatchedForward, x: np.ndarray, cols: np.ndarray, rows: np.ndarray, f0: np.ndarray,
             eps: float | None, eps_dtype: float):
    """Central differences (with step halving) of outputs `rows` w.r.t. elements `cols`: (R, C)."""
    eps_dtype = batch.effective_eps(eps_dtype)
    h = step_sizes(x[cols], "central", eps, eps_dtype)  # elementwise: the same as for all of x
    deltas = np.array([1, -1, 2, -2])
    nd = deltas.size
    out = np.empty((nd, cols.size, rows.size))
    disp = np.empty((nd, cols.size))
    # as many points per call as the batch's element cap allows (one, at n = 1e6): each is a
    # full copy of x, and only the sampled rows of each output are kept
    jobs_k = np.tile(np.arange(nd), cols.size)
    jobs_c = np.repeat(np.arange(cols.size), nd)
    per_call = batch.rows_per_call()
    for start in range(0, jobs_k.size, per_call):
        kk, cc = jobs_k[start:start + per_call], jobs_c[start:start + per_call]
        at = np.arange(kk.size)
        pts = np.repeat(x[None], kk.size, axis=0)
        pts[at, cols[cc]] += deltas[kk] * h[cc]
        pts = batch._representable(pts)
        disp[kk, cc] = pts[at, cols[cc]] - x[cols[cc]]
        out[kk, cc] = batch(pts, scratch=True)[:, rows]
        del pts
    t = disp[:, :, None]
    with np.errstate(all="ignore"):
        d1 = (out[0] - out[1]) / (t[0] - t[1])
        d2 = (out[2] - out[3]) / (t[2] - t[3])
        noise = 4 * eps_dtype * (np.abs(f0[rows])[None] + np.abs(out[0])) + 4 * batch.noise[rows][None]
        err = np.abs(d1 - d2) / 3 + noise / np.abs(t[0])
    return d1.T, err.T


def _remainder(pt, w, layout, batch, x, direction: Direction, norm: float, rows, got, terms, f0,
               eps_dtype) -> bool:
    """Every element not differenced one by one, at once along a random direction u: the
    sampled rows' change must match autograd's rows . u there (0 when they do not depend)."""
    ju, err = direction_fd(batch, x, direction, norm, f0, pt.opts.eps, eps_dtype)
    expected, err = ju[rows], err[rows]
    del ju
    tol = pt.tol
    allowed = tol["atol"] + tol["rtol"] * np.abs(expected) + tol["scale"] * terms + oc.FD_SAFETY * err
    with np.errstate(invalid="ignore"):
        good = np.abs(got - expected) <= allowed
    if good.all():
        return True
    low, high = one_sided(batch, x, direction, norm, f0, pt.opts.eps, eps_dtype, rows)
    with np.errstate(invalid="ignore"):  # a kink along u: the op has no derivative there to compare with
        kinked = high - low > 2 * allowed
    if np.all(good | kinked):
        pt.note("non_differentiable", (
            f"d/d{w} along the {direction.count} elements not differenced one by one: the op has a kink along that "
            f"direction at {int(kinked.sum())} sampled row(s) (one-sided slopes {low[kinked][0]:.6g} and "
            f"{high[kinked][0]:.6g} differ: tied elements of a sort, a relu at 0); no single derivative exists there, "
            "so it is reported, not failed (the rows' entries differenced one by one were compared)"), w)
        return True
    good |= kinked
    i = int(np.flatnonzero(~good)[0])
    pt.diags.append(Diagnostic("gradient_mismatch", (
        f"d{layout.label(int(rows[i]))}/d{w} along the {direction.count} elements not differenced one by one: "
        f"autograd {got[i]:.10g} vs finite differences {expected[i]:.10g} (allowed {allowed[i]:.3g}): the gradient "
        "lands where the op does not depend, or misses where it does"), w))
    pt.failed = True
    return False
