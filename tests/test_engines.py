"""The three engines, one at a time, against truths of their own: torch's autograd on
plain torch code (written here, not through the tool's IR), hand-derived formulas, and
mpmath.  Plus the symbolic engine's promise: its SymPy work does not grow with the
number of elements."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import sympy as sp

from gradcheck_cli.checker import check_expression, prepare
from gradcheck_cli.engines import autograd, fd_steps, finite_diff, symbolic
from gradcheck_cli.expr import ir, parse


def symbolic_gradients(expr: str, at: dict, wrt=None):
    """(model, value, gradients) from the symbolic engine alone."""
    prep = prepare(expr, at, wrt=wrt)
    model = symbolic.build(prep.root, prep.node_shapes, prep.var_shapes)
    arrays = {k: v.array for k, v in prep.values.items()}
    ev = symbolic.Evaluator(model, arrays)
    return model, ev.value(), ev.gradients(prep.wrt)


def torch_gradients(fn, at: dict):
    """Gradient (or Jacobian) of fn(**tensors) by torch itself, float64, shaped out + in."""
    import torch

    names = list(at)
    tensors = tuple(torch.tensor(np.asarray(at[n], dtype=np.float64)) for n in names)
    value = fn(**dict(zip(names, tensors)))
    jac = torch.autograd.functional.jacobian(lambda *xs: fn(**dict(zip(names, xs))), tensors)
    return value.numpy(), {n: j.numpy() for n, j in zip(names, jac)}


# ---- symbolic engine: reductions chained by reverse accumulation ----------------------------------

REDUCTION_CHAINS = [
    ("sum(x*sum(x))", {"x": [1.0, -2.0, 0.5]}, lambda x: (x * x.sum()).sum()),
    ("mean(x)*mean(x)", {"x": [1.0, 2.0, 4.0]}, lambda x: x.mean() * x.mean()),
    ("mean(x) + mean(x*1)", {"x": [1.0, 3.0]}, lambda x: x.mean() + (x * 1).mean()),
    ("prod(x)*sum(x)", {"x": [0.5, -2.0, 3.0]}, lambda x: x.prod() * x.sum()),
    ("prod(x)", {"x": [0.0, 2.0, 3.0]}, lambda x: x.prod()),
    ("prod(x)", {"x": [[1.5, 2.0], [-1.0, 0.25]]}, lambda x: x.prod()),
    ("logsumexp(x*y)", {"x": [1.0, 2.0, -1.0], "y": 3.0}, lambda x, y: (x * y).logsumexp(0)),
    ("norm(x - mean(x))", {"x": [1.0, 2.0, 4.0, -3.0]}, lambda x: (x - x.mean()).norm()),
    ("dot(x, exp(y))", {"x": [1.0, -2.0], "y": [0.3, 0.1]}, lambda x, y: (x * y.exp()).sum()),
    ("sum(x)*sum(y)", {"x": [1.0, 2.0], "y": [3.0, 4.0, 5.0]}, lambda x, y: x.sum() * y.sum()),
    ("mse(x, mean(x))", {"x": [1.0, 2.0, 6.0]}, lambda x: ((x - x.mean()) ** 2).mean()),
    ("mean((x - mean(x))**2)", {"x": [0.5, -1.0, 2.0, 3.0]}, lambda x: ((x - x.mean()) ** 2).mean()),
    ("sum(x*mean(x*sum(x)))", {"x": [1.0, -0.5, 2.0]}, lambda x: (x * (x * x.sum()).mean()).sum()),
    ("sum(w*x + b)", {"w": [[1.0], [2.0]], "x": [1.0, 2.0, 3.0], "b": 0.5}, lambda w, x, b: (w * x + b).sum()),
    ("sum(sigmoid(w*x + b)**2)", {"w": 0.7, "x": [[1.0, 2.0], [-3.0, 0.5]], "b": -0.2},
     lambda w, x, b: ((w * x + b).sigmoid() ** 2).sum()),
    ("x*sum(x)", {"x": [1.0, 2.0]}, lambda x: x * x.sum()),                       # a Jacobian
    ("exp(x)/sum(exp(x))", {"x": [0.1, -0.4, 2.0]}, lambda x: x.exp() / x.exp().sum()),  # softmax
    ("sum(x)", {"x": 2.0}, lambda x: x.sum()),                                  # a reduction of a scalar
]


@pytest.mark.parametrize("expr,at,fn", REDUCTION_CHAINS, ids=[c[0] for c in REDUCTION_CHAINS])
def test_symbolic_matches_torch_on_reductions(expr, at, fn):
    _, value, grads = symbolic_gradients(expr, at)
    t_value, t_grads = torch_gradients(fn, at)
    np.testing.assert_allclose(value, t_value, rtol=1e-12, atol=1e-14)
    for name, g in grads.items():
        assert g.shape == t_grads[name].shape, name
        np.testing.assert_allclose(g, t_grads[name], rtol=1e-11, atol=1e-13, err_msg=name)


def test_symbolic_work_does_not_grow_with_elements():
    """The same formulas are derived and compiled for 10 elements and for 100000."""
    sizes = {}
    for n in (10, 100_000):
        model, _, _ = symbolic_gradients("mean((x - mean(x))**2) + sum(sin(x)*x)", {"x": f"randn({n})"})
        sizes[n] = (len(model.reductions), len(model._compiled), len(model._derivatives))
    assert sizes[10] == sizes[100_000]


def test_symbolic_speed_on_a_large_tensor():
    """Acceptance: the symbolic column of mean((x - mean(x))**2), x = randn(100000), in seconds,
    equal to the hand formula 2 (x - mean x) / N."""
    started = time.perf_counter()
    report = check_expression("mean((x - mean(x))**2)", at={"x": "randn(100000)"})
    elapsed = time.perf_counter() - started
    (check,) = report.checks
    x = np.asarray(check.point["x"], dtype=np.float64)
    assert x.shape == (100_000,)
    expected = 2 * (x - x.mean()) / x.size
    (g,) = check.gradients
    assert g.symbolic is not None
    np.testing.assert_allclose(g.symbolic, expected, rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(g.autograd, expected, rtol=1e-9, atol=1e-18)
    assert check.passed
    assert elapsed < 20, f"the whole check took {elapsed:.1f} s"  # a sanity guard, not a benchmark


def test_symbolic_engine_alone_is_fast_on_a_large_tensor():
    prep = prepare("mean((x - mean(x))**2)", {"x": "randn(100000)"})
    arrays = {"x": prep.values["x"].array}
    started = time.perf_counter()
    model = symbolic.build(prep.root, prep.node_shapes, prep.var_shapes)
    grads = symbolic.Evaluator(model, arrays).gradients(["x"])
    assert time.perf_counter() - started < 10
    x = arrays["x"]
    np.testing.assert_allclose(grads["x"], 2 * (x - x.mean()) / x.size, rtol=1e-9, atol=1e-18)


# ---- symbolic engine: exactness and robustness --------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("6.7", sp.Rational(67, 10)), ("2", sp.Integer(2)), ("1e-3", sp.Rational(1, 1000)), (".5", sp.Rational(1, 2)),
])
def test_literals_are_exact(text, expected):
    node = parse(text)
    assert isinstance(node, ir.Num)
    assert symbolic.literal(node) == expected


@pytest.mark.parametrize("z", [14.4, 20.0, 30.0])
def test_symbolic_bce_of_sigmoid_keeps_its_digits(z):
    """d/dz -log(1 - sigmoid(z)) = sigmoid(z): the symbolic column evaluates sigmoid(z)(1-sigmoid(z))
    / (1-sigmoid(z)), whose roundings of 1 - sigmoid(z) cancel only when both are formed alike
    (the seed example, z = 14.4, lost 10 digits with sigmoid' written as sigmoid(z) sigmoid(-z))."""
    import mpmath as mp

    _, _, grads = symbolic_gradients("-log(1 - sigmoid(z))", {"z": z})
    with mp.workdps(50):
        truth = float(1 / (1 + mp.exp(-mp.mpf(z))))
    assert abs(float(grads["z"]) - truth) <= 4e-16 * truth


@pytest.mark.parametrize("expr", ["(2*x)**(99**50)", "x*sqrt(2)**(99**50)", "((((2*x)**64)**64)**64)**64",
                                  "x**(99**99)"])
def test_huge_exact_powers_do_not_hang(expr):
    """SymPy would build 2**(99**50) exactly; the engine switches to floats first."""
    started = time.perf_counter()
    prep = prepare(expr, {"x": 0.5})
    model = symbolic.build(prep.root, prep.node_shapes, prep.var_shapes)
    symbolic.Evaluator(model, {"x": np.asarray(0.5)}).gradients(["x"])
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("expr,value,grad", [
    ("x*log(99**99)", 0.5 * 99 * math.log(99), 99 * math.log(99)),
    ("x*sqrt(10**200)", 0.5e100, 1e100),
    ("x*12345678901234567890123", 0.5 * 12345678901234567890123, 12345678901234567890123.0),
])
def test_big_integers_evaluate(expr, value, grad):
    """Integers beyond int64 reach numpy as floats, not as objects numpy cannot take the log of."""
    _, v, grads = symbolic_gradients(expr, {"x": 0.5})
    assert float(v) == pytest.approx(value, rel=1e-14)
    assert float(grads["x"]) == pytest.approx(grad, rel=1e-14)


@pytest.mark.parametrize("expr,grad_nonfinite", [("x/0", True), ("x*(1/0)", True), ("0*x/0", False)])
def test_division_by_zero_is_nan_not_a_crash(expr, grad_nonfinite):
    """x/0 has no finite value (SymPy's complex infinity reaches numpy as nan, not a KeyError);
    0*x/0 is the constant nan to SymPy, whose derivative SymPy takes as 0."""
    _, v, grads = symbolic_gradients(expr, {"x": 0.5})
    assert not np.all(np.isfinite(v))
    assert (not np.all(np.isfinite(grads["x"]))) == grad_nonfinite


@pytest.mark.parametrize("expr", ["x*sqrt(-1)", "x*log(-1)", "x*asin(2)", "x*(1 + sqrt(-1))**2"])
def test_non_real_constants_are_nan_like_torch(expr):
    """SymPy makes sqrt(-1) the imaginary unit; torch (and the check) see nan, so the symbolic
    column is nan too, not a complex number numpy cannot store (nor a symbolic_unavailable)."""
    _, v, _ = symbolic_gradients(expr, {"x": 0.5})
    assert np.isnan(v)
    (check,) = check_expression(expr, at={"x": 0.5}).checks
    assert not check.passed
    assert check.codes() == {"nonfinite"}


def test_numpy_safe():
    x = sp.Symbol("x", real=True)
    big = sp.Integer(10) ** 30
    safe = symbolic.numpy_safe(big * x + sp.zoo)
    assert not safe.has(sp.zoo)
    assert all(max(abs(r.p), abs(r.q)).bit_length() <= 53 for r in safe.atoms(sp.Rational))
    assert symbolic.numpy_safe(x**2 + 3) == x**2 + 3  # small exact numbers stay exact


@pytest.mark.parametrize("expr,at,wrt,expected", [
    ("x**3", {"x": 2.0}, "x", "3*x**2"),
    ("sin(w*x)", {"w": 1.0, "x": 2.0}, "w", "x*cos(w*x)"),
    ("sigmoid(x)", {"x": 1.0}, "x", "(1 - sigmoid(x))*sigmoid(x)"),
    ("mean(x1**2)", {"x1": [1.0, 2.0, 3.0, 4.0, 5.0]}, "x1", "2*x1/5"),
], ids=["cube", "sin-wx", "sigmoid", "mean-of-squares"])
def test_formulas(expr, at, wrt, expected):
    (check,) = check_expression(expr, at=at, formula=True).checks
    (g,) = [g for g in check.gradients if g.wrt == wrt]
    assert g.formula == expected


def test_formula_is_absent_unless_asked():
    (check,) = check_expression("x**3", at={"x": 2.0}).checks
    assert check.gradients[0].formula is None


# ---- autograd engine ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_autograd_runs_in_the_requested_dtype(dtype):
    import torch

    td = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}[dtype]
    x0 = [0.3, -1.2, 2.5]
    root = parse("sum(tanh(x)*exp(x))")
    result = autograd.run(root, {"x": np.array(x0)}, ["x"], dtype)
    x = torch.tensor(x0, dtype=td, requires_grad=True)
    out = (torch.tanh(x) * torch.exp(x)).sum()
    (g,) = torch.autograd.grad(out, x)
    # the engine's numbers are exactly torch's in that dtype (then widened to float64)
    assert float(result.value) == float(out.detach().double())
    np.testing.assert_array_equal(result.gradients["x"], g.double().numpy())


