"""The gradient stage of one point: references (the float64 re-run, --reference), then
determinism (a second forward), then the Jacobian in the chosen mode (full.py, fast.py)."""

from __future__ import annotations

import math

import numpy as np

from gradcheck_cli.op.state import Point, finite_output, op_raised, report_values
from gradcheck_cli.op.verdict import INFO_CODES, OutputLayout
from gradcheck_cli.tolerances import TOLERANCES

AUTO_FULL_ENTRIES = 4_194_304  # Jacobian entries (outputs x inputs) up to which auto means full
VALUE_RTOL = {dtype: tol["value_rtol"] for dtype, tol in TOLERANCES.items()}


def _report_determinism(pt: Point) -> None:
    """determinism.determinism's findings, record and backward calls into the report (after the
    Jacobian's diagnostics, whatever happened after determinism ran)."""

    det = pt.determinism
    if det is None or not det.usable:
        return
    for d in det.diagnostics:
        (pt.note if d.code in INFO_CODES else pt.fail)(d.code, d.message, d.wrt)
    if det.record is not None:
        pt.extra["determinism"] = det.record
    pt.count("checks_backward", det.calls)


def _determinism(pt: Point, outs: list, tensors: dict, inspect_inputs, keep_gradient: bool = False) -> bool:
    """determinism.determinism, before every other check (outs and tensors become the second
    forward's); False when no graph is left to check (the failure is in pt).  keep_gradient:
    fast mode reuses its last backward call (pt.determinism.gradient)."""
    from gradcheck_cli.op import determinism
    from gradcheck_cli.op.runner import OpRaised

    try:
        pt.determinism = determinism.determinism(pt.prep.spec, pt.arrays, pt.opts.dtype, pt.opts.device, outs,
                                                tensors, pt.tol, pt.opts.seed, inspect_inputs, keep_gradient)
    except OpRaised as exc:
        op_raised(pt, exc)
        return False
    if not pt.determinism.usable:
        for d in pt.determinism.diagnostics:
            pt.fail(d.code, d.message, d.wrt)
        return False
    return True


def check_gradients(pt: Point, tensors: dict, outs: list, layout: OutputLayout, value: dict, adopt,
                     check_inputs) -> tuple:
    """References (float64 re-run, --reference), then determinism (a second forward, whose
    outputs replace the first's: adopt() makes them the checked and reported ones), then the
    Jacobian in the chosen mode, grad_output variety, and double backward.
    check_inputs(tensors, phase) is the mutation check."""
    from gradcheck_cli.op import fast, full

    spec, opts = pt.prep.spec, pt.opts
    f64 = _float64_outputs(pt, layout, outs, np.asarray(value["torch"]).reshape(-1))
    if f64 is not None and opts.dtype != "float64":
        value["float64"] = report_values(f64, layout)
        _precision_note(pt, value["torch"], f64)
    sym = _reference_checks(pt, outs, layout, value, f64)
    m = layout.m
    n_total = sum(math.prod(np.shape(pt.arrays[w])) for w in spec.wrt)
    mode = opts.mode
    if mode == "auto":
        mode = "full" if m * n_total <= AUTO_FULL_ENTRIES else "fast"
    # --mode full past full.FULL_LIMIT entries: only for a Jacobian whose sparsity index bits find (full.py)
    pt.extra["mode"] = mode
    pt.extra["outputs"] = layout.to_dict()
    # nothing here may hold the first forward's outputs while determinism runs the second
    if opts.dtype == "float64":
        f64 = None  # a view of them; the second forward's, below
    del value["torch"]
    usable = _determinism(pt, outs, tensors, lambda t: check_inputs(t, "backward"), mode == "fast")
    adopt()  # the second forward's outputs (the first's when there is no second)
    if not usable:
        return ()
    check_inputs(tensors, "forward")  # the second forward's inputs
    if not finite_output(pt, value, layout, second=True):
        _report_determinism(pt)
        return ()
    if opts.dtype == "float64":
        f64 = np.asarray(value["torch"]).reshape(-1)
    runner = full.run_full if mode == "full" else fast.run_fast
    results = runner(pt, tensors, outs, layout, f64, sym)
    _report_determinism(pt)
    return results


