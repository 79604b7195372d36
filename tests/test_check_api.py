"""The Python API, end to end: check_expression / assert_expression / Report.

Truths: the seed example derived by hand and evaluated in mpmath (loss = softplus(z),
d/dw = x sigmoid(z), d/db = sigmoid(z), z = w x + b, since y = 0), hand formulas, and
torch.autograd.functional.jacobian on the same function written in plain torch.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest

import gradcheck_cli
from gradcheck_cli import UserInputError, assert_expression, check_expression

SEED_AT = {"w": 2.0, "b": 1.0, "x": 6.7}


def seed_truth(w: float = 2.0, b: float = 1.0, x: float = 6.7) -> dict:
    """loss = -log(1 - sigmoid(z)) (bce with target 0, inside its clamp) and its gradients, at 50 digits."""
    with mp.workdps(50):
        w, b, x = mp.mpf(w), mp.mpf(b), mp.mpf(x)
        z = w * x + b
        p = 1 / (1 + mp.exp(-z))
        assert mp.mpf(1e-7) < p < 1 - mp.mpf(1e-7), "the clamp of bce must be inactive for these formulas"
        return {"loss": float(-mp.log(1 - p)), "w": float(x * p), "b": float(p)}


def seed_check(dtype: str):
    report = check_expression("sigmoid(w*x+b)", at=SEED_AT, wrt=["w", "b"], loss="bce", target=0.0, dtype=dtype)
    (check,) = report.checks
    return report, check


def grads_of(check) -> dict:
    return {g.wrt: g for g in check.gradients}


def rel(a, b) -> float:
    return abs(float(a) - float(b)) / abs(float(b))


# ---- the seed example ----------------------------------------------------------------------------

def test_seed_truth_matches_the_issue():
    """The hand derivation gives the issue's numbers (guards the truth itself)."""
    t = seed_truth()
    assert round(t["loss"], 10) == 14.4000005574
    assert t["w"] == pytest.approx(6.7, rel=1e-6) and t["b"] == pytest.approx(1.0, rel=1e-6)


def test_seed_float32():
    import torch

    report, check = seed_check("float32")
    truth = seed_truth()
    assert report.passed and check.dtype == "float32"
    # the float32 forward value: the seed notebook's formula in plain float32 torch gives 14.3329
    w, b, x = (torch.tensor(v, dtype=torch.float32) for v in (2.0, 1.0, 6.7))
    p = torch.clamp(torch.sigmoid(w * x + b), 1e-7, 1 - 1e-7)
    plain = float(-(0 * torch.log(p) + (1 - 0) * torch.log(1 - p)))
    assert float(check.value["torch"]) == pytest.approx(plain, rel=1e-6)
    assert round(float(check.value["torch"]), 4) == 14.3329
    # beside it the exact value at the user's point
    assert float(check.value["symbolic"]) == pytest.approx(truth["loss"], rel=1e-12)
    assert round(float(check.value["symbolic"]), 7) == 14.4000006
    # gradients ~ 6.7 and 1.0 by every method
    g = grads_of(check)
    assert [x.wrt for x in check.gradients] == ["w", "b"]
    for name in ("w", "b"):
        for method in (g[name].autograd, g[name].symbolic, g[name].finite_difference):
            assert rel(method, truth[name]) < 1e-5
    # the references are computed at the point float32 actually holds (x = 6.7 rounds in float32)
    x32 = float(np.float32(6.7))
    truth32 = seed_truth(x=x32)
    assert rel(g["w"].symbolic, truth32["w"]) < 1e-12 and rel(g["b"].symbolic, truth32["b"]) < 1e-12
    # and the diagnostic that explains the 0.47% gap in the value
    (diag,) = [d for d in check.diagnostics if d.code == "precision_loss"]
    assert "14.3329" in diag.message and "14.4000006" in diag.message


def test_seed_float64():
    report, check = seed_check("float64")
    truth = seed_truth()
    assert report.passed
    assert abs(float(check.value["torch"]) - 14.4000005574) < 1e-9
    assert abs(float(check.value["symbolic"]) - 14.4000005574) < 1e-10
    assert "precision_loss" not in check.codes()
    g = grads_of(check)
    for name in ("w", "b"):
        auto, sym, fd = (float(v) for v in (g[name].autograd, g[name].symbolic, g[name].finite_difference))
        assert rel(auto, sym) <= 1e-9, "autograd vs symbolic: at least 9 digits"
        assert rel(fd, sym) <= 1e-6, "finite differences: at least 6 digits"
        assert rel(sym, truth[name]) <= 1e-12, "symbolic is exact up to float64 rounding"
        assert rel(auto, truth[name]) <= 1e-9
        assert g[name].passed


