"""Zero false alarms on PyTorch's own ops (issue 12): check_op over a fixed, seeded slice of
the OpInfo database (`torch.testing._internal.common_methods_invocations.op_db`), first
sample input, float64 and float32, and complex128 and complex64 for the ops with a complex
backward.  torch's ops are correct, so a failed check is a false alarm of the gate, unless
torch.autograd.gradcheck fails on the same op and sample too (then the op's gradient is
not a known-correct one: `normal`'s derivative in its mean is defined as 0), or, in
float32 and complex64, torch's own Jacobian in that dtype misses its float64 one beyond
the tolerance (measured by torch alone: the op is ill-conditioned there in low precision,
and no gate with that tolerance could pass it).  The whole corpus, with timings beside torch's: benchmarks/bench_opinfo.py.

Complex ops are checked through their real views (view_as_real): both Wirtinger
derivatives at once, as torch.autograd.gradcheck does.  Known false alarms of causes not
fixed yet are strict xfails (KNOWN), so the day they pass this file says so.
"""

from __future__ import annotations

import random

import pytest
import torch

import gradcheck_cli

from opinfo_cases import bind, first_sample, low_precision_misses, op_name, sample_dtype, torch_verdict
from torch.testing._internal import common_methods_invocations as opinfo  # needs expecttest ('.[test]')

SLICE = 160
SEED = 0


def _slice() -> list:
    ops = sorted((op for op in opinfo.op_db if op.supports_autograd), key=op_name)
    return random.Random(SEED).sample(ops, min(SLICE, len(ops)))


OPS = _slice()
BY_NAME = {op_name(op): op for op in OPS}


def _case(op, dtype):
    """(fn, tensors, kwargs) for the op's first sample, or a reason to skip it."""
    use = sample_dtype(op, dtype)
    if use is None:
        return f"{op.name} has no backward in this dtype"
    sample = first_sample(op, use)
    if sample is None:
        return f"{op.name} has no sample"
    return bind(op, sample), (sample.input, *sample.args), dict(sample.kwargs)


# Known false alarms, each a cause issue 12 names and this project has not fixed yet: strict
# xfails, so that fixing the cause turns them into failures to remove from here.
KNOWN: dict = {}


def _params():
    out = []
    for dtype in (torch.float64, torch.float32, torch.complex128, torch.complex64):
        for op in OPS:
            if dtype.is_complex and dtype not in op.supported_backward_dtypes("cpu"):
                continue  # a real op: its complex case does not exist (not a skip)
            marks = []
            if op_name(op) in KNOWN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[op_name(op)]))
            out.append(pytest.param(op_name(op), dtype, id=f"{str(dtype)[6:]}-{op_name(op)}", marks=marks))
    return out


def _torch_also_fails(fn, tensors, kwargs) -> bool:
    return torch_verdict(fn, tensors, kwargs)[0] in ("fail", "raised")


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
    if dtype in (torch.float32, torch.complex64):
        misses = low_precision_misses(fn, tensors, kwargs, check.gradients[0].tolerance)
        if misses:  # torch's own low-precision Jacobian misses its float64 one: the op's numerics
            pytest.skip(f"torch's own {dtype} Jacobian misses its float64 one at {misses} entries beyond the "
                        "tolerance at this sample (ill-conditioned in low precision)")
    pytest.fail("false alarm: " + "; ".join(f"{d.code}: {d.message[:300]}" for d in check.diagnostics
                                           if d.code not in ("symbolic_unavailable", "warning")))