def _float64_outputs(pt: Point, layout: OutputLayout, outs: list, flat: np.ndarray | None = None) -> np.ndarray | None:
    """The op re-run in float64 at the dtype's point: the finite differences' reference
    (in float64 that is the forward already run).  None when the op cannot run in
    float64; finite differences then use the op's own dtype."""
    import torch

    from gradcheck_cli.op.runner import BadOutput, OpRaised, call, flat_numpy, make_tensors

    pt.extra["fd_dtype"] = "float64"
    if pt.opts.dtype == "float64":
        return flat_numpy(outs) if flat is None else flat
    try:
        tensors = make_tensors(pt.prep.spec, pt.ref_arrays, "float64", pt.opts.device, grad=False)
        with torch.no_grad():
            outs64 = call(pt.prep.spec, tensors)
        if [tuple(o.shape) for o in outs64] != list(layout.shapes):
            raise BadOutput(f"its output shapes differ in float64: {[list(o.shape) for o in outs64]}")
    except (OpRaised, BadOutput) as exc:
        why = exc.message if isinstance(exc, OpRaised) else str(exc)
        pt.note("reference_low_precision", (
            f"the op cannot run in float64 ({why}); finite differences use {pt.opts.dtype} with wider steps and "
            "their error estimate" + (", next to --reference's exact derivatives" if pt.prep.reference else
                                      "; give --reference for an exact check")))
        pt.extra["fd_dtype"] = pt.opts.dtype
        return None
    return flat_numpy(outs64)


def _precision_note(pt: Point, low: np.ndarray, f64: np.ndarray) -> None:
    if pt.opts.dtype == "float64":
        return
    low = np.asarray(low).reshape(-1)
    with np.errstate(all="ignore"):
        rel = np.abs(low - f64) / np.maximum(np.abs(f64), 1e-300)
    rel = np.where(np.isfinite(rel), rel, 0.0)
    worst = float(rel.max()) if rel.size else 0.0
    if worst > VALUE_RTOL[pt.opts.dtype]:
        k = int(np.argmax(rel))
        pt.note("precision_loss", f"the {pt.opts.dtype} forward {low[k]:.6g} differs from the float64 re-run "
                                  f"{f64[k]:.9g} by {worst:.2%}")


def _reference_checks(pt: Point, outs: list, layout: OutputLayout, value: dict, f64) -> dict | None:
    """--reference: the forward elementwise, and the exact Jacobians (None without one)."""
    from gradcheck_cli.op.reference import forward_verdict

    ref = pt.prep.reference
    if ref is None:
        pt.note("symbolic_unavailable", "no --reference: symbolic is null and the verdict rests on finite "
                                        "differences of the op")
        return None
    expected = ref.values(pt.ref_arrays)
    if expected is None:
        pt.note("symbolic_unavailable", f"{ref.error}; symbolic is null")
        return None
    got = [np.asarray(o.detach().to("cpu").double().numpy()) for o in outs]
    ok, message, errors = forward_verdict(got, expected, pt.opts.dtype, VALUE_RTOL[pt.opts.dtype])
    if ok and f64 is not None and pt.opts.dtype != "float64":  # the float64 re-run, at float64's tolerance
        got64 = [f64[o:o + math.prod(s)].reshape(s) for o, s in zip(layout.offsets, layout.shapes)]
        ok, message, errors = forward_verdict(got64, expected, "float64 re-run", VALUE_RTOL["float64"])
    pt.extra["forward"] = {"reference": ref.text, "passed": ok, **errors}
    if len(expected) == len(outs):
        try:
            value["reference"] = report_values(np.concatenate(
                [np.broadcast_to(e, o.shape).reshape(-1) for e, o in zip(expected, outs)]), layout)
        except ValueError:
            pass
    if not ok:
        pt.fail("forward_mismatch", message)
        shapes_fit = len(expected) == len(outs) and all(
            np.shape(e) in ((), tuple(o.shape)) for e, o in zip(expected, outs))
        if not shapes_fit:
            return None
    return _symbolic(pt, layout)


def _symbolic(pt: Point, layout: OutputLayout) -> dict | None:
    ref = pt.prep.reference
    jac = ref.jacobians(pt.ref_arrays, list(pt.prep.spec.wrt), list(layout.shapes))
    if jac is None:
        pt.note("symbolic_unavailable", f"{ref.error}; symbolic is null")
    return jac