def test_seed_default_wrt_excludes_the_target():
    report = check_expression("sigmoid(w*x+b)", at=SEED_AT, loss="bce", target=0.0)
    assert [g.wrt for g in report.checks[0].gradients] == ["w", "x", "b"]
    truth = seed_truth()
    x_grad = grads_of(report.checks[0])["x"]
    assert rel(x_grad.autograd, 2.0 * truth["b"]) < 1e-9  # d/dx = w sigmoid(z)


# ---- the notebook's second example ------------------------------------------------------------------

def test_mean_of_squares():
    report = check_expression("mean(x1**2)", at={"x1": [1, 2, 3, 4, 5]})
    (check,) = report.checks
    assert report.passed
    expected = 2 * np.arange(1, 6) / 5  # d/dx_i mean(x**2) = 2 x_i / N
    np.testing.assert_allclose(expected, [0.4, 0.8, 1.2, 1.6, 2.0])
    (g,) = check.gradients
    assert g.shape == (5,)
    for method in (g.autograd, g.symbolic, g.finite_difference):
        np.testing.assert_allclose(method, expected, rtol=1e-9, atol=1e-12)
    assert float(check.value["torch"]) == pytest.approx(11.0)


# ---- broadcasting and Jacobians ------------------------------------------------------------------

def torch_jacobian(fn, at: dict) -> dict:
    import torch

    names = list(at)
    tensors = tuple(torch.tensor(np.asarray(at[n], dtype=np.float64)) for n in names)
    jac = torch.autograd.functional.jacobian(lambda *xs: fn(**dict(zip(names, xs))), tensors)
    return {n: j.numpy() for n, j in zip(names, jac)}


def assert_all_methods(check, expected: dict, rtol=1e-9, atol=1e-10):
    for g in check.gradients:
        assert g.shape == expected[g.wrt].shape, g.wrt
        for label, method in (("autograd", g.autograd), ("symbolic", g.symbolic),
                              ("finite differences", g.finite_difference)):
            np.testing.assert_allclose(method, expected[g.wrt], rtol=rtol, atol=atol, err_msg=f"{label} d/d{g.wrt}")


def test_scalars_broadcast_against_a_vector():
    """w*x + b with x a vector: a vector result, checked as a Jacobian of shape out_shape + in_shape."""
    at = {"w": 2.0, "x": [1.0, -2.0, 3.0], "b": 0.5}
    report = check_expression("w*x+b", at=at)
    (check,) = report.checks
    assert report.passed
    np.testing.assert_allclose(check.value["torch"], [2.5, -3.5, 6.5])
    expected = {"w": np.array([1.0, -2.0, 3.0]), "x": 2.0 * np.eye(3), "b": np.ones(3)}  # by hand
    assert_all_methods(check, expected)
    by_torch = torch_jacobian(lambda w, x, b: w * x + b, at)
    for name in expected:
        np.testing.assert_allclose(by_torch[name], expected[name])


def test_matrix_broadcast_against_a_row_and_a_column():
    at = {"a": [[1.0], [2.0]], "b": [0.5, -1.0, 3.0]}
    (check,) = check_expression("a*b + a", at=at).checks
    assert check.passed
    assert [g.shape for g in check.gradients] == [(2, 3, 2, 1), (2, 3, 3)]
    assert_all_methods(check, torch_jacobian(lambda a, b: a * b + a, at))


def test_scalar_result_of_broadcast_inputs_has_input_shaped_gradients():
    at = {"w": 2.0, "x": [[1.0, 2.0], [3.0, 4.0]], "b": [0.1, 0.2]}
    (check,) = check_expression("sum(sin(w*x+b))", at=at).checks
    assert check.passed
    x, b = np.array(at["x"]), np.array(at["b"])
    c = np.cos(2.0 * x + b)
    assert_all_methods(check, {"w": np.array((c * x).sum()), "x": 2.0 * c, "b": c.sum(axis=0)})


def test_tensor_valued_expression_is_checked_as_a_jacobian():
    import torch

    at = {"x": [[0.3, -1.0, 2.0], [1.5, 0.0, -0.5]], "y": [0.7, -0.2, 1.1]}
    (check,) = check_expression("sin(x)*y + x*sum(y**2)", at=at).checks
    assert check.passed
    assert np.shape(check.value["torch"]) == (2, 3)
    expected = torch_jacobian(lambda x, y: torch.sin(x) * y + x * (y**2).sum(), at)
    assert expected["x"].shape == (2, 3, 2, 3) and expected["y"].shape == (2, 3, 3)
    assert_all_methods(check, expected)


