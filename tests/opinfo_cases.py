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
    """`dtype`, or its complex counterpart for ops whose backward is complex only (istft);
    None when the op has neither."""
    import torch

    supported = op.supported_backward_dtypes("cpu")
    if dtype in supported:
        return dtype
    counterpart = {torch.float64: torch.complex128, torch.float32: torch.complex64}[dtype]
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


def torch_verdict(fn, tensors: tuple, kwargs: dict) -> tuple[str, float]:
    """torch.autograd.gradcheck on the same op and sample, in float64: ('pass' | 'fail' |
    'raised' | 'no inputs', seconds).  'no inputs': no positional tensor requires grad (a
    list input), which torch's gradcheck does not take apart."""
    import torch

    positions = [i for i, t in enumerate(tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
    inputs = tuple(tensors[i].detach().double().requires_grad_(True) for i in positions)
    if not inputs:
        return "no inputs", 0.0

    def call(*ts):
        full = [t.detach().double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors]
        for i, t in zip(positions, ts):
            full[i] = t
        return fn(*full, **kwargs)

    start = time.perf_counter()
    try:
        verdict = "pass" if torch.autograd.gradcheck(call, inputs, raise_exception=False) else "fail"
    except Exception:  # noqa: BLE001 -- torch cannot check it either
        verdict = "raised"
    return verdict, time.perf_counter() - start
