"""From the notebook to real models (issue 13's acceptance): logistic regression over a
dataset, softmax cross-entropy with class indices, a two-layer MLP, attention scores,
per-row layer norm and indexing -- each checked by all three methods with the symbolic
column filled, against gradients derived by hand (numpy, written out below).

Bugs are still caught: the same formulas as custom ops (samples/ops/model_ops.py) with a
deliberately wrong backward fail `gradcheck op`, and the expression check's numbers equal
the op check's for the correct versions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from gradcheck_cli import check_expression, check_op

HERE = Path(__file__).resolve().parent
SAMPLE_OPS = HERE.parent / "samples" / "ops"
sys.path.insert(0, str(SAMPLE_OPS))  # the ops users copy from samples/ops (as op_zoo.py takes them)

import model_ops  # noqa: E402  (samples/ops/model_ops.py)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---- gradients by hand -------------------------------------------------------------------------

def logistic_by_hand(X, w, b, y):
    """L = mean(bce(sigmoid(Xw + b), y)): dL/dw = X^T (s - y) / n, dL/db = mean(s - y)."""
    r = sigmoid(X @ w + b) - y
    return {"w": X.T @ r / len(y), "b": r.mean()}


def softmax_ce_by_hand(Z, W, y):
    """L = mean_i (logsumexp(ZW)_i - (ZW)_{i,y_i}): G = (softmax(ZW) - onehot(y)) / N,
    dL/dZ = G W^T, dL/dW = Z^T G."""
    G = (softmax(Z @ W) - np.eye(W.shape[1])[y]) / Z.shape[0]
    return {"Z": G @ W.T, "W": Z.T @ G}


def mlp_by_hand(X, W1, b1, W2, Y):
    """L = mean_i sum_j (H W2 - Y)_ij^2, H = tanh(X W1 + b1): backpropagation by hand."""
    H = np.tanh(X @ W1 + b1)
    dR = 2 * (H @ W2 - Y) / X.shape[0]
    dA = (dR @ W2.T) * (1 - H**2)
    return {"X": dA @ W1.T, "W1": X.T @ dA, "b1": dA.sum(0), "W2": H.T @ dR, "Y": -dR}


def attention_by_hand(Q, K, V):
    """O = P V, P = softmax(S, 1), S = Q K^T / 2 (a Jacobian, O's shape + the input's):
    dO_ij/dV_kl = P_ik d_jl; dO_ij/dS_ib = P_ib (V_bj - O_ij);
    dO_ij/dQ_cd = d_ic sum_b P_ib (V_bj - O_ij) K_bd / 2;  dO_ij/dK_cd = P_ic (V_cj - O_ij) Q_id / 2."""
    P = softmax(Q @ K.T / 2)
    O = P @ V
    n, m = O.shape
    dS = P[:, None, :] * (V.T[None, :, :] - O[:, :, None])  # [i, j, b] = dO_ij / dS_ib
    dQ = np.einsum("ic,ijb,bd->ijcd", np.eye(n), dS, K) / 2
    dK = np.einsum("ijc,id->ijcd", dS, Q) / 2
    dV = np.einsum("ik,jl->ijkl", P, np.eye(m))
    return {"Q": dQ, "K": dK, "V": dV}


def layer_norm_by_hand(x, eps=1e-5):
    """y_ij = (x_ij - mu_i) / s_i, s_i = sqrt(var_i + eps), var unbiased (n - 1):
    dy_ij/dx_il = (d_jl - 1/n) / s_i - (x_ij - mu_i)(x_il - mu_i) / ((n - 1) s_i^3), 0 across rows."""
    rows, n = x.shape
    c = x - x.mean(1, keepdims=True)
    s = np.sqrt((c**2).sum(1, keepdims=True) / (n - 1) + eps)
    within = (np.eye(n)[None] - 1 / n) / s[:, :, None] - c[:, :, None] * c[:, None, :] / ((n - 1) * s[:, :, None] ** 3)
    return {"x": np.einsum("ik,ijl->ijkl", np.eye(rows), within)}


def index_by_hand(x, y):
    """o_j = x_0 y_{j+1}: do_j/dx = y_{j+1} at element 0; do_j/dy_{j+1} = x_0."""
    dx = np.zeros((2, 3))
    dx[:, 0] = y[1:3]
    dy = np.zeros((2, 4))
    dy[[0, 1], [1, 2]] = x[0]
    return {"x": dx, "y": dy}


@dataclass(frozen=True)
class Model:
    name: str
    expr: str
    at: dict  # as a user types them (--at)
    wrt: tuple | None
    by_hand: Callable
    plain: Callable  # the same formula in plain torch (samples/ops/model_ops.py)
    wrong: type  # ... and a torch.autograd.Function with one mistake in its backward
    ints: tuple = ()  # inputs that hold class indices

    @property
    def order(self) -> list:
        """The names check_op gives its floating inputs (class indices are passed as they are)."""
        return [k for k in self.at if k not in self.ints]


MODELS = [
    Model("logistic-regression", "mean(bce(sigmoid(X @ w + b), y))",
          {"X": "randn(8, 3)", "w": "randn(3)", "b": "0.1", "y": "[1, 0, 1, 1, 0, 0, 1, 0]"}, ("w", "b"),
          logistic_by_hand, model_ops.logistic, model_ops.WrongLogistic),
    Model("softmax-cross-entropy", "cross_entropy(Z @ W, y)",
          {"Z": "randn(4, 3)", "W": "randn(3, 5)", "y": "int([0, 2, 4, 1])"}, None,
          softmax_ce_by_hand, model_ops.softmax_ce, model_ops.WrongSoftmaxCE, ints=("y",)),
    Model("two-layer-mlp", "mean(sum((tanh(X @ W1 + b1) @ W2 - Y)**2, 1))",
          {"X": "randn(4, 3)", "W1": "randn(3, 5)", "b1": "randn(5)", "W2": "randn(5, 2)", "Y": "randn(4, 2)"}, None,
          mlp_by_hand, model_ops.mlp, model_ops.WrongMLP),
    Model("attention", "softmax(Q @ transpose(K) / sqrt(4), 1) @ V",
          {"Q": "randn(3, 4)", "K": "randn(3, 4)", "V": "randn(3, 2)"}, None,
          attention_by_hand, model_ops.attention, model_ops.WrongAttention),
    Model("layer-norm", "(x - mean(x, 1)) / sqrt(var(x, 1) + 1e-5)", {"x": "randn(3, 4)"}, None,
          layer_norm_by_hand, model_ops.layer_norm, model_ops.WrongLayerNorm),
    Model("indexing", "x[0] * y[1:3]", {"x": "randn(3)", "y": "randn(4)"}, None,
          index_by_hand, model_ops.index_product, model_ops.WrongIndexProduct),
]

_CHECKS: dict = {}


def expression_check(model: Model):
    if model.name not in _CHECKS:
        _CHECKS[model.name] = check_expression(model.expr, model.at, wrt=model.wrt).checks[0]
    return _CHECKS[model.name]


def point(model: Model) -> dict:
    check = expression_check(model)
    return {k: np.asarray(v) for k, v in check.point.items()}


def params(models=MODELS):
    return [pytest.param(m, id=m.name) for m in models]


@pytest.mark.parametrize("model", params())
def test_all_three_methods_equal_the_hand_formulas(model):
    check = expression_check(model)
    assert check.passed, [d.message for d in check.diagnostics]
    assert not check.codes(), [d.message for d in check.diagnostics]
    expected = model.by_hand(**point(model))
    assert [g.wrt for g in check.gradients] == list(model.wrt or expected)
    for g in check.gradients:
        assert g.symbolic is not None, f"symbolic missing for d/d{g.wrt}"
        for column, rtol in (("autograd", 1e-10), ("symbolic", 1e-10), ("finite_difference", 1e-7)):
            np.testing.assert_allclose(np.asarray(getattr(g, column), dtype=np.float64), expected[g.wrt],
                                       rtol=rtol, atol=1e-10, err_msg=f"{column} d/d{g.wrt}")


def _tensors(model: Model):
    import torch

    return [torch.tensor(v) if k in model.ints else torch.tensor(v, dtype=torch.float64)
            for k, v in point(model).items()]


def _op_wrt(model: Model) -> list:
    return [g.wrt for g in expression_check(model).gradients]


@pytest.mark.parametrize("model", params())
def test_the_same_formula_as_an_op_gives_the_same_numbers(model):
    """gradcheck op on the plain torch formula: it passes, and its finite differences and
    backward equal the expression check's symbolic and autograd columns."""
    report = check_op(model.plain, *_tensors(model), names=model.order, wrt=_op_wrt(model))
    (op,) = report.checks
    assert op.passed, [d.message for d in op.diagnostics]
    expr = {g.wrt: g for g in expression_check(model).gradients}
    for g in op.gradients:
        mine = expr[g.wrt]
        np.testing.assert_allclose(np.asarray(g.autograd, dtype=np.float64).reshape(mine.symbolic.shape),
                                   mine.symbolic, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(g.finite_difference, dtype=np.float64).reshape(mine.symbolic.shape),
                                   mine.symbolic, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("model", params())
def test_a_wrong_backward_fails_where_the_expression_passes(model):
    """The hand-written backward with one mistake fails `gradcheck op`; the numbers it got
    wrong differ from the expression check's exact ones, which pass."""
    report = check_op(model.wrong, *_tensors(model), names=model.order, wrt=_op_wrt(model))
    (op,) = report.checks
    assert not op.passed
    assert report.exit_code == 1
    expr = {g.wrt: g for g in expression_check(model).gradients}
    wrong = [g.wrt for g in op.gradients if not g.passed]
    assert wrong, "the op's failure names the wrong gradient"
    for name in wrong:
        got = np.asarray(next(g for g in op.gradients if g.wrt == name).autograd, dtype=np.float64)
        assert not np.allclose(got.reshape(expr[name].symbolic.shape), expr[name].symbolic, rtol=1e-6, atol=1e-9)
        assert expr[name].passed


def test_the_op_gate_fails_the_wrong_logistic_backward_from_the_command_line(run_cli):
    model = MODELS[0]
    args = ["op", f"{SAMPLE_OPS / 'model_ops.py'}:WrongLogistic", "--wrt", "w,b"]
    for k, v in model.at.items():
        args += ["--at", f"{k}={v}"]
    code, out, err = run_cli(*args)
    assert code == 1, err
    assert "w" in out and "FAIL" in out


def _page_examples() -> list:
    """(command, the output samples/models.md shows) for every example on the page."""
    import re

    text = (HERE.parent / "samples" / "models.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```text\n\$ (.*?)\n(.*?)```", text, re.S):
        out.append(pytest.param(block[0], block[1].rstrip("\n"), id=block[0].split('"')[1][:40]))
    return out


@pytest.mark.parametrize("command, shown", _page_examples())
def test_the_models_page_shows_what_the_commands_print(run_cli, command, shown):
    """samples/models.md's outputs are real: the same verdict, exit code and first line."""
    import shlex

    code, out, err = run_cli(*shlex.split(command)[1:])
    printed = (out + err).rstrip("\n").splitlines()
    expected = shown.splitlines()
    assert printed[0] == expected[0]
    assert printed[-1] == expected[-1]
    assert code == (2 if expected[0].startswith("gradcheck: error") else 1 if expected[-1].startswith("FAIL") else 0)
