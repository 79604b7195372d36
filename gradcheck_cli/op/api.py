"""`gradcheck op`: the CI gate for custom ops -- their backward (and forward) against
references.

    report = check_op_target("samples/ops/swish.py:Swish", [("x", "randn(4, 5)")], [],
                             reference="x*sigmoid(x)")
    report = check_op(Swish.apply, torch.randn(4, 5, dtype=torch.float64))

At each point the op is run forward in --dtype (inputs from --at, in order), and then:

* its Jacobian (every output w.r.t. every differentiable input) from backward calls is
  compared with finite differences of the op itself in float64 (re-run in float64; in its
  own dtype only when it cannot run in float64) and, with --reference, with the exact
  derivatives of the expression -- every entry in full mode (jacobian.py explains
  how sparsity keeps that cheap), random projections plus sampled rows in fast mode;
* the forward against --reference, elementwise;
* grad_output variety, determinism, input mutation (checks.py, determinism.py, mutation.py);
* --order 2: double backward against finite differences of the backward.

An op that raises is a failed check with the op's message (exit 1); an op that cannot be
found or imported is the user's input error (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.op.binding import build_call, choose_wrt
from gradcheck_cli.op.point import check_point
from gradcheck_cli.op.verdict import OP_TOLERANCES
from gradcheck_cli.report import CheckResult, Report
from gradcheck_cli.shared import SharedOptions, validate_shared, worst_of_points
from gradcheck_cli.tolerances import OP_MODES
from gradcheck_cli.torch_state import preserved_state
from gradcheck_cli.values import Value

# op only: every floating input complex, held and differenced as its real view (..., 2) in
# the real dtype of the same precision (runner.OpSpec.complex_inputs)
COMPLEX_DTYPES = {"complex128": "float64", "complex64": "float32"}


@dataclass(frozen=True)
class OpOptions(SharedOptions):
    """Everything `gradcheck op` can be told, validated."""

    mode: str = "auto"

    def validate(self, probe_device: bool = True) -> "OpOptions":
        """Raise UserInputError for an option that cannot be used.  probe_device=False
        skips asking torch for a CUDA device: a process that forks workers must not
        initialize CUDA (the worker that runs the check asks)."""
        from gradcheck_cli.op.jacobian import OP_SCHEMES

        validate_shared(self, tuple(OP_TOLERANCES) + tuple(COMPLEX_DTYPES), OP_SCHEMES)
        if self.mode not in OP_MODES:
            raise UserInputError(f"--mode must be one of {', '.join(OP_MODES)}, got {self.mode!r}")
        if probe_device:
            from gradcheck_cli.devices import require

            require(self.device)
        return self

    @property
    def real(self) -> "OpOptions":
        """These options with a complex dtype replaced by the real one the checks run in."""
        from dataclasses import replace

        return replace(self, dtype=COMPLEX_DTYPES[self.dtype]) if self.dtype in COMPLEX_DTYPES else self

    @property
    def scheme(self) -> str:
        return {"auto": "central", "complex": "richardson"}.get(self.fd, self.fd)


@dataclass
class PreparedOp:
    """An op with its inputs: everything that does not change between points."""

    spec: Any  # runner.OpSpec
    values: dict  # name -> Value
    reference: Any  # reference.Reference | None
    name: str


# ---- entry points ------------------------------------------------------------------------

def check_op_target(target: str, at: list, kw: list, *, wrt: Iterable[str] | None = None,
                    reference: str | None = None, mode: str = "auto", dtype: str = "float64", fd: str = "auto",
                    eps: float | None = None, atol: float | None = None, rtol: float | None = None,
                    points: int = 0, seed: int = 0, order: int = 1, device: str = "cpu",
                    base_dir: str | None = None, name: str | None = None, init: list | None = None) -> Report:
    """`gradcheck op TARGET`: load FILE.py:ATTR, module:ATTR or a torch.library operator
    (torch.ops.NS.NAME, NS::NAME), build an nn.Module class or factory with `init` (--init
    NAME=VALUE pairs), read --at (positional inputs, in order; int(...)/bool(...) values are
    integer/boolean tensors) and --kw (keyword arguments; value-language tensors become
    tensors), check the call against the op's signature, and check the op.  Raises
    UserInputError for input that cannot be used (exit 2); a wrong op is a failed Report.
    Global torch state the op changes is restored afterwards (a global_state_changed note)."""
    with preserved_state() as changes:
        report = _check_target(target, at, kw, wrt=wrt, reference=reference, mode=mode, dtype=dtype, fd=fd,
                               eps=eps, atol=atol, rtol=rtol, points=points, seed=seed, order=order, device=device,
                               base_dir=base_dir, name=name, init=init)
    return with_state_note(report, changes)


def _check_target(target, at, kw, *, wrt, reference, mode, dtype, fd, eps, atol, rtol, points, seed, order, device,
                  base_dir, name, init) -> Report:
    from gradcheck_cli.op.loading import load_object, parse_kw
    from gradcheck_cli.op.runner import OpSpec
    from gradcheck_cli.op.targets import resolve

    opts = OpOptions(dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points, seed=seed, order=order,
                     mode=mode, device=device).validate()
    at = list(at or [])
    if not at:
        raise UserInputError("gradcheck op needs the op's inputs: give them in order with --at NAME=VALUE")
    complex_ = opts.dtype in COMPLEX_DTYPES
    if complex_ and reference is not None:
        raise UserInputError(f"--reference is a real expression and --dtype {opts.dtype} makes the inputs complex: "
                             "complex ops are checked against finite differences of the op (drop --reference)")
    init_kwargs = None if init is None else {k: parse_kw(k, v) for k, v in init}
    obj, label = load_object(target, base_dir)
    loaded = resolve(obj, label, init_kwargs, seed)
    call = build_call(loaded, at, list(kw or []), seed=seed, complex_=complex_, device=opts.device,
                      dtype=opts.real.dtype)
    names = tuple(call.values)
    chosen = choose_wrt(names, wrt, call.default_wrt, call.given)
    spec = OpSpec(call.fn, label, tuple(call.slots), call.kwargs, names, chosen,
                  complex_inputs=frozenset(k for k, v in call.values.items() if v.complex),
                  keyword_inputs=frozenset(call.keyword_inputs), given=call.given, target=loaded,
                  order=tuple(call.order))
    ref = _reference(reference, call.values)
    values = _torch_backed(call.values)  # the input is valid; the numpy originals go
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
    references are always float64.  Returns a Report; never raises on a wrong op.  Global
    torch state the op changes (grad mode, default dtype, RNG, threads, ...) is restored
    afterwards and named in a global_state_changed note."""
    import torch

    if isinstance(fn, torch.nn.Module):  # its parameters are inputs too
        return check_module(fn, *tensors, reference=reference, order=order, names=names, wrt=wrt, kwargs=kwargs,
                            dtype=dtype, device=device, mode=mode, fd=fd, eps=eps, atol=atol, rtol=rtol,
                            points=points, seed=seed, name=name)
    with preserved_state() as changes:
        report = _check_callable(fn, tensors, reference=reference, order=order, names=names, wrt=wrt,
                                 kwargs=kwargs, dtype=dtype, device=device, mode=mode, fd=fd, eps=eps, atol=atol,
                                 rtol=rtol, points=points, seed=seed, name=name)
    return with_state_note(report, changes)


