"""--mode fast: for inputs too large for every Jacobian entry.

1. Random projections v^T J u (private seeded generator): autograd gives v^T J in one
   backward call, finite differences give J u in four forward calls (central, with step
   halving for the error estimate); a dense bug anywhere shows in every projection.
2. Sampled rows to localize: a few output rows are computed exactly by one-hot backward
   calls; the input elements they depend on (plus a few random ones) are differenced
   (fast_rows.py: in groups of columns no sampled row touches twice, one column at a time
   where a group disagrees), and everything else at once along the first projection's
   direction, which leaves those columns out, so a gradient that lands where the op does
   not depend still shows.  Failures name exact entries.

Fast mode can miss a bug confined to rows it did not sample; the report says how many
rows and entries it compared.

Speed (issue 16): each check costs about one backward call.  The first projection's v is
the determinism check's grad_output, whose gradient that check already computed; the
first two projections' gradients are grad_output variety's two dense grad_outputs; where
the element budget allows, the projections' and the sampled rows' backward calls are
batched (is_grads_batched), the first batched gradient compared with a plain one (at 1e6
elements one batched call of one grad_output is compared instead); the remainder rides on
the first projection's forward calls, and the sampled columns share theirs.

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
size) in place of the contiguous one (memory.py: freed blocks go straight back to the
system); benchmarks/run.py and bench_op_fast.py measure it beside torch's fast mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck_cli.op import verdict as oc
from gradcheck_cli.op.batched import BatchedForward, VJPMany, shared_vjps
from gradcheck_cli.op.determinism import rounding_allowed
from gradcheck_cli.op.directions import Direction, direction_fd, one_sided
from gradcheck_cli.op.fast_rows import (ExactRows, abs_dot, abs_max, autograd_rows, choose_columns, dot,
                                        remainder_verdict, sampled_verdict)
from gradcheck_cli.op.forward_ad import apply_projections
from gradcheck_cli.op.jacobian import EPS
from gradcheck_cli.op.noise import noise_note
from gradcheck_cli.op.memory import RELEASE_FROM, release_freed_memory
from gradcheck_cli.op.runner import STREAM_ELEMENTS, OpRaised, flat_numpy

PROJECTIONS = 4
PER_U = 2  # projections sharing one random u (each with its own v): J u is differenced once for them
SAMPLED_ROWS = 8


@dataclass
class Projection:
    """One random projection v^T J u: the directions, re-drawn when needed (never all held at
    once), and what autograd gave for it."""

    v: Direction
    u: dict  # input -> Direction
    norm: dict  # input -> max |u|
    s_ad: dict  # input -> v^T J u by autograd (the VJP's slice dotted with u)
    terms: dict  # input -> sum |v^T J| |u|, the size of the numbers summed


@dataclass
class Sampled:
    """One input's sampled entries, chosen before any forward call: the columns differenced,
    the remainder direction over the other elements (the first projection's u), and
    autograd's side."""

    cols: np.ndarray
    remainder: Direction | None
    rnorm: float  # max |u| of the remainder direction
    auto: np.ndarray  # (R, C) autograd's sampled rows on cols
    got: np.ndarray  # (R,) autograd's rows . u (remainder)
    rterms: np.ndarray  # (R,) |rows| . |u|


def _reduce(direction: Direction, signed: tuple, absolute: tuple) -> tuple[list, list]:
    """([d . a for a in signed], [|d| . b for b in absolute]), the direction d re-drawn piece
    by piece (the projection's reductions over the outputs)."""
    s_sums, a_sums = [0.0] * len(signed), [0.0] * len(absolute)
    for a, b, vals in direction.chunks():
        for k, vec in enumerate(signed):
            s_sums[k] += dot(vals, vec[a:b])
        av = np.abs(vals)
        for k, vec in enumerate(absolute):
            a_sums[k] += dot(av, np.abs(vec[a:b]))
    return s_sums, a_sums


def run_fast(pt, tensors: dict, outs: list, layout: oc.OutputLayout, f64, sym) -> tuple:
    """Fast-mode gradient results for the point (diagnostics go to pt); speed and memory as
    the module docstring says."""
    from gradcheck_cli.op.full import apply_backward_checks
    from gradcheck_cli.op.full_results import broadcast_factor
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
    vjps = shared_vjps(pt, outs, [tensors[w] for w in wrt], STREAM_ELEMENTS)
    rng = pt.rng
    batches = {}
    try:
        # 1. backward calls: the sampled rows, the projections v^T J and grad_output variety
        # (which needs no finite differences in fast mode; its diagnostics are added after
        # the Jacobian's, as ever)
        nonfinite_inputs(pt, wrt)
        rows = np.sort(rng.choice(m, size=min(m, SAMPLED_ROWS), replace=False))
        exact = ExactRows(vjps, rows, m)
        exact.fill(sum(sizes.values()), opts.dtype)
        plans = {w: choose_columns(rng, exact.touched_at(offsets[w], sizes[w]), sizes[w], m, pt.fixed.get(w))
                 for w in wrt}
        projections, sampled, checks = _backward_phase(pt, vjps, exact, plans, sizes, offsets, outs, tensors, layout)
        del exact, plans
        # the last backward call is done: the graph, and what the op saved for it, go now (the
        # list is the caller's too), not after the finite differences
        outs[:] = [o.detach() for o in outs]
        # 2. forward calls: finite differences along the projections and on the sampled columns
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
        from gradcheck_cli.op.order2 import apply_order2, double_backward

        outcome = double_backward(spec, pt.arrays, pt.ref_arrays, opts.dtype, opts.device, rng.standard_normal(m),
                                  pt.tol, opts.eps, rng, f64 is not None, None)
        apply_order2(pt, outcome, rng.standard_normal(m), f64 is not None)  # v drawn after double_backward's
    return tuple(results)


def _first_gradient(pt, vjps: VJPMany, m: int, wrt: list) -> tuple[Direction, np.ndarray]:
    """The determinism check's random grad_output and its gradient on this graph (computed
    there already: taken over, not kept twice), or a fresh one."""
    det = pt.determinism
    if det is not None and det.gradient is not None:
        direction, first, det.gradient = det.direction, det.gradient, None
        return direction, first
    direction = Direction(pt.rng, m, uniform=True)
    return direction, np.array(vjps.one(direction.draw(pt.rng)))


def _backward_phase(pt, vjps: VJPMany, exact: ExactRows, plans: dict, sizes: dict, offsets: dict, outs: list,
                    tensors: dict, layout) -> tuple:
    """PROJECTIONS projections' v^T J (the first one's from determinism, the rest batched where
    the budget allows), each reduced against its u as it comes; grad_output variety between
    the second and the third, with the first two as its dense grad_outputs; the sampled
    rows against the first projection's u (the remainder direction, which leaves the
    sampled columns out).  (projections, input -> Sampled, variety's outcome)."""
    from gradcheck_cli.op.full import backward_checks

    rng, tol, m = pt.rng, pt.tol, layout.m
    wrt = list(sizes)

    def expect(w, v, g):  # no Jacobian to compare v^T J with: only the allowed error
        return None, rounding_allowed(g, tol, pt.opts.dtype)

    expect.uses_v = False

    def split(g):
        return {w: g[offsets[w]:offsets[w] + sizes[w]] for w in wrt}

    d_first, first = _first_gradient(pt, vjps, m, wrt)
    dirs = [d_first]
    for _ in range(PROJECTIONS - 1):  # each v from its own draws: rng moves past one before the next
        dirs.append(Direction(rng, m, uniform=True))
        dirs[-1].skip(rng)
    batched = None
    if vjps.per_call(m) >= PROJECTIONS:  # one batched call (its first row compared with `first`
        batched = vjps(np.stack([d.again() for d in dirs]), first=first)  # unless determinism did)
    elif vjps.unchecked():  # one grad_output per call: batching is checked with one batched call of
        vjps.check_batched(d_first.again(), first)  # one (where determinism's repeat did not already)
    projections, sampled, checks, shared = [], {}, None, {}
    for k in range(PROJECTIONS):
        if batched is not None:
            g = batched[k]
        elif k == 0:
            g, first = first, None
        else:
            g = vjps.one(dirs[k].again())
        proj = Projection(dirs[k], {}, {}, {}, {})
        for w in wrt:
            n, fixed = sizes[w], pt.fixed.get(w)
            cols, rest = plans[w]
            remainder = k < PER_U and bool(rest.any())
            if k % PER_U:  # the previous projection's u, kept for it
                d, u = projections[-1].u[w], shared.pop(w)
            else:
                d = Direction(rng, n, rest if remainder else (None if fixed is None else ~fixed), uniform=True)
                u = d.draw(rng)
            gw = g[offsets[w]:offsets[w] + n]
            proj.u[w], proj.norm[w] = d, abs_max(u)
            proj.s_ad[w] = dot(gw, u)
            proj.terms[w] = abs_dot(gw, u)
            if k == 0:
                auto, got, rterms = autograd_rows(exact, offsets[w], n, cols, u if remainder else None)
                sampled[w] = Sampled(cols, d if remainder else None, proj.norm[w], auto, got, rterms)
            if (k + 1) % PER_U:
                shared[w] = u
            del u, gw
        projections.append(proj)
        if k == 0:
            g_first = split(g)
        elif k == 1:
            g_second = split(g)
        del g
        if k == 1:  # grad_output variety, its two dense grad_outputs those of the first two projections
            checks = backward_checks(pt, outs, tensors, layout, expect, {},
                                     known=(dirs[0], g_first, dirs[1], g_second))
            del g_first, g_second
    return projections, sampled, checks


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


def _projection_verdict(pt, w, projections, batch, x, f0, sym, eps_dtype, bfactor, rows, smp):
    """J u by finite differences (four forward calls) per projection, reduced over the
    outputs with v drawn again piece by piece; the remainder's J u at the sampled rows (the
    first projection's); forward-mode AD along the first.  (passed, s_ad, s_fd, remainder
    (expected, error) or None)."""
    tol = pt.tol
    s_ad = np.array([p.s_ad[w] for p in projections])
    terms = np.array([p.terms[w] for p in projections])
    norms = np.array([p.norm[w] for p in projections])
    s_fd, s_err, v_f0, s_sym = (np.zeros(PROJECTIONS) for _ in range(4))
    rest = None
    for k, p in enumerate(projections):
        if k % PER_U == 0:  # a new u: its J u (the projections after it share it)
            ju = ju_err = None  # the last one's go before the next is made
            ju, ju_err = direction_fd(batch, x, p.u[w], p.norm[w], f0, pt.opts.eps, eps_dtype)
        if k == 0 and smp.remainder is not None:
            rest = (np.array(ju[rows]), np.array(ju_err[rows]))
        (s_fd[k],), (s_err[k], v_f0[k]) = _reduce(p.v, (ju,), (ju_err, f0))  # err >= 0: |err| = err
        if sym is not None:  # only where the exact Jacobian is small enough to be dense
            s_sym[k] = float(p.v.again() @ (sym @ p.u[w].again()))
    del ju, ju_err
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
    return bool(proj_ok.all()), s_ad, s_fd, rest


def _one_input(pt, w, layout, batch, f0, projections, rows, smp: Sampled, n, sym, eps_dtype, vjps, bfactor):
    tol = pt.tol
    x = np.asarray(pt.ref_arrays[w], dtype=np.float64).reshape(-1)
    in_shape = tuple(np.shape(pt.arrays[w]))
    # 1. projections (and the remainder's finite differences, which ride on the first)
    proj_ok, s_ad, s_fd, rest = _projection_verdict(pt, w, projections, batch, x, f0, sym, eps_dtype, bfactor, rows,
                                                    smp)
    # 2. sampled rows: exact autograd rows, finite differences on the columns they touch
    cols, auto = smp.cols, smp.auto
    sym_vals = None if sym is None else sym[np.ix_(rows, cols)].reshape(-1)
    fd, v, (rr, cc) = sampled_verdict(pt, batch, x, cols, rows, f0, auto, sym_vals, layout.m, n, eps_dtype)
    fd_vals, fd_err = fd.est, fd.err
    rest_ok = rest is None or remainder_verdict(
        pt, w, layout, rows, smp.remainder.count, smp.got, smp.rterms, rest[0], rest[1],
        lambda: one_sided(batch, x, smp.remainder, smp.rnorm, f0, pt.opts.eps, eps_dtype, rows))
    passed = proj_ok and v.passed and rest_ok
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
                                                                 "passed": proj_ok},
                                "method": {"fd_batching": batch.mode, "rows_sampled": int(rows.size),
                                           "columns_differenced": int(cols.size), "column_groups": fd.groups,
                                           "columns_alone": int(fd.exact.sum())}})