# ---- --wrt, detach, where ------------------------------------------------------------------------

def test_wrt_restricts_and_orders():
    at = {"x": 1.5, "y": -2.0, "z": 0.5}
    (check,) = check_expression("x*y*z + exp(z)", at=at, wrt=["z", "x"]).checks
    assert [g.wrt for g in check.gradients] == ["z", "x"]
    g = grads_of(check)
    assert float(g["z"].autograd) == pytest.approx(1.5 * -2.0 + np.exp(0.5), rel=1e-14)
    assert float(g["x"].autograd) == pytest.approx(-2.0 * 0.5, rel=1e-14)
    assert "y" in check.point  # a value not differentiated is still part of the point


def test_detach_agrees_with_symbolic_not_finite_differences():
    """d/dx of x*detach(x) is detach(x) = 3 for autograd and symbolic; finite differences
    see the function x**2 and give 6.  Reported as stop_gradient, not failed."""
    report = check_expression("x*detach(x)", at={"x": 3.0})
    (check,) = report.checks
    (g,) = check.gradients
    assert float(g.autograd) == 3.0 and float(g.symbolic) == 3.0
    assert float(g.finite_difference) == pytest.approx(6.0, rel=1e-9)
    assert "stop_gradient" in check.codes()
    assert report.passed and g.passed


def test_where_masked_nan_fails():
    """where(x > 0, sqrt(x), x) at x = -1 takes the x branch (derivative 1), but autograd's
    backward multiplies the untaken sqrt's nan derivative by 0: nan."""
    report = check_expression("where(x > 0, sqrt(x), x)", at={"x": -1.0})
    (check,) = report.checks
    (g,) = check.gradients
    assert np.isnan(g.autograd)
    assert float(g.symbolic) == 1.0
    assert float(g.finite_difference) == pytest.approx(1.0, rel=1e-9)
    assert "masked_nan" in check.codes()
    assert not report.passed and report.exit_code == 1


def test_where_taken_branch_passes():
    report = check_expression("where(x > 0, sqrt(x), x)", at={"x": 4.0})
    assert report.passed
    assert float(report.checks[0].gradients[0].autograd) == pytest.approx(0.25)


def test_log_of_a_negative_number_fails_with_nan():
    report = check_expression("log(x)", at={"x": -1.0})
    assert not report.passed and report.exit_code == 1
    assert np.isnan(report.checks[0].value["torch"])
    assert "nonfinite" in report.checks[0].codes()


def test_clamp_with_equal_bounds_exposes_torchs_zero_gradient():
    """clamp(y, x, x) is x for every y, so d/dx = 1.  torch's clamp backward gives nothing to min
    or max when they are equal and y is below them; the exact and finite-difference columns say 1,
    and the check fails exactly when torch's own gradient (computed here) is wrong."""
    import torch

    (check,) = check_expression("clamp(y, x, x)", at={"y": -1.0, "x": 0.0}, wrt=["x"]).checks
    (g,) = check.gradients
    assert float(g.symbolic) == 1.0
    assert float(g.finite_difference) == pytest.approx(1.0, rel=1e-9)
    y = torch.tensor(-1.0, dtype=torch.float64)
    x = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    (own,) = torch.autograd.grad(torch.clamp(y, x, x), x)
    assert float(g.autograd) == float(own)
    assert check.passed == (float(own) == 1.0)


# ---- losses ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss,target,grad", [
    # hand-derived at z = 0.3 (a scalar expression z = 2*a with a = 0.15)
    ("mse", 1.0, lambda z, y: 2 * (z - y) * 2),
    ("bce_logits", 1.0, lambda z, y: (1 / (1 + np.exp(-z)) - y) * 2),
    ("bce", 0.0, lambda z, y: (-(y / z) + (1 - y) / (1 - z)) * 2),
])
def test_loss_option(loss, target, grad):
    (check,) = check_expression("2*a", at={"a": 0.15}, loss=loss, target=target).checks
    assert check.passed
    assert [g.wrt for g in check.gradients] == ["a"]
    assert float(check.gradients[0].autograd) == pytest.approx(grad(0.3, target), rel=1e-12)


def test_vector_target():
    at = {"z": [0.5, -1.0, 2.0]}
    (check,) = check_expression("z", at=at, loss="mse", target=[1.0, 0.0, 2.0]).checks
    np.testing.assert_allclose(check.gradients[0].symbolic, 2 * (np.array(at["z"]) - [1.0, 0.0, 2.0]) / 3)


# ---- inputs from Python --------------------------------------------------------------------------

