"""--mode full: every Jacobian entry of every output w.r.t. every differentiable input.

Finite differences give the structural nonzeros and their values (jacobian.fd_entries);
backward calls seeded by groups of rows give autograd's entries; a group whose entries
disagree, or that leaks gradient onto elements the op does not depend on, is redone one
row at a time so every failure names exact entries.
"""

from __future__ import annotations

import math

import numpy as np

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.op import verdict as oc
from gradcheck_cli.op.batched import BatchedForward, VJPMany, shared_vjps
from gradcheck_cli.op.checks import vjp_checks
from gradcheck_cli.op.full_entries import Autograd, InputEntries, entries as input_entries, grouped_backward, leaks, member, scales
from gradcheck_cli.op.full_results import results as gradient_results
from gradcheck_cli.op.jacobian import EPS, FDEntries, fd_entries, group_rows
from gradcheck_cli.op import forward_ad
from gradcheck_cli.op.order2 import apply_order2, double_backward
from gradcheck_cli.op.noise import noise_note
from gradcheck_cli.op.pattern import PatternTooCostly
from gradcheck_cli.op.runner import OpRaised, flat_numpy
from gradcheck_cli.op.state import batched_disagreement, nonfinite_inputs

REFINE_ROWS = 2048  # one-hot backward calls spent localizing failures
# Jacobian entries (outputs x inputs) past which full mode needs the sparsity found by index
# bits (pattern.py): one row per element, and a dense Jacobian's arrays, would cost too much
FULL_LIMIT = 16_777_216


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
    vjps = shared_vjps(pt, outs, inputs)
    entries_full = m * sum(math.prod(np.shape(pt.arrays[w])) for w in wrt)
    allow_columns = entries_full <= FULL_LIMIT
    try:
        for w in wrt:
            batches[w] = BatchedForward(spec, pt.ref_arrays, w, fd_dtype, opts.device, list(layout.shapes), pt.rng)
            noise_note(pt, w, batches[w], EPS[fd_dtype])
            fds[w] = fd_entries(batches[w], pt.ref_arrays[w], f0, scheme, opts.eps, EPS[fd_dtype],
                                allow_columns=allow_columns)
        _check_size(fds, entries_full)
        sizes = {w: fds[w].n_in for w in wrt}
        offsets = dict(zip(wrt, np.cumsum([0] + [sizes[w] for w in wrt])[:-1].tolist()))
        for attempt in range(2):
            grouping = group_rows([fds[w] for w in wrt], [offsets[w] for w in wrt], m, pt.rng)
            ad = Autograd.initial(grouped_backward(vjps, grouping, m), grouping)
            found, verdicts, unlocalized, ref_scales = _localize(pt, ad, vjps, fds, offsets, sizes, sym, m)
            # shortcuts are trusted only while they agree: before failing a gradient, check the
            # batched forward against plain calls, and find the nonzeros one element at a time
            # (where one row per element is affordable)
            redo = []
            for w in wrt:
                if not verdicts[w].passed:
                    agrees = _batching_agrees(batches[w], fds[w], found[w], verdicts[w])
                    if not agrees or (fds[w].pattern != "columns" and allow_columns):
                        redo.append(w)
            if not redo or attempt:
                break
            for w in redo:
                fds[w] = fd_entries(batches[w], pt.ref_arrays[w], f0, scheme, opts.eps, EPS[fd_dtype],
                                    try_bits=not allow_columns, allow_columns=allow_columns)
    except PatternTooCostly:
        raise UserInputError(f"--mode full: the Jacobian has {entries_full:,} entries (limit {FULL_LIMIT:,} unless "
                             "index bits find its sparsity, which they did not here: an output depends on elements "
                             "far apart); use --mode fast (random projections and sampled rows)") from None
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
    results, refs, jac_ok = gradient_results(pt, layout, fds, found, verdicts, unlocalized, sym, vjps, offsets,
                                             grouping, REFINE_ROWS, ref_scales)
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


def backward_checks(pt, outs: list, tensors: dict, layout, expect, jac_ok: dict, known: tuple | None = None):
    """Run grad_output variety (`known`: checks.vjp_checks'); its outcome (None when skipped
    because the backward already raised) goes into the report with apply_backward_checks."""
    if any(d.code in ("op_error", "wrong_shape") for d in pt.diags):
        return None
    wrt = list(pt.prep.spec.wrt)
    return vjp_checks(outs, [tensors[w] for w in wrt], wrt, expect, jac_ok, layout.m, pt.tol, pt.rng, layout,
                      known)


def apply_backward_checks(pt, res) -> None:
    """backward_checks' diagnostics and call count into the point's report (determinism's
    are added after them: ops._report_determinism)."""
    if res is None or any(d.code in ("op_error", "wrong_shape") for d in pt.diags):
        return
    for d in res.diagnostics:
        (pt.note if d.code in oc.INFO_CODES else pt.fail)(d.code, d.message, d.wrt)
    pt.extra.setdefault("calls", {})["checks_backward"] = res.calls


def _localize(pt, ad: Autograd, vjps: VJPMany, fds: dict, offsets: dict, sizes: dict, sym, m: int):
    """Judge every input; redo failing groups one row at a time (bounded); judge again.
    (entries, verdicts, leaked entries not localized, the references' (row, column) scales)."""
    spent = 0
    while True:
        found = {w: input_entries(ad, fd, offsets[w], None if sym is None else sym[w], m, pt.fixed.get(w))
                 for w, fd in fds.items()}
        verdicts = {w: oc.judge(e.rows, e.cols, m, fds[w].n_in, e.auto, e.fd, e.fd_err, e.sym, pt.tol, e.lo, e.hi,
                                pt.tol["output"] * np.abs(fds[w].f0[e.rows]))
                    for w, e in found.items()}
        srow, scol = scales(found, m, offsets, sizes)
        leak_groups, leak_count = leaks(ad, fds, offsets, m, pt.tol, srow, scol)
        exact = ad.exact_mask()
        bad_rows = np.concatenate([e.rows[~v.ok] for e, v in zip(found.values(), verdicts.values())])
        bad_groups = np.union1d(ad.grouping.colors[bad_rows[~exact[bad_rows]]], leak_groups)
        todo = np.flatnonzero(member(ad.grouping.colors, bad_groups) & ~exact)
        todo = todo[:max(0, REFINE_ROWS - spent)]
        if todo.size == 0:
            return found, verdicts, leak_count, (srow, scol)
        ad = ad.with_rows(vjps, todo, m)
        spent += todo.size


def _check_size(fds: dict, entries_full: int) -> None:
    """Past FULL_LIMIT Jacobian entries, full mode keeps going only for a sparse Jacobian."""
    nonzeros = sum(fd.rows.size for fd in fds.values())
    if entries_full > FULL_LIMIT and nonzeros > FULL_LIMIT:
        raise UserInputError(f"--mode full: the Jacobian has {nonzeros:,} structural nonzeros (limit "
                             f"{FULL_LIMIT:,}); use --mode fast (random projections and sampled rows)")


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
    apply_order2(pt, outcome, v, f64_ok)

