"""One point of an op check: call the op, check its outputs and inputs, hand the
gradients to gradients.py, and put the CheckResult together."""

from __future__ import annotations

import time
import warnings

import numpy as np

from gradcheck_cli.devices import kind as device_kind
from gradcheck_cli.dtypes import rounded, torch_version
from gradcheck_cli.op.gradients import check_gradients
from gradcheck_cli.op.registration import registration_checks
from gradcheck_cli.op.state import Point, finite_output, layout_of, not_computed, op_raised, report_values
from gradcheck_cli.op.verdict import OutputLayout, op_tolerance
from gradcheck_cli.report import CheckResult
from gradcheck_cli.shared import dedupe


def check_point(prep, arrays: dict, opts) -> CheckResult:
    """Every check of the op at one point."""
    from gradcheck_cli.op import mutation
    from gradcheck_cli.op.runner import BadOutput, EmptyOutput, OpRaised, call, flat_numpy, make_tensors

    started = time.perf_counter()
    spec = prep.spec
    pt = Point(prep, opts, arrays, dict(rounded(arrays, opts.dtype)), op_tolerance(opts.dtype, opts.atol, opts.rtol),
               np.random.default_rng([opts.seed, 3]))
    pt.extra.update({"op": spec.label, "mode": opts.mode, "torch_version": torch_version(),
                     "kwargs": {k: _plain(v) for k, v in spec.kwargs.items()}, "wrt": list(spec.wrt)})
    value: dict = {}
    gradients: tuple = ()
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        tensors = make_tensors(spec, arrays, opts.dtype, opts.device)
        before = mutation.snapshot(tensors, arrays, opts.dtype)  # no copy: the arrays they came from
        fixed_before = _fixed_snapshot(spec)
        try:
            outs = call(spec, tensors)
            _complex_note(pt)
            outs = _differentiable_outputs(pt, outs)
        except OpRaised as exc:
            op_raised(pt, exc)
            outs = None
        except EmptyOutput as exc:
            pt.note("empty_output", f"{exc}: its Jacobian has no entries, so there is nothing to compare; the check "
                                    "passes")
            gradients = tuple(_empty_gradient(w, np.shape(arrays[w]), pt.tol) for w in spec.wrt)
            outs = None
        except BadOutput as exc:
            pt.fail("bad_output", str(exc))
            outs = None
        if outs is not None:
            layout = layout_of(outs)
            _check_mutation(pt, tensors, before, fixed_before, "forward")
            _output_metadata(pt, outs, opts)
            digest: dict = {}

            def adopt():
                """The outputs the checks read and the report shows: for one float64 output a
                read-only view of it (at 1e6 elements a copy is 8 MB more at the checks' peak),
                hashed, to notice an op that writes into memory it already returned.  Again
                after determinism's second forward, whose outputs the later checks use."""
                flat = flat_numpy(outs, copy=False)
                digest["shared"] = _digest(flat)  # None for a copy of ours
                value["torch"] = report_values(flat, layout)

            adopt()
            if finite_output(pt, value, layout):
                gradients = check_gradients(pt, tensors, outs, layout, value, adopt,
                                             lambda t, phase: _check_mutation(pt, t, before, fixed_before, phase))
                _check_mutation(pt, tensors, before, fixed_before, "backward")
            registration_checks(pt)  # custom torch.library operators only, once per check
            shared = digest["shared"]
            if shared is not None and _digest(np.asarray(value["torch"]).reshape(-1)) != shared:
                _reused_output(pt, arrays, layout, value)
            elif shared is not None:  # the report keeps a copy, made now that the check's peak is over
                value["torch"] = np.array(value["torch"])
    for w in caught:
        if not _ours(w.filename):  # the op's warnings, not numpy's about our own arithmetic
            pt.note("warning", f"{w.category.__name__}: {w.message}")
    pt.extra["duration_s"] = round(time.perf_counter() - started, 4)
    if not gradients:  # the op raised or gave no usable output: still one entry per input, all null
        gradients = tuple(not_computed(w, np.shape(arrays[w]), pt.tol) for w in spec.wrt)
    value.setdefault("torch", None)  # null when the op raised before giving an output
    value["symbolic"] = value.get("reference")  # the --reference expression, evaluated exactly
    passed = not pt.failed and all(g.passed for g in gradients)
    point = {**{k: np.asarray(v) for k, v in arrays.items()}, **spec.given}
    point = {k: point[k] for k in (*spec.order, *point) if k in point}  # the user's order
    return CheckResult(prep.name, "op", passed, opts.dtype, point, value, tuple(gradients), tuple(dedupe(pt.diags)),
                       pt.extra)


def _differentiable_outputs(pt, outs: list) -> list:
    """The outputs to check: those that require grad, when some do and some do not (the
    choice is kept in the spec, for every later call).  When none does, all are checked:
    finite differences then show whether a zero gradient is right."""
    spec = pt.prep.spec
    if spec.outputs is not None:
        return outs
    keep = tuple(k for k, o in enumerate(outs) if o.requires_grad)
    if keep and len(keep) < len(outs):
        skipped = [f"{k} {list(outs[k].shape)}" for k in range(len(outs)) if k not in keep]
        pt.note("non_differentiable_output", (
            f"output(s) {', '.join(skipped)} do not require grad (marked non-differentiable, indices, statistics "
            "such as mean/rstd): only the outputs that do are checked, as torch.autograd.gradcheck does"))
        spec.outputs = keep
        return [outs[k] for k in keep]
    return outs