def test_numpy_and_torch_inputs():
    import torch

    for x in (np.array([1.0, 2.0]), torch.tensor([1.0, 2.0], dtype=torch.float32, requires_grad=True),
              [1.0, 2.0], "linspace(1, 2, 2)"):
        (check,) = check_expression("sum(x**3)", at={"x": x}).checks
        np.testing.assert_allclose(check.gradients[0].symbolic, [3.0, 12.0])


def test_at_as_pairs_and_generators_follow_the_seed():
    a = check_expression("sum(x*y)", at=[("x", "randn(4)"), ("y", "rand(4)")], seed=7).checks[0]
    b = check_expression("sum(x*y)", at=[("x", "randn(4)"), ("y", "rand(4)")], seed=7).checks[0]
    c = check_expression("sum(x*y)", at=[("x", "randn(4)"), ("y", "rand(4)")], seed=8).checks[0]
    np.testing.assert_array_equal(a.point["x"], b.point["x"])
    assert not np.array_equal(a.point["x"], c.point["x"])
    np.testing.assert_allclose(a.gradients[0].autograd, a.point["y"])  # d/dx sum(x*y) = y


# ---- user errors through the API ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    (dict(expr="sin(x", at={"x": 1}), "expected ')'"),
    (dict(expr="sinn(x)", at={"x": 1}), "did you mean sin?"),
    (dict(expr="x*y", at={"x": 1}), "no value for 'y'"),
    (dict(expr="x", at={"x": 1, "z": 2}), "does not use"),
    (dict(expr="x", at={"x": 1}, wrt=["q"]), "--wrt 'q'"),
    (dict(expr="x", at={"x": 1}, wrt=["x", "x"]), "twice"),
    (dict(expr="x", at={"x": 1}, dtype="float8"), "--dtype must be one of"),
    (dict(expr="x", at={"x": 1}, fd="magic"), "--fd must be one of"),
    (dict(expr="x", at={"x": 1}, loss="hinge"), "--loss must be one of"),
    (dict(expr="x", at={"x": 1}, loss="bce"), "needs --target"),
    (dict(expr="x", at={"x": 1}, target=0.0), "--target needs --loss"),
    (dict(expr="x+y", at={"x": [1, 2], "y": [1, 2, 3]}), "do not broadcast"),
    (dict(expr="dot(x, y)", at={"x": [1, 2], "y": [1, 2, 3]}), "do not broadcast"),
    (dict(expr="2*pi", at={}), "no variables"),
    (dict(expr="x*pi", at={"x": 1, "pi": 3}), "constant"),
    (dict(expr="x", at={"x": 1}, eps=-1.0), "--eps"),
    (dict(expr="x", at={"x": 1}, order=3), "--order"),
    (dict(expr="x", at={"x": 1}, points=-1), "--points"),
    (dict(expr="x*target", at={"x": 1, "target": 2}, loss="mse", target=0.0), "taken by the loss target"),
])
def test_user_errors_raise_user_input_error(kwargs, needle):
    expr = kwargs.pop("expr")
    with pytest.raises(UserInputError) as info:
        check_expression(expr, **kwargs)
    assert needle in info.value.message


def test_assert_expression():
    report = assert_expression("x**2", at={"x": 3.0})
    assert report.passed
    with pytest.raises(AssertionError) as info:
        assert_expression("log(x)", at={"x": -1.0})
    text = str(info.value)
    assert "gradient check failed" in text and "log(x)" in text and "nan" in text


def test_report_is_frozen_and_public():
    report = gradcheck_cli.check_expression("x**2", at={"x": 3.0})
    assert isinstance(report, gradcheck_cli.Report)
    assert isinstance(report.checks[0], gradcheck_cli.CheckResult)
    assert isinstance(report.checks[0].gradients[0], gradcheck_cli.GradientResult)
    with pytest.raises(Exception):
        report.checks = ()


@pytest.mark.parametrize("expr", ["x", "sum(x)", "mean(x)"])
def test_identity_has_no_spurious_no_dependence(expr):
    """When the result is the input leaf itself, autograd's graph has no grad_fn to walk; the
    input is still reached (a regression: no_dependence was reported here)."""
    (check,) = check_expression(expr, at={"x": 2.0}).checks
    assert float(check.gradients[0].autograd) == 1.0
    assert "no_dependence" not in check.codes()
    assert check.passed


def test_detached_input_has_no_dependence():
    (check,) = check_expression("x*detach(y)", at={"x": 1.0, "y": 2.0}).checks
    assert ("no_dependence", "y") in {(d.code, d.wrt) for d in check.diagnostics}
    assert float(grads_of(check)["y"].autograd) == 0.0
