"""`gradcheck op`: the CI gate for custom ops -- their backward (and forward) against
references.

    report = check_op_target("samples/ops/swish.py:Swish", [("x", "randn(4, 5)")], [],
                             reference="x*sigmoid(x)")
    report = check_op(Swish.apply, torch.randn(4, 5, dtype=torch.float64))

At each point the op is run forward in --dtype (inputs from --at, in order), and then:

* its Jacobian (every output w.r.t. every differentiable input) from backward calls is
  compared with finite differences of the op itself in float64 (re-run in float64; in its
  own dtype only when it cannot run in float64) and, with --reference, with the exact
  derivatives of the expression -- every entry in full mode (ops_jacobian.py explains
  how sparsity keeps that cheap), random projections plus sampled rows in fast mode;
* the forward against --reference, elementwise;
* grad_output variety, determinism, input mutation (ops_checks.py);
* --order 2: double backward against finite differences of the backward.

An op that raises is a failed check with the op's message (exit 1); an op that cannot be
found or imported is the user's input error (exit 2).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from gradcheck_cli.checker import SharedOptions, _dedupe, validate_shared, worst_of_points
from gradcheck_cli.dtypes import rounded, torch_version
from gradcheck_cli.errors import UserInputError
from gradcheck_cli.tolerances import TOLERANCES
from gradcheck_cli.ops_compare import OP_TOLERANCES, OutputLayout, op_tolerance
from gradcheck_cli.report import CheckResult, Diagnostic, GradientResult, Report
from gradcheck_cli.values import Value, parse_values

MODES = ("auto", "full", "fast")
AUTO_FULL_ENTRIES = 4_194_304  # Jacobian entries (outputs x inputs) up to which auto means full
FULL_LIMIT = 16_777_216  # --mode full refuses beyond this
VALUE_RTOL = {dtype: tol["value_rtol"] for dtype, tol in TOLERANCES.items()}


@dataclass(frozen=True)
class OpOptions(SharedOptions):
    """Everything `gradcheck op` can be told, validated."""

    mode: str = "auto"

    def validate(self) -> "OpOptions":
        from gradcheck_cli.ops_jacobian import OP_SCHEMES

        validate_shared(self, tuple(OP_TOLERANCES), OP_SCHEMES)
        if self.mode not in MODES:
            raise UserInputError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UserInputError("--device cuda: no CUDA device is available to torch here")
        return self

    @property
    def scheme(self) -> str:
        return {"auto": "central", "complex": "richardson"}.get(self.fd, self.fd)


@dataclass
class PreparedOp:
    """An op with its inputs: everything that does not change between points."""

    spec: Any  # ops_runner.OpSpec
    values: dict  # name -> Value
    reference: Any  # ops_reference.Reference | None
    name: str


# ---- entry points ------------------------------------------------------------------------

def check_op_target(target: str, at: list, kw: list, *, wrt: Iterable[str] | None = None,
                    reference: str | None = None, mode: str = "auto", dtype: str = "float64", fd: str = "auto",
                    eps: float | None = None, atol: float | None = None, rtol: float | None = None,
                    points: int = 0, seed: int = 0, order: int = 1, device: str = "cpu",
                    base_dir: str | None = None, name: str | None = None) -> Report:
    """`gradcheck op TARGET`: load FILE.py:ATTR or module:ATTR, read --at (positional inputs,
    in order) and --kw (keyword arguments, passed as is), and check the op.  Raises
    UserInputError for input that cannot be used (exit 2); a wrong op is a failed Report."""
    from gradcheck_cli.ops_loading import load_target, parse_kw
    from gradcheck_cli.ops_runner import OpSpec

    opts = OpOptions(dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points, seed=seed, order=order,
                     mode=mode, device=device).validate()
    at = list(at or [])
    if not at:
        raise UserInputError("gradcheck op needs the op's inputs: give them in order with --at NAME=VALUE")
    values = parse_values(at, seed)
    kwargs = {}
    for k, v in (kw or []):
        if k in kwargs:
            raise UserInputError(f"--kw {k!r} is given twice")
        if k in values:
            raise UserInputError(f"{k!r} is given both as --at (an input) and --kw (a keyword argument)")
        kwargs[k] = parse_kw(k, v)
    names = tuple(values)
    chosen = _choose_wrt(names, wrt)
    fn, label = load_target(target, base_dir)
    spec = OpSpec(fn, label, names, kwargs, names, chosen)
    ref = _reference(reference, values)
    values = _torch_backed(values)  # the input is valid; the numpy originals go
    prep = PreparedOp(spec, values, ref, name or target)
    return Report((run_points(prep, opts),))


def check_op(fn, *tensors, reference: str | None = None, order: int = 1, names: Iterable[str] | None = None,
             wrt: Iterable[str] | None = None, kwargs: dict | None = None, dtype: str | None = None,
             device: str | None = None, mode: str = "auto", fd: str = "auto", eps: float | None = None,
             atol: float | None = None, rtol: float | None = None, points: int = 0, seed: int = 0,
             name: str | None = None) -> Report:
    """Check `fn` (a callable or a torch.autograd.Function subclass) at the given inputs.

    Floating-point tensors among the positional arguments are the op's inputs, named
    x0, x1, ... (or `names`).  The differentiated ones are `wrt` when given, else those
    with requires_grad=True when any has it, else every floating tensor.  Other
    arguments (ints, integer tensors, ...) and `kwargs` are passed as is.  The op runs
    in `dtype` (default: the inputs' dtype) on `device` (default: the inputs' device);
    references are always float64.  Returns a Report; never raises on a wrong op."""
    import torch

    from gradcheck_cli.ops_loading import as_callable
    from gradcheck_cli.ops_runner import Fixed, OpSpec, torch_backed

    label = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    call_fn = as_callable(fn, label)
    given = list(names) if names is not None else None
    slots, values, marked, first = [], {}, [], None
    for arg in tensors:
        if isinstance(arg, torch.Tensor) and arg.is_floating_point():
            k = len(values)
            nm = given[k] if given is not None and k < len(given) else f"x{k}"
            if nm in values:
                raise UserInputError(f"input name {nm!r} is used twice")
            arr = torch_backed(arg.detach().to(device="cpu", dtype=torch.float64).numpy().copy())
            values[nm] = Value(nm, arr, f"tensor{list(arr.shape)}", False)
            slots.append(nm)
            if arg.requires_grad:
                marked.append(nm)
            if first is None:
                first = arg
        else:
            slots.append(Fixed(arg))
    if not values:
        raise UserInputError("check_op needs at least one floating-point tensor input")
    if given is not None and len(given) != len(values):
        raise UserInputError(f"names= gives {len(given)} name(s) for {len(values)} floating tensor input(s)")
    dtype = dtype or _dtype_name(first.dtype)
    device = device or first.device.type
    opts = OpOptions(dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points, seed=seed, order=order,
                     mode=mode, device=device).validate()
    chosen = _choose_wrt(tuple(values), wrt if wrt is not None else (marked or None))
    spec = OpSpec(call_fn, label, tuple(slots), dict(kwargs or {}), tuple(values), chosen)
    ref = _reference(reference, values)
    return Report((run_points(PreparedOp(spec, values, ref, label), opts),))


def _dtype_name(td) -> str:
    import torch

    names = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
             torch.bfloat16: "bfloat16"}
    if td not in names:
        raise UserInputError(f"inputs of dtype {td} are not supported (float64, float32, float16, bfloat16)")
    return names[td]


def _choose_wrt(names: tuple, wrt) -> tuple:
    chosen = tuple(names if wrt is None else wrt)
    if not chosen:
        raise UserInputError("--wrt names no input")
    for w in chosen:
        if w not in names:
            raise UserInputError(f"--wrt {w!r}: the op has no input {w!r} (its inputs: {', '.join(names)})")
    if len(set(chosen)) != len(chosen):
        raise UserInputError("--wrt names an input twice")
    return chosen  # --wrt order: gradients and Hessian rows follow it, as the contract says


def _torch_backed(values: dict) -> dict:
    """The values, large float64 arrays moved into memory torch owns (ops_runner.torch_backed)
    and the numpy originals released."""
    from dataclasses import replace

    from gradcheck_cli.ops_runner import RELEASE_FROM, release_freed_memory, torch_backed

    if sum(v.array.size for v in values.values()) >= RELEASE_FROM:
        release_freed_memory()  # before the copies are made, so the originals' memory goes back
    return {k: replace(v, array=torch_backed(v.array)) for k, v in values.items()}


def _reference(text: str | None, values: dict):
    if text is None:
        return None
    from gradcheck_cli.ops_reference import parse_reference

    return parse_reference(text, {k: tuple(v.array.shape) for k, v in values.items()})


# ---- points ------------------------------------------------------------------------------

def run_points(prep: PreparedOp, opts: OpOptions) -> CheckResult:
    """The given point, then --points random ones; the worst is reported."""
    return worst_of_points(lambda arrays: check_point(prep, arrays, opts), prep.values, opts.seed, opts.points)


# ---- one point ---------------------------------------------------------------------------

@dataclass
class Point:
    """What one point's checks share."""

    prep: PreparedOp
    opts: OpOptions
    arrays: dict  # the point, float64
    ref_arrays: dict  # the point as the dtype represents it, float64
    tol: dict
    rng: np.random.Generator
    diags: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    failed: bool = False
    determinism: Any = None  # ops_checks.DeterminismOutcome, reported after the Jacobian's diagnostics

    def fail(self, code: str, message: str, wrt: str | None = None) -> None:
        self.failed = True
        self.diags.append(Diagnostic(code, message, wrt))

    def note(self, code: str, message: str, wrt: str | None = None) -> None:
        self.diags.append(Diagnostic(code, message, wrt))


