"""Zero false alarms on PyTorch's own ops (issue 12): check_op over a fixed, seeded slice of
the OpInfo database (`torch.testing._internal.common_methods_invocations.op_db`), first
sample input, float64 and float32.  torch's ops are correct, so a failed check is a false
alarm of the gate, unless torch.autograd.gradcheck fails on the same op and sample too
(then the op's gradient is not a known-correct one: `normal`'s derivative in its mean is
defined as 0).  The whole corpus, with timings beside torch's: benchmarks/bench_opinfo.py.

Complex ops are checked through their real views (view_as_real): both Wirtinger
derivatives at once, as torch.autograd.gradcheck does.  Known false alarms of causes not
fixed yet are strict xfails (KNOWN), so the day they pass this file says so.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import gradcheck_cli

from torch.testing._internal import common_methods_invocations as opinfo  # needs expecttest ('.[test]')

SLICE = 160
SEED = 0


def _name(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def _slice() -> list:
    ops = sorted((op for op in opinfo.op_db if op.supports_autograd), key=_name)
    return random.Random(SEED).sample(ops, min(SLICE, len(ops)))


OPS = _slice()
BY_NAME = {_name(op): op for op in OPS}


def _case(op, dtype):
    """(fn, tensors, kwargs) for the op's first sample, or a reason to skip it."""
    supported = op.supported_backward_dtypes("cpu")
    if dtype not in supported:  # a complex-only backward (istft): its complex counterpart
        dtype = {torch.float64: torch.complex128, torch.float32: torch.complex64}[dtype]
        if dtype not in supported:
            return f"{op.name} has no backward in this dtype"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample = next(iter(op.sample_inputs("cpu", dtype, requires_grad=True)), None)
    if sample is None:
        return f"{op.name} has no sample"

    def fn(*args, **kwargs):
        return sample.output_process_fn_grad(op.gradcheck_wrapper(op.get_op(), *args, **kwargs))

    return fn, (sample.input, *sample.args), dict(sample.kwargs)


# Known false alarms, each a cause issue 12 names and this project has not fixed yet: strict
# xfails, so that fixing the cause turns them into failures to remove from here.
KNOWN: dict = {}


def _params():
    out = []
    for dtype in (torch.float64, torch.float32):
        for op in OPS:
            marks = []
            if _name(op) in KNOWN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[_name(op)]))
            out.append(pytest.param(_name(op), dtype, id=f"{str(dtype)[6:]}-{_name(op)}", marks=marks))
    return out


def _torch_also_fails(fn, tensors, kwargs) -> bool:
    positions = [i for i, t in enumerate(tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
    inputs = tuple(tensors[i].detach().double().requires_grad_(True) for i in positions)
    if not inputs:  # a list input: no verdict of torch's to lean on
        return False

    def call(*ts):
        full = [t.detach().double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors]
        for i, t in zip(positions, ts):
            full[i] = t
        return fn(*full, **kwargs)

    try:
        return not torch.autograd.gradcheck(call, inputs, raise_exception=False)
    except Exception:  # noqa: BLE001 -- torch cannot check it either
        return True


def test_the_slice_is_large_enough():
    assert len(OPS) >= 150


@pytest.mark.parametrize("name, dtype", _params())
def test_torchs_own_ops_pass(name, dtype):
    case = _case(BY_NAME[name], dtype)
    if isinstance(case, str):
        pytest.skip(case)
    fn, tensors, kwargs = case
    try:  # the dtype the sample's tensors have (a complex one's real view)
        report = gradcheck_cli.check_op(fn, *tensors, kwargs=kwargs)
    except gradcheck_cli.UserInputError as err:  # a clear refusal (sparse inputs), never a crash
        pytest.skip(f"refused as not supported yet (issue 12): {err}")
    if report.passed:
        return
    if _torch_also_fails(fn, tensors, kwargs):
        pytest.skip("torch.autograd.gradcheck fails on this op and sample too: not a known-correct gradient")
    (check,) = report.checks
    pytest.fail("false alarm: " + "; ".join(f"{d.code}: {d.message[:300]}" for d in check.diagnostics
                                           if d.code not in ("symbolic_unavailable", "warning")))