def check_module(module, *inputs, reference: str | None = None, order: int = 1, names: Iterable[str] | None = None,
                 wrt: Iterable[str] | None = None, kwargs: dict | None = None, dtype: str | None = None,
                 device: str | None = None, mode: str = "auto", fd: str = "auto", eps: float | None = None,
                 atol: float | None = None, rtol: float | None = None, points: int = 0, seed: int = 0,
                 name: str | None = None) -> Report:
    """Check an nn.Module: gradients w.r.t. its floating inputs AND every parameter that
    requires grad (named as named_parameters() names them: weight, layer1.bias), or
    `wrt`.  The module is not touched: a copy in the check's dtype (default: the first
    floating input's, else the parameters') is called with torch.func.functional_call;
    buffers are fixed.  Inputs are named after forward's parameters (or `names`)."""
    import torch

    from gradcheck_cli.op.module import input_names, prepare_module

    floating = [t for t in inputs if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]
    first_param = next(iter(module.parameters()), None)
    sample = floating[0] if floating else first_param
    if sample is None:
        raise UserInputError("check_module needs a floating-point input or parameter")
    dtype = dtype or _dtype_name(sample.dtype)
    device = device or sample.device.type
    prepared = prepare_module(module, COMPLEX_DTYPES.get(dtype, dtype), device, name)
    names = list(names) if names is not None else input_names(module, len(floating))
    for taken in list(names) + list(kwargs or {}):
        if taken in prepared.parameters:
            raise UserInputError(f"{taken!r} is a parameter of the module; name the inputs otherwise")
    params = {k: v.clone().requires_grad_(True) for k, v in prepared.parameters.items()}
    chosen = list(wrt) if wrt is not None else list(names) + list(prepared.trainable)
    return check_op(prepared.op, *inputs, reference=reference, order=order, names=names, wrt=chosen,
                    kwargs={**(kwargs or {}), **params}, dtype=dtype, device=device, mode=mode, fd=fd, eps=eps,
                    atol=atol, rtol=rtol, points=points, seed=seed, name=prepared.label)


