"""A forward noisier than rounding (issue 12): iterative solvers and tolerances inside an op.

Finite differences of a forward that scatters by s blame an exact backward by about s / h;
the gate measures the scatter (op/noise.py) instead of assuming eps * |f|.  The truths:
the implicit-function derivative of a bisection root finder, derived by hand below, and a
forward with noise of a known standard deviation added on purpose.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gradcheck_cli
from gradcheck_cli.op.batched import BatchedForward
from gradcheck_cli.op.noise import forward_noise, relative_noise
from gradcheck_cli.op.runner import OpSpec
from gradcheck_cli.tolerances import DTYPE_EPS

TOL = 1e-9  # the solver's tolerance: ~1e6 times float64's rounding


def bisect_cubic(x: torch.Tensor) -> torch.Tensor:
    """y with y**3 + y = x, by bisection until the bracket is narrower than TOL."""
    lo = torch.minimum(x, torch.zeros_like(x)) - 1.0
    hi = torch.maximum(x, torch.zeros_like(x)) + 1.0
    while float((hi - lo).max()) > TOL:
        mid = (lo + hi) / 2
        above = mid**3 + mid > x
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return (lo + hi) / 2


class CubicRoot(torch.autograd.Function):
    """The root's exact derivative, by the implicit function theorem on y^3 + y - x = 0:
    dy/dx = 1 / (3 y^2 + 1)."""

    @staticmethod
    def forward(ctx, x):
        y = bisect_cubic(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g / (3 * y**2 + 1)


class CubicRootOffByOnePercent(CubicRoot):
    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return 1.01 * g / (3 * y**2 + 1)


X = (0.3, -1.7, 2.5, 0.05, -0.6)


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_an_exact_backward_of_a_solver_passes_and_the_noise_is_named(mode):
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    report = gradcheck_cli.check_op(CubicRoot.apply, x, mode=mode)
    (check,) = report.checks
    assert report.passed, [d.message for d in check.diagnostics]
    codes = check.codes()
    assert "forward_noise" in codes
    assert "non_differentiable" not in codes  # the scatter is not reported as kinks
    y = bisect_cubic(x.detach())
    if mode == "full":  # the Jacobian is diagonal: 1 / (3 y^2 + 1), by hand
        expected = np.diag((1 / (3 * y**2 + 1)).numpy())
        assert np.allclose(check.gradients[0].autograd, expected, rtol=1e-12)
        assert np.allclose(check.gradients[0].finite_difference, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_a_one_percent_error_in_the_solvers_backward_is_still_caught(mode):
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    report = gradcheck_cli.check_op(CubicRootOffByOnePercent.apply, x, mode=mode)
    assert not report.passed
    assert "gradient_mismatch" in report.checks[0].codes()


def _batch(fn, x: np.ndarray) -> BatchedForward:
    spec = OpSpec(fn, "f", ("x",), {}, ("x",), ("x",))
    shape = tuple(fn(torch.tensor(x)).shape)
    return BatchedForward(spec, {"x": x}, "x", "float64", "cpu", [shape], np.random.default_rng(0),
                          measure_noise=False)


@pytest.mark.parametrize("s", [1e-11, 1e-8, 1e-6])
def test_the_noise_estimate_finds_a_known_scatter(s):
    """sin(x) plus a pseudo-random term of standard deviation s (uniform on [-a, a] has
    standard deviation a / sqrt(3)): the estimate is within a factor of 2."""
    a = s * math.sqrt(3)

    def noisy(x):
        u = torch.frac(torch.sin(x * 1e10) * 43758.5453)  # a hash of x: uniform-like on (-1, 1)
        return torch.sin(x) + a * u

    x = np.linspace(-2.0, 2.0, 64)
    sigma, _ = forward_noise(_batch(noisy, x), x, DTYPE_EPS["float64"])
    assert np.all(sigma > s / 2) and np.all(sigma < 2 * s), (sigma.min(), sigma.max())


@pytest.mark.parametrize("fn", [torch.sin, torch.exp, lambda x: torch.softmax(x, 0), lambda x: x @ x.flip(0),
                                lambda x: torch.cumsum(x, 0) ** 3])
def test_smooth_forwards_have_no_noise_beyond_rounding(fn):
    """Rounding, even a sum's cancellation, stays far below what would change the steps or
    earn a note (a few hundred eps of the largest output at most)."""
    x = np.random.default_rng(3).standard_normal(50) * 3
    batch = _batch(fn, x)
    sigma, f = forward_noise(batch, x, DTYPE_EPS["float64"])
    assert relative_noise(sigma, f) < 300 * DTYPE_EPS["float64"]
    report = gradcheck_cli.check_op(fn, torch.tensor(x, requires_grad=True))
    assert report.passed and "forward_noise" not in report.checks[0].codes()


def test_an_output_that_jumps_exactly_at_the_point_is_not_noise():
    """x * (target == 1): a comparison at the point is a discontinuity there (the points
    measured lie beside it), so no noise is invented from the jump."""
    x = np.array([1.0, 1.0, 2.0])

    def jump(t):
        return torch.where(t == 1.0, t * 3.0, -t)

    sigma, _ = forward_noise(_batch(jump, x), x, DTYPE_EPS["float64"])
    assert not sigma.any()