def _complex_note(pt) -> None:
    """Say how complex inputs and outputs are checked (runner.OpSpec keeps which are)."""
    spec = pt.prep.spec
    if not (spec.complex_inputs or spec.complex_outputs):
        return
    parts = ([f"inputs {', '.join(sorted(spec.complex_inputs))}"] if spec.complex_inputs else []) + (
        ["its complex outputs"] if spec.complex_outputs else [])
    pt.note("complex_as_real", f"{' and '.join(parts)} are checked as real and imaginary parts (the last dimension "
                               "of 2, as torch.view_as_real lays them out): the real Jacobian holds both Wirtinger "
                               "derivatives, as torch.autograd.gradcheck checks them")
    real_axis = sorted(k for k in spec.complex_inputs if k in spec.wrt and not np.any(pt.arrays[k][..., 1]))
    if real_axis:
        pt.note("complex_on_real_axis", f"{', '.join(real_axis)} {'has' if len(real_axis) == 1 else 'have'} imaginary "
                                        "part 0 everywhere: on the real axis a backward that forgets a conj() can "
                                        "give the right numbers; check at complex(RE, IM) or randn(...) too")


def _empty_gradient(wrt: str, in_shape: tuple, tol: dict):
    """The gradient entry of an input of an op whose outputs are all empty: no entries."""
    from gradcheck_cli.report import GradientResult

    empty = np.zeros((0,) + tuple(in_shape))
    return GradientResult(wrt=wrt, shape=empty.shape, input_shape=tuple(in_shape), output_shape=(0,),
                          autograd=empty, symbolic=None, finite_difference=empty, fd_error_estimate=empty,
                          fd_computed=None, max_abs_error=0.0, max_rel_error=0.0, reference="finite_difference",
                          worst_index=None, passed=True,
                          tolerance={k: v for k, v in tol.items() if isinstance(v, (int, float))})


def _digest(flat: np.ndarray) -> tuple | None:
    """A fingerprint of the op's own output memory, to see whether it changes after it
    returned (None for a copy: flat_numpy hands back views read-only): the wrapping sum and
    the xor of its 64-bit words.  A later call writing other values there changes both; a
    cryptographic hash would cost ten times as much at 1e6 elements, three times a check."""
    if flat.flags.writeable or not flat.flags.c_contiguous or flat.dtype.itemsize != 8:
        return None
    words = flat.view(np.uint64)
    return int(words.sum(dtype=np.uint64)), int(np.bitwise_xor.reduce(words)), words.size


def _reused_output(pt: Point, arrays: dict, layout: OutputLayout, value: dict) -> None:
    """The op's output changed after it returned: it hands back a buffer it writes again on
    later calls.  The reported values come from one more call at the point, copied at once."""
    import torch

    from gradcheck_cli.op.runner import BadOutput, OpRaised, call, flat_numpy, make_tensors

    try:
        with torch.no_grad():
            again = call(pt.prep.spec, make_tensors(pt.prep.spec, arrays, pt.opts.dtype, pt.opts.device, grad=False))
        value["torch"] = report_values(flat_numpy(again), layout)
    except (OpRaised, BadOutput):
        return
    pt.note("warning", "the op's output changed after it was returned (the op hands back a buffer that later calls "
                       "write again); its reported values are from a fresh call at the point")


def _ours(filename: str) -> bool:
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    numpy_dir = os.path.dirname(os.path.abspath(np.__file__))
    path = os.path.abspath(filename or "")
    return path.startswith(here + os.sep) or path.startswith(numpy_dir + os.sep)


def _plain(v):
    return v if isinstance(v, (int, float, str, bool, list)) or v is None else repr(v)


def _fixed_snapshot(spec) -> dict:
    import torch

    from gradcheck_cli.op.runner import Fixed

    return {i: s.value.detach().clone() for i, s in enumerate(spec.slots)
            if isinstance(s, Fixed) and isinstance(s.value, torch.Tensor)}


def _check_mutation(pt: Point, tensors: dict, before: dict, fixed_before: dict, phase: str) -> None:
    import torch

    from gradcheck_cli.op import mutation

    names = mutation.mutated(tensors, before)
    for i, snap in fixed_before.items():
        now = pt.prep.spec.slots[i].value
        if now.shape != snap.shape or not torch.equal(now.detach(), snap):
            names.append(f"argument {i}")
    for nm in names:
        if any(d.code in ("input_mutated", "buffer_mutated") and d.wrt == nm for d in pt.diags):
            continue
        if nm in pt.prep.spec.wrt:
            pt.fail("input_mutated", f"the caller's input {nm!r} was changed in place during the {phase}: ops "
                                     "must not modify their inputs (clone first)", nm)
        else:  # running statistics and other buffers: updated on purpose, never differentiated
            pt.note("buffer_mutated", f"{nm!r}, which is not differentiated, was updated in place during the "
                                      f"{phase} (like batch norm's running statistics); the gradients do not depend "
                                      "on it, and every call gets the given values again", nm)


def _output_metadata(pt: Point, outs: list, opts) -> None:
    from gradcheck_cli.dtypes import torch_dtype

    td = torch_dtype(opts.dtype)
    for k, o in enumerate(outs):
        if o.dtype != td:
            pt.note("output_dtype", f"output {k} is {str(o.dtype).replace('torch.', '')} although the op ran on "
                                    f"{opts.dtype} inputs")
        if o.device.type != device_kind(opts.device):  # cuda:N is a cuda device
            pt.note("output_device", f"output {k} is on {o.device} although the inputs are on {opts.device}")