def check_point(prep: PreparedOp, arrays: dict, opts: OpOptions) -> CheckResult:
    """Every check of the op at one point."""
    from gradcheck_cli import ops_checks
    from gradcheck_cli.ops_runner import BadOutput, OpRaised, call, flat_numpy, make_tensors

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
        before = ops_checks.snapshot(tensors, arrays, opts.dtype)  # no copy: the arrays they came from
        fixed_before = _fixed_snapshot(spec)
        try:
            outs = call(spec, tensors)
        except OpRaised as exc:
            _op_raised(pt, exc)
            outs = None
        except BadOutput as exc:
            pt.fail("bad_output", str(exc))
            outs = None
        if outs is not None:
            layout = _layout(outs)
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
                value["torch"] = _report_values(flat, layout)

            adopt()
            if _finite_output(pt, value, layout):
                gradients = _check_gradients(pt, tensors, outs, layout, value, adopt,
                                             lambda t, phase: _check_mutation(pt, t, before, fixed_before, phase))
                _check_mutation(pt, tensors, before, fixed_before, "backward")
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
        gradients = tuple(_not_computed(w, np.shape(arrays[w]), pt.tol) for w in spec.wrt)
    value.setdefault("torch", None)  # null when the op raised before giving an output
    value["symbolic"] = value.get("reference")  # the --reference expression, evaluated exactly
    passed = not pt.failed and all(g.passed for g in gradients)
    point = {k: np.asarray(v) for k, v in arrays.items()}
    return CheckResult(prep.name, "op", passed, opts.dtype, point, value, tuple(gradients), tuple(_dedupe(pt.diags)),
                       pt.extra)