def test_autograd_jacobian_shape_and_values():
    import torch

    at = {"x": [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], "y": [0.3, -0.7, 1.1]}
    root = parse("sin(x)*y + x*sum(y**2)")
    result = autograd.run(root, {k: np.array(v) for k, v in at.items()}, ["x", "y"], "float64")
    _, expected = torch_gradients(lambda x, y: torch.sin(x) * y + x * (y**2).sum(), at)
    assert result.gradients["x"].shape == (2, 3, 2, 3)
    assert result.gradients["y"].shape == (2, 3, 3)
    np.testing.assert_allclose(result.gradients["x"], expected["x"], rtol=1e-14)
    np.testing.assert_allclose(result.gradients["y"], expected["y"], rtol=1e-14)


# ---- finite differences --------------------------------------------------------------------------------

@pytest.mark.parametrize("x", [0.0, 0.5, -3.0, 1e6, -1e-9])
def test_central_step_size(x):
    """h = cbrt(eps)*max(1,|x|), made exactly representable so (x + h) - x == h."""
    h = float(fd_steps.step_sizes("central", np.array([x]), None)[0])
    ideal = np.finfo(np.float64).eps ** (1 / 3) * max(1.0, abs(x))
    assert h == pytest.approx(ideal, rel=1e-6)
    assert (x + h) - x == h


