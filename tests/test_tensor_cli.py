"""Tensor expressions as users meet them: messages with carets, class indices from the
value language and from Python callers, the symbolic budget, --formula's chain rule,
--points, float32, the Hessian, spec files."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli import check_expression
from gradcheck_cli.errors import UserInputError


@pytest.mark.parametrize("args, message, caret_under", [
    (["A @ B", "--at", "A=zeros(2,3)", "--at", "B=zeros(4,2)"], "shapes [2, 3] and [4, 2] do not fit for '@'", "@"),
    (["sum(x, 2)", "--at", "x=zeros(2,3)"], "dim 2 is out of range for shape [2, 3]", "s"),
    (["x[0, 5]", "--at", "x=zeros(2,3)"], "index 5 is out of range for dimension 1 of shape [2, 3]", "5"),
    (["cat(a, b, 1)", "--at", "a=zeros(2,3)", "--at", "b=zeros(3,3)"], "must agree in every other dimension", "c"),
    (["outer(a, b)", "--at", "a=zeros(2,3)", "--at", "b=zeros(3)"], "needs two vectors", "o"),
    (["reshape(x, 4, 2)", "--at", "x=zeros(2,3)"], "cannot reshape shape [2, 3] (6 elements)", "r"),
    (["cross_entropy(z, y)", "--at", "z=zeros(2,3)", "--at", "y=int([0, 1, 2])"],
     "class indices for logits [2, 3] have shape [2]", "c"),
    (["var(x, 0)", "--at", "x=zeros(1,3)"], "need at least 2 elements", "v"),
], ids=["matmul", "dim", "index", "cat", "outer", "reshape", "class-shape", "var-one-element"])
def test_shape_errors_name_the_shapes_and_point_at_the_operator(run_cli, args, message, caret_under):
    code, out, err = run_cli("check", *args)
    assert code == 2 and out == "" and "Traceback" not in err
    assert message in err
    source, caret = err.rstrip("\n").split("\n")[-2:]
    assert source.strip() == args[0]
    assert source[caret.index("^")] == caret_under


def test_class_indices_are_never_differentiated_and_keep_their_dtype():
    check = check_expression("cross_entropy(z, y)", {"z": "randn(3, 4)", "y": "int([3, 0, 1])"}).checks[0]
    assert [g.wrt for g in check.gradients] == ["z"]
    assert check.passed and check.gradients[0].symbolic is not None
    with pytest.raises(UserInputError, match="never differentiated"):
        check_expression("cross_entropy(z, y)", {"z": "randn(3, 4)", "y": "int([3, 0, 1])"}, wrt=["z", "y"])


@pytest.mark.parametrize("make", [
    lambda: np.array([2, 0, 1]),
    lambda: __import__("torch").tensor([2, 0, 1]),
], ids=["numpy-int64", "torch-long"])
def test_integer_arrays_from_python_callers_stay_class_indices(make):
    import torch

    z = np.random.default_rng(0).standard_normal((3, 4))
    check = check_expression("cross_entropy(z, y)", {"z": z, "y": make()}).checks[0]
    assert check.passed
    expected = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor([2, 0, 1]))
    assert float(check.value["torch"]) == pytest.approx(float(expected), rel=1e-14)


def test_float_targets_of_the_class_shape_are_told_to_be_integers():
    with pytest.raises(UserInputError, match=r"int\(\[\.\.\.\]\)"):
        check_expression("cross_entropy(z, y)", {"z": "randn(2, 3)", "y": "[0, 1]"})


def test_masks_and_indices_in_arithmetic_are_numbers():
    check = check_expression("sum(x * m)", {"x": "randn(4)", "m": "bool([1, 0, 1, 1])"}).checks[0]
    assert check.passed and [g.wrt for g in check.gradients] == ["x"]
    np.testing.assert_array_equal(check.gradients[0].symbolic, [1.0, 0.0, 1.0, 1.0])


def test_past_the_budget_symbolic_is_null_and_says_how_to_shrink():
    check = check_expression("sum(softmax(A @ B, 1))", {"A": "randn(32, 32)", "B": "randn(32, 32)"}).checks[0]
    diag = next(d for d in check.diagnostics if d.code == "symbolic_unavailable")
    assert "budget" in diag.message and "smaller tensors" in diag.message and "[32, 32]" in diag.message
    assert check.gradients[0].symbolic is None and check.gradients[0].finite_difference is not None
    assert check.passed  # autograd against finite differences


def test_formula_shows_the_chain_rule_in_index_notation(run_cli):
    code, out, _ = run_cli("check", "mean(sum((tanh(X @ W1 + b1) @ W2 - Y)**2, 1))", "--at", "X=randn(4,3)",
                           "--at", "W1=randn(3,5)", "--at", "b1=randn(5)", "--at", "W2=randn(5,2)",
                           "--at", "Y=randn(4,2)", "--wrt", "W1", "--formula")
    assert code == 0
    lines = [line.strip() for line in out.splitlines()]
    for expected in ("u1 = X @ W1", "u2 = tanh(u1 + b1) @ W2", "G_u3 = 1/4    (from mean(u3))",
                     "G[tanh(u1 + b1)] = G_u2 @ W2^T    (through u2)",
                     "G_u1 += (1 - tanh(b1 + u1)**2) * G[tanh(u1 + b1)]", "d/dW1 += X^T @ G_u1    (through u1)"):
        assert any(line.startswith(expected) for line in lines), (expected, out)
    assert "sum_k A[..., i, k] B[..., k, j]" in out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_points_and_dtypes_go_through_structured_functions(dtype):
    check = check_expression("cross_entropy(softmax(Z, 1) @ W, y)", {"Z": "randn(3, 4)", "W": "randn(4, 2)",
                                                                    "y": "randint(0, 2, 3)"},
                             dtype=dtype, points=3).checks[0]
    assert check.passed, [d.message for d in check.diagnostics]
    assert check.extra["points_checked"] == 4
    assert all(g.symbolic is not None for g in check.gradients)


def test_the_exact_hessian_goes_through_structured_functions():
    import torch

    check = check_expression("logsumexp(A @ v, 0)[0]", {"A": "randn(2, 2)", "v": "randn(2)"}, order=2).checks[0]
    assert check.passed
    hess = check.extra["hessian"]
    assert hess["symbolic"] is not None
    A, v = (torch.tensor(np.asarray(check.point[k])) for k in ("A", "v"))
    truth = torch.autograd.functional.hessian(lambda a, b: torch.logsumexp(a @ b, 0), (A, v))
    flat = torch.cat([torch.cat([truth[i][j].reshape(A.numel() if i == 0 else 2, -1) for j in range(2)], 1)
                      for i in range(2)])
    np.testing.assert_allclose(hess["symbolic"], flat.numpy(), rtol=1e-10, atol=1e-12)


def test_a_spec_file_runs_tensor_expressions_with_class_indices(tmp_path, run_cli):
    spec = tmp_path / "models.toml"
    spec.write_text('[[check]]\nname = "ce"\nexpr = "cross_entropy(Z @ W, y)"\n'
                    'at = { Z = "randn(4, 3)", W = "randn(3, 5)", y = "int([0, 2, 4, 1])" }\n')
    code, out, err = run_cli("run", str(spec), "--jobs", "1")
    assert code == 0, err
    assert "1 check passed" in out


def test_keepdim_lets_row_statistics_broadcast():
    check = check_expression("x - mean(x, 1)", {"x": "randn(2, 3)"}).checks[0]
    assert np.shape(check.value["torch"]) == (2, 3)
    assert check.passed


def test_elementwise_expressions_keep_the_per_element_model():
    """The fast path is untouched: no element expansion for elementwise expressions and full
    reductions, so 100,000 elements stay cheap."""
    from gradcheck_cli.checker import prepare
    from gradcheck_cli.engines import symbolic

    prep = prepare("mean((x - mean(x))**2)", {"x": "randn(100000)"})
    model = symbolic.build(prep.root, prep.node_shapes, prep.var_shapes)
    assert isinstance(model, symbolic.Model)
    grads = symbolic.Evaluator(model, {"x": prep.values["x"].array}).gradients(["x"])
    x = prep.values["x"].array
    np.testing.assert_allclose(grads["x"], 2 * (x - x.mean()) / x.size, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("expr, together", [
    ("x*sin(y)", {"x", "y"}),
    ("x[0] * y", {"y"}),
    ("sum(x, 0) + y", {"y"}),
    ("softmax(x, 0) * y", {"y"}),
    ("(x @ y) * y", set()),
    ("transpose(x) + y", {"y"}),
])
def test_finite_differences_perturb_together_only_through_elementwise_paths(expr, together):
    """Perturbing every element at once is right only where output o sees one input element;
    a structured function (indexing, a reduction over a dim, softmax, matmul) breaks that."""
    from gradcheck_cli.engines.finite_diff import elementwise_only
    from gradcheck_cli.expr import parse

    assert elementwise_only(parse(expr)) == together


def test_points_never_redraw_class_indices():
    at = {"z": "randn(3, 4)", "y": "int([3, 0, 1])"}
    check = check_expression("cross_entropy(z, y)", at, points=4).checks[0]
    assert check.passed and check.extra["points_checked"] == 5
    np.testing.assert_array_equal(np.asarray(check.point["y"]), [3, 0, 1])