def with_state_note(report: Report, changes: list) -> Report:
    """The report with a global_state_changed note on its check when the op changed state."""
    if not changes:
        return report
    from dataclasses import replace

    from gradcheck_cli.report import Diagnostic
    from gradcheck_cli.torch_state import describe

    (check,) = report.checks
    note = Diagnostic("global_state_changed", describe(changes))
    return replace(report, checks=(replace(check, diagnostics=check.diagnostics + (note,)),))


def _check_callable(fn, tensors, *, reference, order, names, wrt, kwargs, dtype, device, mode, fd, eps, atol, rtol,
                    points, seed, name) -> Report:
    import torch

    from gradcheck_cli.op.memory import torch_backed
    from gradcheck_cli.op.runner import Fixed, OpSpec, Several
    from gradcheck_cli.op.signature import check_call
    from gradcheck_cli.op.targets import resolve

    label = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    loaded = resolve(fn, label)
    check_call(loaded.signatures, label, [f"#{k}" for k in range(len(tensors))], list(kwargs or {}))
    call_fn = loaded.fn
    given = list(names) if names is not None else None
    values, marked, found, complex_names = {}, [], [], set()
    make_complex = {"complex128": torch.complex128, "complex64": torch.complex64}.get(dtype)

    def take(arg, nm=None):
        """The slot of one argument: an input name, Several (a list of them), or Fixed."""
        if isinstance(arg, (list, tuple)) and any(isinstance(t, torch.Tensor) for t in arg):
            return Several(type(arg), tuple(take(t) for t in arg))
        if isinstance(arg, torch.Tensor) and arg.layout != torch.strided:
            raise UserInputError(f"an input has layout {str(arg.layout).replace('torch.', '')}: sparse inputs are not "
                                 "supported yet; check the op on dense inputs, or pass the sparse one as a keyword "
                                 "argument that does not require grad")
        if not (isinstance(arg, torch.Tensor) and (arg.is_floating_point() or arg.is_complex())):
            return Fixed(arg)
        k = len(values)
        nm = nm or (given[k] if given is not None and k < len(given) else f"x{k}")
        if nm in values:
            raise UserInputError(f"input name {nm!r} is used twice")
        real = arg.detach()
        if make_complex is not None and not real.is_complex():  # --dtype complex: a real input is z + 0i
            real = real.to(make_complex)
        if real.is_complex():  # held, differenced and reported as its real view (..., 2)
            complex_names.add(nm)
            real = torch.view_as_real(real.resolve_conj())
        values[nm] = Value(nm, torch_backed(real.to(device="cpu", dtype=torch.float64).numpy().copy()),
                           f"tensor{list(real.shape)}", False)
        if arg.requires_grad:
            marked.append(nm)
        found.append(arg)
        return nm

    slots = [take(arg) for arg in tensors]
    positional = len(values)
    keywords = dict(kwargs or {})
    keyword_inputs = set()
    for key, val in keywords.items():  # a tensor keyword argument that requires grad is an input too
        if isinstance(val, torch.Tensor) and val.requires_grad or isinstance(val, (list, tuple)) and any(
                isinstance(t, torch.Tensor) and t.requires_grad for t in val):
            keywords[key] = take(val, key if isinstance(val, torch.Tensor) else None)
            keyword_inputs.add(key)
    first = found[0] if found else None
    if not values:
        raise UserInputError("check_op needs at least one floating-point tensor input")
    if given is not None and len(given) != positional:
        raise UserInputError(f"names= gives {len(given)} name(s) for {positional} floating tensor input(s)")
    dtype = dtype or _dtype_name(first.dtype)
    device = device or first.device.type
    opts = OpOptions(dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points, seed=seed, order=order,
                     mode=mode, device=device).validate()
    chosen = choose_wrt(tuple(values), wrt if wrt is not None else (marked or None))
    spec = OpSpec(call_fn, label, tuple(slots), keywords, tuple(values), chosen,
                  complex_inputs=frozenset(complex_names), keyword_inputs=frozenset(keyword_inputs), target=loaded)
    if complex_names and reference is not None:
        raise UserInputError("reference= is a real expression and the op has complex inputs: complex ops are checked "
                             "against finite differences of the op (drop reference=)")
    ref = _reference(reference, values)
    return Report((run_points(PreparedOp(spec, values, ref, label), opts),))