def test_explicit_step_is_relative():
    assert float(fd_steps.step_sizes("central", np.array([100.0]), 1e-4)[0]) == pytest.approx(1e-2)
    assert float(fd_steps.step_sizes("central", np.array([0.1]), 1e-4)[0]) == pytest.approx(1e-4)


@pytest.mark.parametrize("expr,scheme", [
    ("sin(x)*exp(x)", "complex"),       # real-analytic: the complex step
    ("relu(x) + x", "richardson"),      # a kinked function: complex steps cannot go through it
    ("where(x > 0, x, -x)", "richardson"),
    ("abs(x)", "richardson"),
])
def test_auto_scheme(expr, scheme):
    assert finite_diff.resolve_scheme("auto", parse(expr)) == (scheme, None)


def test_complex_request_falls_back_with_a_reason():
    scheme, why = finite_diff.resolve_scheme("complex", parse("relu(x)"))
    assert scheme == "richardson" and "relu" in why


@pytest.mark.parametrize("scheme,rtol", [("central", 1e-9), ("richardson", 1e-11), ("complex", 1e-15),
                                          ("forward", 1e-6)])
def test_scheme_accuracy(scheme, rtol):
    """Each scheme's derivative of sin(x)*exp(x) at a few points, against the hand formula."""
    x = np.array([0.3, -1.1, 2.0])
    root = parse("sin(x)*exp(x)")
    fd = finite_diff.jacobian(root, {"x": x}, "x", (3,), scheme=scheme, max_numel=3)
    truth = np.exp(x) * (np.sin(x) + np.cos(x))
    np.testing.assert_allclose(np.diag(fd.jacobian.reshape(3, 3)), truth, rtol=rtol)
    # the error estimate is honest: the true error is within the checker's 3x safety margin
    err = np.abs(np.diag(fd.jacobian.reshape(3, 3)) - truth)
    assert np.all(err <= 3 * np.diag(fd.error.reshape(3, 3)) + 1e-15 * np.abs(truth))