def _finite_output(pt: Point, value: dict, layout: OutputLayout, second: bool = False) -> bool:
    """Whether the forward output is finite (else a failed check: no gradient means anything).
    `second`: the output of determinism's second call, the first call's having been finite."""
    flat = np.asarray(value["torch"]).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        where = f"at {layout.label(int(bad[0]))} ({flat[bad[0]]:.6g})"
        pt.fail("nonfinite", (
            f"the forward output in {pt.opts.dtype} is finite on the first call but not on a second call at the same "
            f"point, {where}: the op is not deterministic" if second else
            f"the forward output in {pt.opts.dtype} is not finite {where}; the gradient of an undefined value means "
            "nothing (pick another point)"))
    return not bad.size


def _report_determinism(pt: Point) -> None:
    """ops_checks.determinism's findings, record and backward calls into the report (after the
    Jacobian's diagnostics, whatever happened after determinism ran)."""
    from gradcheck_cli.ops_full import _INFO

    det = pt.determinism
    if det is None or not det.usable:
        return
    for d in det.diagnostics:
        (pt.note if d.code in _INFO else pt.fail)(d.code, d.message, d.wrt)
    if det.record is not None:
        pt.extra["determinism"] = det.record
    calls = pt.extra.setdefault("calls", {})
    calls["checks_backward"] = calls.get("checks_backward", 0) + det.calls


