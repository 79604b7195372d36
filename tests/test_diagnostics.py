"""The classic traps are explained, not failed (or failed with the right name).

Truths are hand-derived: derivatives of the seed's logistic unit, one-sided slopes of
relu/abs/clamp, Hessians of small polynomials and exponentials.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradcheck_cli import check_expression
from gradcheck_cli.compare import compare, tolerance


def _check(expr, at, **kw):
    report = check_expression(expr, at, **kw)
    (check,) = report.checks
    return report, check


def _diag(check, code):
    found = [d for d in check.diagnostics if d.code == code]
    assert found, f"no {code} diagnostic in {[d.code for d in check.diagnostics]}"
    return found[0]


# ---- precision_loss: the seed's float32 14.3329 vs the exact 14.4000006 ----------------------

def test_seed_float32_precision_loss_names_cause_and_stable_form():
    report, check = _check("sigmoid(w*x+b)", {"w": 2.0, "b": 1.0, "x": 6.7}, wrt=["w", "b"], loss="bce",
                           target=0.0, dtype="float32")
    assert report.passed
    z = 2.0 * 6.7 + 1.0
    exact = z + math.log1p(math.exp(-z))  # -log(1 - sigmoid(z)), hand-derived
    assert check.value["symbolic"] == pytest.approx(exact, rel=1e-12)
    assert float(check.value["torch"]) == pytest.approx(14.3329, abs=5e-5)
    d = _diag(check, "precision_loss")
    assert "log(1-p)" in d.message and "bce_logits(w*x + b, 0)" in d.message
    assert "0.47%" in d.message


def test_float64_seed_has_no_precision_loss():
    _, check = _check("sigmoid(w*x+b)", {"w": 2.0, "b": 1.0, "x": 6.7}, loss="bce", target=0.0)
    assert "precision_loss" not in check.codes()


# ---- non_differentiable: kinks reported, not failed ---------------------------------------------

@pytest.mark.parametrize("expr,at,left,right", [
    ("relu(x)", {"x": 0.0}, 0.0, 1.0),
    ("abs(x)", {"x": 0.0}, -1.0, 1.0),
    ("clamp(x, -1, 1)", {"x": 1.0}, 1.0, 0.0),
    ("clamp(x, -1, 1)", {"x": -1.0}, 0.0, 1.0),
    ("maximum(x, 2*y)", {"x": 1.0, "y": 0.5}, 0.0, 1.0),
    ("minimum(x, 1)", {"x": 1.0}, 1.0, 0.0),
], ids=["relu-0", "abs-0", "clamp-hi", "clamp-lo", "maximum-tie", "minimum-tie"])
def test_kink_is_reported_with_one_sided_slopes(expr, at, left, right):
    report, check = _check(expr, at)
    assert report.passed
    d = next(d for d in check.diagnostics if d.code == "non_differentiable" and d.wrt == "x")
    assert f"left {left:.6g}" in d.message and f"right {right:.6g}" in d.message
    # autograd follows torch's own convention, which is one valid subgradient
    g = next(g for g in check.gradients if g.wrt == "x")
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in at.items()}
    out = {"relu(x)": lambda: torch.relu(t["x"]), "abs(x)": lambda: t["x"].abs(),
           "clamp(x, -1, 1)": lambda: t["x"].clamp(-1, 1),
           "maximum(x, 2*y)": lambda: torch.maximum(t["x"], 2 * t["y"]),
           "minimum(x, 1)": lambda: torch.minimum(t["x"], torch.tensor(1.0, dtype=torch.float64))}[expr]()
    (expected,) = torch.autograd.grad(out, [t["x"]])
    assert float(g.autograd) == float(expected)


def test_kink_away_from_point_is_not_reported():
    _, check = _check("relu(x)", {"x": 0.01})
    assert "non_differentiable" not in check.codes()


def test_wrong_value_at_kink_still_fails():
    """Kinks excuse values between the one-sided slopes, nothing else: a backward that
    says 5 at relu's kink is caught (simulated at the comparison level)."""
    auto = np.array([5.0])
    result = compare("x", auto, np.array([0.0]), np.array([0.5]), np.array([1e-12]), tolerance("float64"),
                     kink_lo=np.array([0.0]), kink_hi=np.array([1.0]))
    assert not result.passed


def test_points_redraws_away_from_kinks():
    report, check = _check("relu(x)*x", {"x": 0.3}, points=4)
    assert report.passed and check.extra["points_checked"] == 5