def test_finite_differences_are_vectorized():
    """An elementwise input is perturbed all at once: its 3000x3000 Jacobian from a handful of
    batched evaluations, with the diagonal right and every other entry exactly 0."""
    x = np.random.default_rng(0).standard_normal(3000)
    started = time.perf_counter()
    fd = finite_diff.jacobian(parse("x*sigmoid(x)"), {"x": x}, "x", (3000,), scheme="central", max_numel=3000)
    assert time.perf_counter() - started < 5
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(np.diag(fd.jacobian), s + x * s * (1 - s), rtol=1e-8, atol=1e-10)
    off = fd.jacobian[~np.eye(3000, dtype=bool)]
    assert np.all(off == 0.0)


@pytest.mark.parametrize("fd", ["central", "richardson", "auto"])
def test_finite_differences_through_a_large_sum_are_sampled_with_honest_errors(fd):
    """Through a reduction each element needs its own evaluations: a seeded sample is differenced
    (and reported), and each sampled value is within 3x its error estimate of the truth, even where
    the sum of 50000 terms cancels most digits of a central difference."""
    x = np.random.default_rng(0).standard_normal(50_000)
    (check,) = check_expression("sum(x*sigmoid(x))", at={"x": x}, fd=fd).checks
    assert check.passed and "fd_sampled" in check.codes()
    (g,) = check.gradients
    s = 1 / (1 + np.exp(-x))
    truth = s + x * s * (1 - s)
    computed = ~np.isnan(g.finite_difference)
    assert 16 <= computed.sum() < x.size
    err = np.abs(g.finite_difference[computed] - truth[computed])
    assert np.all(err <= 3 * g.fd_error_estimate[computed] + 1e-15)
    np.testing.assert_allclose(g.symbolic, truth, rtol=1e-12, atol=1e-15)  # symbolic covers every element


