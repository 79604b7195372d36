"""PyTorch's OpInfo ops as torch's own gradient tests call them, for tests/test_opinfo.py
and benchmarks/bench_opinfo.py: the first sample input of each op, through the op's
gradcheck_wrapper (which, for example, makes a Hermitian input out of the one it is given)
and the sample's output_process_fn_grad (which, for eig, keeps what does not depend on an
eigenvector's phase); and torch.autograd.gradcheck's verdict on the same op and sample."""

from __future__ import annotations

import time
import warnings


def op_name(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def sample_dtype(op, dtype):
    """`dtype`, or (for a real one) its complex counterpart for ops whose backward is
    complex only (istft); None when the op has neither."""
    import torch

    supported = op.supported_backward_dtypes("cpu")
    if dtype in supported:
        return dtype
    counterpart = {torch.float64: torch.complex128, torch.float32: torch.complex64}.get(dtype)
    return counterpart if counterpart in supported else None


def bind(op, sample):
    """The op as a callable of the sample's positional and keyword arguments."""
    def fn(*args, **kwargs):
        return sample.output_process_fn_grad(op.gradcheck_wrapper(op.get_op(), *args, **kwargs))

    fn.__qualname__ = op.name
    return fn


def first_sample(op, dtype):
    """The op's first sample input in `dtype` (None when it has none); sample_inputs' own
    exceptions propagate."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return next(iter(op.sample_inputs("cpu", dtype, requires_grad=True)), None)


def wide(t):
    """t in float64, or complex128 when complex (double() would drop the imaginary part)."""
    import torch

    return t.to(torch.complex128 if t.is_complex() else torch.float64)


def _low() -> dict:
    import torch

    return {torch.float32: torch.float32, torch.complex64: torch.float32, torch.bfloat16: torch.bfloat16,
            torch.float16: torch.float16}


def low_precision_misses(fn, tensors: tuple, kwargs: dict, tol: dict) -> int | None:
    """How many entries of torch's own Jacobian in the sample's (low) dtype miss torch's own
    Jacobian in float64 / complex128 at the same point by more than `tol` allows (the gate's
    formula: atol + rtol |J| + scale S, S the largest |J| in the entry's row or column).
    Torch alone, no gradcheck code: when entries miss, no gate with that tolerance can pass
    the op at that sample, however right its formula.  None when it cannot be measured."""
    import torch

    positions = [i for i, t in enumerate(tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not positions:
        return None
    LOW = _low()

    def jac(low: bool):
        def f(*reals):
            full = list(tensors)
            for i, r in zip(positions, reals):
                t = tensors[i]
                r = r.to(LOW.get(t.dtype, r.dtype) if low else r.dtype)
                full[i] = torch.view_as_complex(r.contiguous()) if t.is_complex() else r
            out = fn(*full, **kwargs)
            outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,))
                    if isinstance(o, torch.Tensor) and (o.is_floating_point() or o.is_complex())]
            return tuple((torch.view_as_real(o.resolve_conj()) if o.is_complex() else o).to(torch.float64).reshape(-1)
                         for o in outs)

        reals = tuple((torch.view_as_real(wide(tensors[i].detach())) if tensors[i].is_complex()
                       else wide(tensors[i].detach())) for i in positions)
        return torch.autograd.functional.jacobian(f, reals)

    try:
        low, high = jac(True), jac(False)
    except Exception:  # noqa: BLE001 -- not measurable here
        return None
    misses = 0
    for lo_row, hi_row in zip(low, high):
        for a, r in zip(lo_row, hi_row):
            a, r = a.reshape(a.shape[0], -1), r.reshape(r.shape[0], -1)
            if not r.numel():
                continue
            s = torch.maximum(r.abs().amax(1, keepdim=True), r.abs().amax(0, keepdim=True))
            allowed = tol["atol"] + tol["rtol"] * r.abs() + tol["scale"] * s
            misses += int(((a - r).abs() > allowed).sum())
    return misses


def torch_verdict(fn, tensors: tuple, kwargs: dict) -> tuple[str, float]:
    """torch.autograd.gradcheck on the same op and sample, in float64: ('pass' | 'fail' |
    'raised' | 'no inputs', seconds).  'no inputs': no positional tensor requires grad (a
    list input), which torch's gradcheck does not take apart."""
    import torch

    positions = [i for i, t in enumerate(tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
    inputs = tuple(wide(tensors[i].detach()).requires_grad_(True) for i in positions)
    if not inputs:
        return "no inputs", 0.0

    def call(*ts):
        full = [wide(t.detach()) if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) else t
                for t in tensors]
        for i, t in zip(positions, ts):
            full[i] = t
        return fn(*full, **kwargs)

    start = time.perf_counter()
    try:
        verdict = "pass" if torch.autograd.gradcheck(call, inputs, raise_exception=False) else "fail"
    except Exception:  # noqa: BLE001 -- torch cannot check it either
        verdict = "raised"
    return verdict, time.perf_counter() - start


def nonfinite_forward(fn, tensors: tuple, kwargs: dict) -> bool:
    """Whether the op's own forward, in the sample's dtype, is not finite where its float64
    forward is (a sample made for float64 outside a low precision's range: atanh at 0.999
    is 1.0 in bfloat16).  Torch alone, no gradcheck code."""
    import torch

    def finite(ts):
        out = fn(*ts, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return all(bool(torch.isfinite(o).all()) for o in outs if isinstance(o, torch.Tensor) and
                   (o.is_floating_point() or o.is_complex()))

    try:
        with torch.no_grad():
            low = finite(tensors)
            high = finite(tuple(wide(t) if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
                                else t for t in tensors))
    except Exception:  # noqa: BLE001 -- not measurable here
        return False
    return high and not low