def _determinism(pt: Point, outs: list, tensors: dict, inspect_inputs) -> bool:
    """ops_checks.determinism, before every other check (outs and tensors become the second
    forward's); False when no graph is left to check (the failure is in pt)."""
    from gradcheck_cli import ops_checks
    from gradcheck_cli.ops_runner import OpRaised

    try:
        pt.determinism = ops_checks.determinism(pt.prep.spec, pt.arrays, pt.opts.dtype, pt.opts.device, outs,
                                                tensors, pt.tol, pt.opts.seed, inspect_inputs)
    except OpRaised as exc:
        _op_raised(pt, exc)
        return False
    if not pt.determinism.usable:
        for d in pt.determinism.diagnostics:
            pt.fail(d.code, d.message, d.wrt)
        return False
    return True


def _not_computed(wrt: str, in_shape: tuple, tol: dict) -> GradientResult:
    """A gradient entry for an input whose gradient could not be computed (see diagnostics)."""
    nan = float("nan")
    return GradientResult(wrt=wrt, shape=tuple(in_shape), input_shape=tuple(in_shape), output_shape=(),
                          autograd=None, symbolic=None, finite_difference=None, fd_error_estimate=None,
                          fd_computed=None, max_abs_error=nan, max_rel_error=nan, reference="none",
                          worst_index=None, passed=False, tolerance={k: v for k, v in tol.items()
                                                                     if isinstance(v, (int, float))})


def _digest(flat: np.ndarray) -> bytes | None:
    """A hash of the op's own output memory, to see whether it changes after it returned
    (None for a copy: flat_numpy hands back views read-only)."""
    if flat.flags.writeable or not flat.flags.c_contiguous:
        return None
    import hashlib

    return hashlib.blake2b(memoryview(flat), digest_size=16).digest()


def _reused_output(pt: Point, arrays: dict, layout: OutputLayout, value: dict) -> None:
    """The op's output changed after it returned: it hands back a buffer it writes again on
    later calls.  The reported values come from one more call at the point, copied at once."""
    import torch

    from gradcheck_cli.ops_runner import BadOutput, OpRaised, call, flat_numpy, make_tensors

    try:
        with torch.no_grad():
            again = call(pt.prep.spec, make_tensors(pt.prep.spec, arrays, pt.opts.dtype, pt.opts.device, grad=False))
        value["torch"] = _report_values(flat_numpy(again), layout)
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


def _layout(outs: list) -> OutputLayout:
    shapes = tuple(tuple(o.shape) for o in outs)
    offsets = tuple(int(x) for x in np.cumsum([0] + [math.prod(s) for s in shapes])[:-1])
    return OutputLayout(shapes, offsets)


def _report_values(flat: np.ndarray, layout: OutputLayout) -> np.ndarray:
    return np.asarray(flat).reshape(layout.report_shape)


def _op_raised(pt: Point, exc) -> None:
    text = str(exc.exc)
    if "leaf Variable that requires grad is being used in an in-place operation" in text:
        pt.fail("input_mutated", f"the op modifies its input in place ({exc.message}); ops must not mutate "
                                 "their inputs")
    elif "returned an invalid gradient" in text:
        pt.fail("wrong_shape" if "shape" in text else "wrong_gradient_metadata",
                f"the backward returned a gradient of the wrong shape, dtype or device: {exc.message}")
    else:
        pt.fail("op_error", f"the op raised in {exc.phase}: {exc.message}")


def _fixed_snapshot(spec) -> dict:
    import torch

    from gradcheck_cli.ops_runner import Fixed

    return {i: s.value.detach().clone() for i, s in enumerate(spec.slots)
            if isinstance(s, Fixed) and isinstance(s.value, torch.Tensor)}


