"""--fd complex through erf, atan2, logsumexp and norm (expr/complex_forms.py): the
complex-step derivative within 1e-13 of the exact one, with no fallback; the forms are the
functions' analytic continuations (to third order for erf) near the real axis; at norm's
and atan2's kinks the check falls back to richardson and reports the kink.

Truths: hand-derived derivatives in mpmath at 50 digits (each checked against mpmath's own
numerical derivative), mpmath's complex erf and log for the continuations.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch

from gradcheck_cli.checker import check_expression
from gradcheck_cli.engines import finite_diff
from gradcheck_cli.expr import complex_forms, parse

DPS = 50
TARGET = 1e-13


def _erf_prime(v):
    return 2 / mp.sqrt(mp.pi) * mp.exp(-v * v)


def _atan2_grad(y, x):
    """(d/dy, d/dx) of atan2(y, x)."""
    r2 = x * x + y * y
    return x / r2, -y / r2


def test_hand_derivatives_match_mpmath():
    with mp.workdps(DPS):
        for v in (mp.mpf("-1.3"), mp.mpf("0.2"), mp.mpf("2.7")):
            assert abs(mp.diff(mp.erf, v) - _erf_prime(v)) < mp.mpf(10) ** -30
        for y, x in ((0.3, -1.2), (-2.0, 0.5), (1.0, 1e-3), (0.0, -2.0)):
            y, x = mp.mpf(y), mp.mpf(x)
            dy, dx = _atan2_grad(y, x)
            # (0, -2) sits on the jump across the negative x axis: the side of +0, as torch takes it
            assert abs(mp.diff(lambda t: mp.atan2(t, x), y, direction=1) - dy) < mp.mpf(10) ** -30
            assert abs(mp.diff(lambda t: mp.atan2(y, t), x) - dx) < mp.mpf(10) ** -30


def _no_fallback(check):
    assert check.extra["fd_scheme"] == "complex", check.extra["fd_scheme"]
    assert "fd_fallback" not in check.codes()
    assert check.passed, [d.message for d in check.diagnostics]


# ---- the complex-step derivative through each function --------------------------------------------------

ERF_POINTS = [-4.5, -2.2, -1.0, -0.3, 0.0, 1e-8, 0.45, 1.0, 1.7, 3.1, 5.0]


def test_erf_by_the_complex_step_against_mpmath():
    x = np.array(ERF_POINTS + list(np.random.default_rng(0).uniform(-5, 5, 40)))
    fd = finite_diff.jacobian(parse("erf(x)"), {"x": x}, "x", x.shape, scheme="complex", max_numel=x.size)
    with mp.workdps(DPS):
        truth = np.array([float(_erf_prime(mp.mpf(float(v)))) for v in x])
    rel = np.abs(np.diag(fd.jacobian) - truth) / truth
    assert np.all(rel <= TARGET), (x[rel > TARGET], rel[rel > TARGET])
    assert np.all(np.diag(fd.error) >= np.abs(np.diag(fd.jacobian) - truth))


ATAN2_POINTS = [(0.3, 1.2), (0.3, -1.2), (-0.3, -1.2), (-0.7, 0.4), (2.0, 1e-3), (-2.0, 1e-3), (1e8, 1.0),
                (1e-9, -1.0), (0.0, -2.0), (-0.0, -2.0), (0.0, 3.0), (5.0, 0.0), (-5.0, 0.0), (1.0, -1.0)]


@pytest.mark.parametrize("y,x", ATAN2_POINTS, ids=[f"{y:g},{x:g}" for y, x in ATAN2_POINTS])
def test_atan2_by_the_complex_step_against_mpmath(y, x):
    """Every quadrant, both axes off the origin, and the negative x axis (atan2 jumps by 2 pi
    across it, but either side has the derivative x/(x^2+y^2) the complex step reads)."""
    (check,) = check_expression("atan2(y, x)", {"y": y, "x": x}, fd="complex").checks
    _no_fallback(check)
    with mp.workdps(DPS):
        dy, dx = (float(d) for d in _atan2_grad(mp.mpf(y), mp.mpf(x)))
    scale = math.hypot(dy, dx)
    got = {g.wrt: float(g.finite_difference) for g in check.gradients}
    assert abs(got["y"] - dy) <= TARGET * scale and abs(got["x"] - dx) <= TARGET * scale, (got, dy, dx)


def _lse_grad(row):
    total = mp.fsum(mp.exp(v) for v in row)
    return [mp.exp(v) / total for v in row]


def _norm_grad(row):
    r = mp.sqrt(mp.fsum(v * v for v in row))
    return [v / r for v in row]


def _rows(a: np.ndarray, axis: int | None):
    """(index lists, rows as mpf lists) of `a` along `axis` (None: all of it)."""
    if axis is None:
        return [list(np.ndindex(a.shape))], [[mp.mpf(float(a[i])) for i in np.ndindex(a.shape)]]
    other = [d for d in range(a.ndim) if d != axis]
    out_idx, out_rows = [], []
    for rest in np.ndindex(*[a.shape[d] for d in other]):
        idx = []
        for k in range(a.shape[axis]):
            full = list(rest)
            full.insert(axis, k)
            idx.append(tuple(full))
        out_idx.append(idx)
        out_rows.append([mp.mpf(float(a[i])) for i in idx])
    return out_idx, out_rows


REDUCTIONS = [
    ("logsumexp(x)", "x", [0.1, 2.0, -1.0, 0.5], None, _lse_grad),
    ("logsumexp(x)", "x", [1000.0, 1001.5, 999.0], None, _lse_grad),  # exp would overflow without the max
    ("sum(logsumexp(X, 1))", "X", "randn(3, 4)", 1, _lse_grad),
    ("sum(logsumexp(X, 0))", "X", "randn(3, 4)", 0, _lse_grad),
    ("norm(x)", "x", [0.1, 2.0, -1.0], None, _norm_grad),
    ("norm(x)", "x", [0.0, 3.0, -4.0], None, _norm_grad),  # zeros, but not the zero vector: analytic
    ("norm(x)", "x", -2.5, None, _norm_grad),  # a scalar's norm is |x|: analytic away from 0
    ("sum(norm(X, 1))", "X", "randn(3, 4)", 1, _norm_grad),
    ("sum(norm(X, 0))", "X", "randn(3, 4)", 0, _norm_grad),
]


@pytest.mark.parametrize("expr,name,value,axis,grad", REDUCTIONS, ids=[f"{r[0]}:{r[2]}" for r in REDUCTIONS])
def test_reductions_by_the_complex_step_against_mpmath(expr, name, value, axis, grad):
    (check,) = check_expression(expr, {name: value}, fd="complex").checks
    _no_fallback(check)
    a = np.asarray(check.point[name], dtype=np.float64)
    truth = np.zeros(a.shape)
    with mp.workdps(DPS):
        for idx, row in zip(*_rows(a, axis)):
            for i, g in zip(idx, grad(row)):
                truth[i] = float(g)
    (g,) = check.gradients
    fd = np.asarray(g.finite_difference).reshape(a.shape)
    scale = np.max(np.abs(truth))
    assert np.all(np.abs(fd - truth) <= TARGET * scale), (fd, truth)
    assert np.all(np.asarray(g.fd_error_estimate).reshape(a.shape) >= np.abs(fd - truth))


@pytest.mark.parametrize("expr,at", [
    ("sum(erf(x)*logsumexp(x))", {"x": "randn(5)"}),
    ("atan2(y, x)*norm(x)", {"y": "randn(4)", "x": "randn(4)"}),
    ("sum(erf(norm(X, 1)))", {"X": "randn(3, 2)"}),
], ids=["erf-logsumexp", "atan2-norm", "erf-norm-axis"])
def test_expressions_built_from_them_take_the_complex_step(expr, at):
    (check,) = check_expression(expr, at, fd="complex").checks
    _no_fallback(check)
    for g in check.gradients:  # symbolic is exact: the complex step agrees to ~1e-13 relative
        scale = np.max(np.abs(g.symbolic))
        assert np.all(np.abs(g.finite_difference - g.symbolic) <= TARGET * scale)


@pytest.mark.parametrize("expr", ["erf(x)", "atan2(y, x)", "logsumexp(x)", "norm(x)", "sum(logsumexp(X, 1))",
                                  "sum(norm(X, 0))"])
def test_auto_chooses_the_complex_step(expr):
    assert finite_diff.resolve_scheme("auto", parse(expr)) == ("complex", None)


# ---- the forms are the analytic continuations -------------------------------------------------------------

@pytest.mark.parametrize("b", [1e-20, 1e-12, 1e-6, 1e-3, 3e-2])  # up to 1e-12: the first-order form
def test_the_erf_form_is_erfs_continuation_to_third_order(b):
    """Against mpmath's complex erf: what is left is the series' next terms, b^4 erf''''(a)/24
    in the real part and b^5 erf'''''(a)/120 in the imaginary one (a first-order form would
    be off by b^2 erf''(a)/2 and b^3 erf'''(a)/6)."""
    a = np.linspace(-3, 3, 25)
    z = torch.tensor(a + 1j * b, dtype=torch.complex128)
    ours = complex_forms.erf(torch, z).numpy()
    with mp.workdps(DPS):
        for v, o in zip(a, ours):
            v = mp.mpf(float(v))
            exact = mp.erf(mp.mpc(v, b))
            next_re = float(abs(mp.diff(mp.erf, v, 4)) / 24 * mp.mpf(b) ** 4)
            next_im = float(abs(mp.diff(mp.erf, v, 5)) / 120 * mp.mpf(b) ** 5)
            assert abs(o.real - float(exact.real)) <= 2 * next_re + 4e-16, (v, b)
            assert abs(o.imag - float(exact.imag)) <= 2 * next_im + 1e-15 * abs(float(exact.imag)), (v, b)


@pytest.mark.parametrize("y,x", [(0.3, 1.2), (0.3, -1.2), (-0.3, -1.2), (2.0, 1e-3), (-2.0, 0.5), (0.0, -2.0)])
def test_the_atan2_form_is_atan2s_continuation(y, x):
    """Against -i log((x + iy) / sqrt(x^2 + y^2)) in mpmath (atan2 continued off the real
    plane), with both arguments stepped into the complex plane, up to the multiple of
    2 pi that picks the branch torch's atan2 takes.  Steps of 1e-12 take the first-order
    form, steps of 1e-3 the analytic one."""
    for by, bx in ((1e-3, 0.0), (0.0, 1e-3), (2e-3, -1e-3), (1e-12, 0.0), (0.0, 1e-12), (3e-12, -2e-12)):
        ours = complex_forms.atan2(torch, torch.tensor(complex(y, by), dtype=torch.complex128),
                                   torch.tensor(complex(x, bx), dtype=torch.complex128)).item()
        with mp.workdps(DPS):
            zy, zx = mp.mpc(y, by), mp.mpc(x, bx)
            exact = -1j * mp.log((zx + 1j * zy) / mp.sqrt(zx * zx + zy * zy))
        turns = round((ours.real - float(exact.real)) / (2 * math.pi))
        assert abs(ours.real - float(exact.real) - 2 * math.pi * turns) <= 1e-14
        assert abs(ours.imag - float(exact.imag)) <= 1e-14 * abs(float(exact.imag)) + 1e-30
        assert turns == 0 or abs(math.atan2(y, x)) > 3  # only across the negative x axis


@pytest.mark.parametrize("fn,name", [(complex_forms.logsumexp, "logsumexp"), (complex_forms.norm, "norm")])
def test_the_reduction_forms_are_exact_on_real_tensors_and_analytic_on_complex(fn, name):
    x = torch.tensor(np.random.default_rng(1).standard_normal((3, 4)))
    real = fn(torch, x, (1,), True)
    expected = torch.logsumexp(x, 1, keepdim=True) if name == "logsumexp" else torch.linalg.vector_norm(x, dim=1,
                                                                                                     keepdim=True)
    torch.testing.assert_close(real, expected, rtol=0, atol=0)
    b = 1e-3
    z = x.to(torch.complex128) + 1j * b * torch.ones_like(x)
    ours = fn(torch, z, (1,), False).numpy()
    with mp.workdps(DPS):
        for i in range(3):
            row = [mp.mpc(float(v), b) for v in x[i]]
            exact = mp.log(mp.fsum(mp.exp(v) for v in row)) if name == "logsumexp" else \
                mp.sqrt(mp.fsum(v * v for v in row))
            assert abs(complex(exact) - ours[i]) <= 1e-14 * abs(complex(exact))


# ---- kinks: never a wrong complex-step value ------------------------------------------------------------

@pytest.mark.parametrize("expr,at,blocker", [
    ("norm(x)", {"x": [0.0, 0.0, 0.0]}, "norm"),
    ("norm(x)", {"x": [1e-30, 0.0]}, "norm"),  # within 1e-12: a step of 1e-20 is not small against it
    ("sum(norm(X, 1))", {"X": [[0.0, 0.0], [1.0, 2.0]]}, "norm"),
    ("atan2(y, x)", {"y": 0.0, "x": 0.0}, "atan2"),
], ids=["norm-zero", "norm-near-zero", "norm-axis-zero-row", "atan2-origin"])
def test_at_the_kink_the_complex_step_falls_back(expr, at, blocker):
    (check,) = check_expression(expr, at, fd="complex").checks
    assert check.extra["fd_scheme"] == "richardson"
    (fallback,) = [d for d in check.diagnostics if d.code == "fd_fallback"]
    assert blocker in fallback.message and "kink" in fallback.message and "richardson" in fallback.message
    (auto,) = check_expression(expr, at).checks
    assert auto.extra["fd_scheme"] == "richardson" and "fd_fallback" not in auto.codes()


def test_norm_at_zero_is_reported_not_failed():
    """torch's norm gradient at 0 is 0, a valid subgradient; finite differences see the kink."""
    (check,) = check_expression("norm(x)", {"x": [0.0, 0.0]}, fd="complex").checks
    assert check.passed and "non_differentiable" in check.codes()
    (g,) = check.gradients
    assert np.all(np.asarray(g.finite_difference) == 0.0)


def test_the_complex_form_would_be_wrong_at_the_kink():
    """Why the fallback matters: at the zero vector sqrt(sum z^2) of x + ih e_0 is ih, so a
    complex step would read 1, where torch (and any subgradient symmetric in the sign) says 0."""
    z = torch.tensor([0.0 + 1e-20j, 0.0 + 0.0j], dtype=torch.complex128)
    assert complex_forms.norm(torch, z, (0,), False).imag.item() / 1e-20 == pytest.approx(1.0)