# ---- stop_gradient: detach and the seed's three lessons ------------------------------------------

def test_detach_autograd_equals_symbolic_not_fd():
    report, check = _check("detach(w)*x + w**2", {"w": 1.5, "x": 4.0}, wrt=["w"])
    assert report.passed
    (g,) = check.gradients
    assert float(g.autograd) == pytest.approx(3.0) == float(g.symbolic)  # d/dw w**2 only
    assert float(g.finite_difference) == pytest.approx(3.0 + 4.0, rel=1e-9)  # FD sees w*x too
    assert "stop_gradient" in check.codes()


def test_no_grad_whole_expression_gives_zero():
    """The seed's no_grad(): nothing is tracked, so the gradient is 0 and explained."""
    report, check = _check("detach(x**2)", {"x": 1.0})
    assert report.passed
    (g,) = check.gradients
    assert float(g.autograd) == 0.0 and float(g.finite_difference) == pytest.approx(2.0, rel=1e-9)
    assert {"stop_gradient", "no_dependence"} <= check.codes()


def test_requires_grad_false_is_leaving_a_variable_out_of_wrt():
    _, check = _check("w*x + b", {"w": 2.0, "x": 6.7, "b": 1.0}, wrt=["w"])
    assert [g.wrt for g in check.gradients] == ["w"]
    assert float(check.gradients[0].autograd) == pytest.approx(6.7)


# ---- masked_nan: the where() trap ----------------------------------------------------------------

def test_where_masked_nan_fails_with_safe_rewrite():
    report, check = _check("where(x > 0, sqrt(x), x)", {"x": -1.0})
    assert not report.passed
    d = _diag(check, "masked_nan")
    assert "sqrt(where(x > 0, x, 1))" in d.message
    (g,) = check.gradients
    assert math.isnan(float(g.autograd)) and float(g.symbolic) == 1.0


def test_where_safe_rewrite_passes():
    report, _ = _check("where(x > 0, sqrt(where(x > 0, x, 1)), x)", {"x": -1.0})
    assert report.passed


# ---- reference_disagreement (decided in compare) ------------------------------------------------

def test_reference_disagreement_when_fd_alone_differs():
    result = compare("x", np.array([1.0]), np.array([1.0]), np.array([1.5]), np.array([1e-12]),
                     tolerance("float64"))
    assert result.passed  # autograd agrees with the exact derivative
    assert [d.code for d in result.diagnostics] == ["reference_disagreement"]


def test_disagreeing_with_symbolic_fails_even_if_fd_agrees():
    result = compare("x", np.array([1.5]), np.array([1.0]), np.array([1.5]), np.array([1e-12]),
                     tolerance("float64"))
    assert not result.passed
    assert "reference_disagreement" in [d.code for d in result.diagnostics]


# ---- --order 2: Hessians against hand-derived ones ------------------------------------------------

def _hessian_truth_sin_exp(x, y):
    # f = sin(x) y^2 + exp(x y)
    e = math.exp(x * y)
    return np.array([[-math.sin(x) * y**2 + y * y * e, 2 * y * math.cos(x) + e + x * y * e],
                     [2 * y * math.cos(x) + e + x * y * e, 2 * math.sin(x) + x * x * e]])


def test_hessian_matches_hand_derived():
    report, check = _check("sin(x)*y**2 + exp(x*y)", {"x": 0.5, "y": -1.2}, order=2)
    assert report.passed
    truth = _hessian_truth_sin_exp(0.5, -1.2)
    h = check.extra["hessian"]
    np.testing.assert_allclose(h["autograd"], truth, rtol=1e-12)
    np.testing.assert_allclose(h["symbolic"], truth, rtol=1e-12)
    np.testing.assert_allclose(h["finite_difference"], truth, rtol=1e-6)


def test_hessian_of_tensor_variable_in_wrt_order():
    report, check = _check("sum(x**3)*y", {"x": [1.0, 2.0], "y": 2.0}, order=2)
    assert report.passed
    truth = np.array([[6 * 1 * 2, 0, 3 * 1], [0, 6 * 2 * 2, 3 * 4], [3, 12, 0]], dtype=float)
    np.testing.assert_allclose(check.extra["hessian"]["symbolic"], truth)
    assert check.extra["hessian"]["labels"] == ["x[0]", "x[1]", "y"]