def test_finite_differences_flag_the_kink():
    fd = finite_diff.jacobian(parse("relu(x)"), {"x": np.array(0.0)}, "x", (), scheme="central")
    assert fd.kink_mask is not None and fd.kink_mask.all()
    assert fd.jacobian.reshape(()) == pytest.approx(0.5)  # the two-sided average of 0 and 1
    assert float(fd.backward_slope.reshape(())) == pytest.approx(0.0, abs=1e-12)
    assert float(fd.forward_slope.reshape(())) == pytest.approx(1.0)
    assert fd.kinks and fd.kinks[0][0] == "relu"


def test_finite_differences_see_through_detach():
    fd = finite_diff.jacobian(parse("x*detach(x)"), {"x": np.array(3.0)}, "x", (), scheme="complex")
    assert float(fd.jacobian.reshape(())) == pytest.approx(6.0, rel=1e-14)


# ---- compare: the verdict on one gradient ---------------------------------------------------------------

def test_an_infinite_reference_does_not_pass_a_finite_gradient():
    """atol + rtol*|inf| is inf: an infinite exact derivative must be matched by the same
    infinity, not by tolerance (a regression: autograd 1.0 once 'agreed' with symbolic inf)."""
    from gradcheck_cli import compare as cmp

    tol = cmp.tolerance("float64")
    assert not cmp.compare("x", np.array(1.0), np.array(np.inf), np.array(5.0), np.array(1e-9), tol).passed
    assert not cmp.compare("x", np.array(1.0), np.array(-np.inf), None, None, tol).passed
    # and an infinite gradient fails even where the exact derivative is infinite too (nonfinite)
    result = cmp.compare("x", np.array(np.inf), np.array(np.inf), None, None, tol)
    assert not result.passed and [d.code for d in result.diagnostics] == ["nonfinite"]


@pytest.mark.parametrize("auto,sym,passed", [
    (1.0, 1.0 + 0.9e-7, True),     # within rtol 1e-7 (+ atol 1e-9)
    (1.0, 1.0 + 1.2e-7, False),
    (0.0, 0.9e-9, True),            # within atol near zero
    (0.0, 1.1e-9, False),
    (np.nan, 1.0, False),
])
def test_float64_tolerance_boundaries(auto, sym, passed):
    from gradcheck_cli import compare as cmp

    result = cmp.compare("x", np.array(auto), np.array(sym), None, None, cmp.tolerance("float64"))
    assert result.passed is passed