def _check_mutation(pt: Point, tensors: dict, before: dict, fixed_before: dict, phase: str) -> None:
    import torch

    from gradcheck_cli import ops_checks

    names = ops_checks.mutated(tensors, before)
    for i, snap in fixed_before.items():
        now = pt.prep.spec.slots[i].value
        if now.shape != snap.shape or not torch.equal(now.detach(), snap):
            names.append(f"argument {i}")
    for nm in names:
        if any(d.code == "input_mutated" and d.wrt == nm for d in pt.diags):
            continue
        pt.fail("input_mutated", f"the caller's input {nm!r} was changed in place during the {phase}: ops must "
                                 "not modify their inputs (clone first)", nm)


def _output_metadata(pt: Point, outs: list, opts: OpOptions) -> None:
    from gradcheck_cli.ops_runner import torch_dtype

    td = torch_dtype(opts.dtype)
    for k, o in enumerate(outs):
        if o.dtype != td:
            pt.note("output_dtype", f"output {k} is {str(o.dtype).replace('torch.', '')} although the op ran on "
                                    f"{opts.dtype} inputs")
        if o.device.type != opts.device:
            pt.note("output_device", f"output {k} is on {o.device} although the inputs are on {opts.device}")


def _check_gradients(pt: Point, tensors: dict, outs: list, layout: OutputLayout, value: dict, adopt,
                     check_inputs) -> tuple:
    """References (float64 re-run, --reference), then determinism (a second forward, whose
    outputs replace the first's: adopt() makes them the checked and reported ones), then the
    Jacobian in the chosen mode, grad_output variety, and double backward.
    check_inputs(tensors, phase) is the mutation check."""
    from gradcheck_cli import ops_fast, ops_full

    spec, opts = pt.prep.spec, pt.opts
    f64 = _float64_outputs(pt, layout, outs, np.asarray(value["torch"]).reshape(-1))
    if f64 is not None and opts.dtype != "float64":
        value["float64"] = _report_values(f64, layout)
        _precision_note(pt, value["torch"], f64)
    sym = _reference_checks(pt, outs, layout, value, f64)
    m = layout.m
    n_total = sum(math.prod(np.shape(pt.arrays[w])) for w in spec.wrt)
    mode = opts.mode
    if mode == "auto":
        mode = "full" if m * n_total <= AUTO_FULL_ENTRIES else "fast"
    if mode == "full" and m * n_total > FULL_LIMIT:
        raise UserInputError(f"--mode full: the Jacobian has {m * n_total:,} entries (limit {FULL_LIMIT:,}); "
                             "use --mode fast (random projections and sampled rows)")
    pt.extra["mode"] = mode
    pt.extra["outputs"] = layout.to_dict()
    # nothing here may hold the first forward's outputs while determinism runs the second
    if opts.dtype == "float64":
        f64 = None  # a view of them; the second forward's, below
    del value["torch"]
    usable = _determinism(pt, outs, tensors, lambda t: check_inputs(t, "backward"))
    adopt()  # the second forward's outputs (the first's when there is no second)
    if not usable:
        return ()
    check_inputs(tensors, "forward")  # the second forward's inputs
    if not _finite_output(pt, value, layout, second=True):
        _report_determinism(pt)
        return ()
    if opts.dtype == "float64":
        f64 = np.asarray(value["torch"]).reshape(-1)
    runner = ops_full.run_full if mode == "full" else ops_fast.run_fast
    results = runner(pt, tensors, outs, layout, f64, sym)
    _report_determinism(pt)
    return results


def _float64_outputs(pt: Point, layout: OutputLayout, outs: list, flat: np.ndarray | None = None) -> np.ndarray | None:
    """The op re-run in float64 at the dtype's point: the finite differences' reference
    (in float64 that is the forward already run).  None when the op cannot run in
    float64; finite differences then use the op's own dtype."""
    import torch

    from gradcheck_cli.ops_runner import BadOutput, OpRaised, call, flat_numpy, make_tensors

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
    from gradcheck_cli.ops_reference import forward_verdict

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
            value["reference"] = _report_values(np.concatenate(
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
