"""Autograd Functions that ship in published packages -- torch's own wheel, `entmax`
(sparsemax / entmax autograd Functions, one of them a bisection solver) and `torchdiffeq`
(ODE solvers, the adjoint method an autograd Function) -- checked beside
torch.autograd.gradcheck (issue 12).  Nobody here wrote them; torch's gradcheck is the
independent verdict on each.  Both packages are test extras ('.[test]'), so a missing one
fails collection here instead of skipping quietly.

Found on the way: `torch.nn.modules._functions.CrossMapLRN2d` (behind the legacy
`nn.CrossMapLRN2d`) has a backward that does not match its own forward; torch's gradcheck
fails it too.  A re-entrant checkpoint refuses `torch.autograd.grad`, which every
gradient checker calls: a clear failure with torch's message, not a crash.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from entmax import entmax15, entmax15_loss, entmax_bisect, sparsemax, sparsemax_loss
from torch.utils.checkpoint import checkpoint
from torchdiffeq import odeint, odeint_adjoint

import gradcheck_cli


def x64(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)


def block(x, w):
    return torch.tanh(x @ w).sum(-1)


TARGETS = torch.tensor([0, 2, 1])
TIMES = torch.linspace(0, 1, 3, dtype=torch.float64)


class Riccati(torch.nn.Module):
    """dy/dt = -y/2 + sin(t) y^2, elementwise: d y_i(t) / d y0_j is 0 for i != j."""

    def forward(self, t, y):
        return -0.5 * y + torch.sin(t) * y**2


def rk4(y0):  # fixed steps: the forward is a smooth function of y0, its backward exact
    return odeint(Riccati(), y0, TIMES, method="rk4", options={"step_size": 0.05})


def dopri5(y0, tol=1e-7):  # adaptive steps: the forward moves with y0 through its step sizes
    return odeint(Riccati(), y0, TIMES, rtol=tol, atol=tol * 1e-2)


def adjoint(y0, tol=1e-7):  # torchdiffeq's OdeintAdjointMethod, an autograd Function
    return odeint_adjoint(Riccati(), y0, TIMES, rtol=tol, atol=tol * 1e-2, adjoint_params=())


CORRECT = [  # (name, fn, inputs): published code whose gradients torch's gradcheck accepts
    ("checkpoint, non-reentrant", lambda x, w: checkpoint(block, x, w, use_reentrant=False), (x64(4, 3), x64(3, 3, seed=1))),
    ("local_response_norm", lambda x: F.local_response_norm(x, 3, 1e-4, 0.75, 1.0), (x64(2, 4, 3, 3),)),
    ("scaled_dot_product_attention", F.scaled_dot_product_attention, (x64(1, 2, 3, 4), x64(1, 2, 3, 4, seed=1),
                                                                       x64(1, 2, 3, 4, seed=2))),
    ("multi_head_attention (functional)", lambda q: F.multi_head_attention_forward(
        q, q, q, 4, 2, x64(12, 4, seed=3).detach(), None, None, None, False, 0.0, x64(4, 4, seed=4).detach(), None,
        need_weights=False)[0], (x64(3, 1, 4),)),
    ("entmax: sparsemax", lambda x: sparsemax(x, dim=-1), (x64(3, 5),)),
    ("entmax: entmax15", lambda x: entmax15(x, dim=-1), (x64(3, 5),)),
    ("entmax: entmax_bisect (a bisection solver), x and alpha",
     lambda x, a: entmax_bisect(x, alpha=a, dim=-1), (x64(3, 5), torch.full((3, 1), 1.3, dtype=torch.float64,
                                                                            requires_grad=True))),
    ("entmax: sparsemax_loss, class targets", lambda x: sparsemax_loss(x, TARGETS), (x64(3, 5),)),
    ("entmax: entmax15_loss, class targets", lambda x: entmax15_loss(x, TARGETS), (x64(3, 5),)),
    ("torchdiffeq: odeint, fixed-step rk4", rk4, (x64(3),)),
]


@pytest.mark.parametrize("name,fn,inputs", CORRECT, ids=[c[0] for c in CORRECT])
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_published_correct_functions_pass(name, fn, inputs, mode):
    assert torch.autograd.gradcheck(fn, inputs)
    report = gradcheck_cli.check_op(fn, *inputs, mode=mode)
    assert report.passed, [d.message for d in report.checks[0].diagnostics]


def _legacy_lrn(x):
    from torch.nn.modules._functions import CrossMapLRN2d

    return CrossMapLRN2d.apply(x, 3, 1e-4, 0.75, 1.0)


def test_torchs_legacy_cross_map_lrn_backward_is_wrong_and_both_tools_say_so():
    x = x64(2, 4, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not torch.autograd.gradcheck(_legacy_lrn, (x,), raise_exception=False)
    report = gradcheck_cli.check_op(_legacy_lrn, x)
    (check,) = report.checks
    assert not report.passed and "gradient_mismatch" in check.codes()


def test_a_reentrant_checkpoint_is_a_clear_failure_with_torchs_reason():
    x, w = x64(4, 3), x64(3, 3, seed=1)
    report = gradcheck_cli.check_op(lambda x, w: checkpoint(block, x, w, use_reentrant=True), x, w)
    (check,) = report.checks
    assert not report.passed
    (err,) = [d for d in check.diagnostics if d.code == "op_error"]
    assert "use_reentrant=True" in err.message and "backward" in err.message


@pytest.mark.parametrize("solver", [dopri5, adjoint], ids=["odeint dopri5", "odeint_adjoint"])
def test_an_adaptive_ode_solver_is_judged_at_its_own_accuracy(solver):
    """An adaptive solver's output moves with y0 through its step sizes, which no backward
    differentiates: its forward's derivative differs from the exact backward by about the
    solver's tolerance (here ~1e-7 on entries of ~1, where the float64 default allows 1e-10;
    torch's default atol 1e-5 hides it).  The gate says so and how to state the op's accuracy;
    stated, it passes; a 1e-3 error in the same backward still fails at that accuracy."""
    y0 = x64(3)
    assert torch.autograd.gradcheck(solver, (y0,))
    (check,) = gradcheck_cli.check_op(solver, y0).checks
    assert not check.passed
    (hint,) = [d for d in check.diagnostics if d.code == "within_torch_tolerance"]
    assert "adaptive ODE solver" in hint.message
    atol = float(re.search(r"--atol (\S+)", hint.message).group(1))
    assert 1e-9 < atol <= 1e-4  # the gap, rounded up to a decade: about the solver's tolerance
    assert gradcheck_cli.check_op(solver, y0, atol=atol).passed

    def off(y):
        return _ScaleBackward.apply(solver(y), 1 + 1e-2)

    assert not gradcheck_cli.check_op(off, y0, atol=atol).passed


class _ScaleBackward(torch.autograd.Function):
    """Identity forward; backward scaled by k (a small, real backward error)."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.k, None


def test_the_hint_is_not_given_for_a_clear_bug_or_a_chosen_tolerance():
    y0 = x64(3)
    (check,) = gradcheck_cli.check_op(lambda y: _ScaleBackward.apply(rk4(y), 1.01), y0).checks
    assert not check.passed and "within_torch_tolerance" not in check.codes()
    (check,) = gradcheck_cli.check_op(dopri5, y0, rtol=1e-7).checks
    assert not check.passed and "within_torch_tolerance" not in check.codes()
