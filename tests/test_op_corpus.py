"""Correct ops must pass (issue 12): each cause of a false alarm or a crash found on
PyTorch's OpInfo corpus and published packages, as a small op written here."""

from __future__ import annotations

import pytest
import torch

import gradcheck_cli


def x64(*values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


class RoundWithZeroTensor(torch.autograd.Function):
    """round(x): the derivative is 0 almost everywhere, returned the way torch's own
    formulas return such a gradient (a ZeroTensor, which has no numpy view)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return torch._efficientzerotensor(ctx.shape, dtype=g.dtype, device=g.device)


@pytest.mark.parametrize("op, x", [
    (torch.sgn, x64(0.5, -1.25, 2.0)),  # real input: torch's backward formula gives a ZeroTensor
    (RoundWithZeroTensor.apply, x64(0.3, -1.2, 2.2)),
])
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_zero_tensor_gradients_are_zeros(op, x, mode):
    report = gradcheck_cli.check_op(op, x, mode=mode)
    (check,) = report.checks
    assert report.passed, [d.message for d in check.diagnostics]
    if mode == "full":  # every Jacobian entry, read from the ZeroTensor as 0
        assert check.gradients[0].autograd.tolist() == [[0.0] * 3] * 3


def test_a_wrong_gradient_next_to_a_zero_tensor_is_still_caught():
    class HalfRound(RoundWithZeroTensor):
        @staticmethod
        def forward(ctx, x):
            ctx.shape = x.shape
            return torch.round(x) + 0.5 * x  # derivative 0.5, but the backward says 0

    report = gradcheck_cli.check_op(HalfRound.apply, x64(0.3, -1.2, 2.2))
    assert not report.passed and "gradient_mismatch" in report.checks[0].codes()