def _dtype_name(td) -> str:
    import torch

    names = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
             torch.bfloat16: "bfloat16", torch.complex128: "float64", torch.complex64: "float32"}
    if td not in names:
        raise UserInputError(f"inputs of dtype {td} are not supported (float64, float32, float16, bfloat16)")
    return names[td]


def _torch_backed(values: dict) -> dict:
    """The values, large float64 arrays moved into memory torch owns (memory.torch_backed)
    and the numpy originals released."""
    from dataclasses import replace

    from gradcheck_cli.op.memory import RELEASE_FROM, release_freed_memory, torch_backed

    if sum(v.array.size for v in values.values()) >= RELEASE_FROM:
        release_freed_memory()  # before the copies are made, so the originals' memory goes back
    return {k: replace(v, array=torch_backed(v.array)) for k, v in values.items()}


def _reference(text: str | None, values: dict):
    if text is None:
        return None
    from gradcheck_cli.op.reference import parse_reference

    return parse_reference(text, {k: tuple(v.array.shape) for k, v in values.items()})


# ---- points ------------------------------------------------------------------------------

def run_points(prep: PreparedOp, opts: OpOptions) -> CheckResult:
    """The given point, then --points random ones; the worst is reported.  With complex
    inputs the checks run in the real dtype of their views and the report names the
    complex one (complex128 for float64 views)."""
    from dataclasses import replace

    real = opts.real
    result = worst_of_points(lambda arrays: check_point(prep, arrays, real), prep.values, opts.seed, opts.points)
    if prep.spec.complex_inputs:
        named = {v: k for k, v in COMPLEX_DTYPES.items()}.get(real.dtype, real.dtype)
        result = replace(result, dtype=named)
    return result
