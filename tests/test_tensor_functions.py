"""Every structured function (matmul, transpose, outer, reductions over a dim, max/min,
var/std, softmax, log_softmax, cross_entropy, nll, indexing, reshape, cat, stack) against
independent truths.

Two truths per case: torch.func.jacfwd of the same computation written directly in
plain torch (forward-mode, so it shares no code path with the reverse-mode autograd the
tool runs, and none at all with its SymPy model or its finite differences), and, where
the derivative has a short closed form, that form written by hand in numpy.  Each column
of the report (autograd, symbolic, finite differences) is compared with the truths
separately; the symbolic column must be filled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pytest

from gradcheck_cli.checker import check_expression

R = np.random.default_rng(7)


def rn(*shape):
    return R.standard_normal(shape).round(6)


@dataclass(frozen=True)
class TCase:
    func: str
    label: str
    expr: str
    at: dict  # numpy arrays; integer arrays are class indices
    torch_fn: Callable  # (torch, **tensors) -> tensor: the same computation in plain torch
    hand: Optional[Callable] = None  # (**arrays) -> {name: Jacobian out_shape + in_shape}
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.func}-{self.label}"


def softmax_np(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def onehot(y, c):
    return np.eye(c)[y]


# ---- hand-derived Jacobians (out_shape + in_shape) ------------------------------------------------

def hand_matmul(A, B):
    """C = A @ B: dC_ij/dA_kl = d_ik B_lj, dC_ij/dB_kl = A_ik d_lj."""
    n, k = A.shape
    m = B.shape[1]
    return {"A": np.einsum("ik,lj->ijkl", np.eye(n), B), "B": np.einsum("ik,lj->ijkl", A, np.eye(m))}


def hand_softmax_rows(x):
    """s = softmax(x, 1): ds_ij/dx_kl = d_ik s_ij (d_jl - s_il)."""
    s = softmax_np(x, 1)
    n, c = x.shape
    return {"x": np.einsum("ik,ij,jl->ijkl", np.eye(n), s, np.eye(c)) - np.einsum("ik,ij,il->ijkl", np.eye(n), s, s)}


def hand_log_softmax_rows(x):
    """l = log_softmax(x, 1): dl_ij/dx_kl = d_ik (d_jl - s_il)."""
    s = softmax_np(x, 1)
    n, c = x.shape
    return {"x": np.einsum("ik,jl->ijkl", np.eye(n), np.eye(c)) - np.einsum("ik,il,j->ijkl", np.eye(n), s, np.ones(c))}


def hand_ce_classes(z, y):
    """cross_entropy with class indices: (softmax(z) - onehot(y)) / N."""
    return {"z": (softmax_np(z) - onehot(y, z.shape[-1])) / z.shape[0]}


def hand_ce_probs(z, p):
    """cross_entropy with probabilities p: dz = (softmax(z) sum_c p - p) / N, dp = -log_softmax(z) / N."""
    s = softmax_np(z)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) + z.max(1, keepdims=True)
    n = z.shape[0]
    return {"z": (s * p.sum(1, keepdims=True) - p) / n, "p": -(z - lse) / n}


def hand_var_rows(x):
    """v = var(x, 1) (unbiased, keepdim): dv_i0/dx_kl = d_ik 2 (x_kl - mean_k) / (n - 1)."""
    n, c = x.shape
    d = 2 * (x - x.mean(1, keepdims=True)) / (c - 1)
    return {"x": np.einsum("ik,kl->ikl", np.eye(n), d)[:, None]}


def hand_std_all(x):
    """std(x) over every element: (x - mean) / ((N - 1) std)."""
    return {"x": (x - x.mean()) / ((x.size - 1) * x.std(ddof=1))}


def hand_norm_rows(x):
    """norm(x, 1): x_kl / norm(x_k) on row k."""
    nrm = np.sqrt((x**2).sum(1, keepdims=True))
    return {"x": np.einsum("ik,kl->ikl", np.eye(x.shape[0]), x / nrm)[:, None]}


def hand_logsumexp_rows(x):
    """logsumexp(x, 1): softmax(x) on row k."""
    return {"x": np.einsum("ik,kl->ikl", np.eye(x.shape[0]), softmax_np(x, 1))[:, None]}


def hand_max_rows(x):
    """max(x, 1), no ties: 1 at each row's largest element."""
    return {"x": np.einsum("ik,kl->ikl", np.eye(x.shape[0]), (x == x.max(1, keepdims=True)) * 1.0)[:, None]}


def hand_mean_centered(x):
    """x - mean(x, 1): d_ik (d_jl - 1/n)."""
    n, c = x.shape
    return {"x": np.einsum("ik,jl->ijkl", np.eye(n), np.eye(c) - 1.0 / c)}


def permutation(out_of_in: Callable, in_shape: tuple) -> np.ndarray:
    """The Jacobian of a rearrangement: 1 where an output element is that input element."""
    idx = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    picked = np.asarray(out_of_in(idx))
    jac = np.zeros(picked.shape + (idx.size,))
    for o, i in np.ndenumerate(picked):
        jac[o + (i,)] = 1.0
    return jac.reshape(picked.shape + tuple(in_shape))


A23, B32, X34, V3, W3 = rn(2, 3), rn(3, 2), rn(3, 4), rn(3), rn(3)
Z43 = rn(4, 3)
Y4 = np.array([0, 2, 1, 1])
P23 = softmax_np(rn(2, 3))

CASES = [
    # -- matmul in every torch.matmul form ----------------------------------------------------
    TCase("matmul", "matrix-matrix", "A @ B", {"A": A23, "B": B32}, lambda t, A, B: A @ B, hand_matmul),
    TCase("matmul", "matrix-vector", "A @ v", {"A": A23, "v": V3}, lambda t, A, v: A @ v,
          lambda A, v: {"A": np.einsum("ik,l->ikl", np.eye(2), v), "v": A}),
    TCase("matmul", "vector-vector", "v @ w", {"v": V3, "w": W3}, lambda t, v, w: v @ w, lambda v, w: {"v": w, "w": v}),
    TCase("matmul", "vector-matrix", "v @ B", {"v": V3, "B": B32}, lambda t, v, B: v @ B,
          lambda v, B: {"v": B.T, "B": np.einsum("k,jl->jkl", v, np.eye(2))}),
    TCase("matmul", "batched-broadcast", "A @ B", {"A": rn(2, 2, 3), "B": B32}, lambda t, A, B: A @ B),
    TCase("matmul", "batched-both", "sum((A @ B)**2)", {"A": rn(2, 2, 3), "B": rn(1, 3, 2)},
          lambda t, A, B: ((A @ B) ** 2).sum()),
    TCase("matmul", "call-form", "matmul(A, B)", {"A": A23, "B": B32}, lambda t, A, B: A @ B, hand_matmul),
    # -- transpose and outer --------------------------------------------------------------------
    TCase("transpose", "function", "transpose(A) * B", {"A": A23, "B": B32}, lambda t, A, B: A.T * B,
          lambda A, B: {"A": np.einsum("ijkl,ij->ijkl", permutation(lambda i: i.T, (2, 3)), B),
                        "B": np.einsum("ij,ik,jl->ijkl", A.T, np.eye(3), np.eye(2))}),
    TCase("transpose", "attribute", "A.T @ A", {"A": A23}, lambda t, A: A.T @ A),
    TCase("transpose", "vector-is-identity", "v.T * 2", {"v": V3}, lambda t, v: v * 2, lambda v: {"v": 2 * np.eye(3)}),
    TCase("transpose", "explicit-dims", "transpose(X, 0, 2)", {"X": rn(2, 3, 4)}, lambda t, X: X.transpose(0, 2),
          lambda X: {"X": permutation(lambda i: i.transpose(2, 1, 0), (2, 3, 4))}),
    TCase("outer", "vectors", "outer(a, b)", {"a": V3, "b": rn(2)}, lambda t, a, b: t.outer(a, b),
          lambda a, b: {"a": np.einsum("ik,j->ijk", np.eye(3), b), "b": np.einsum("i,jk->ijk", a, np.eye(2))}),
    # -- reductions over a dim (keepdim) ---------------------------------------------------------
    TCase("sum", "dim-1", "sum(x, 1)", {"x": X34}, lambda t, x: x.sum(1, keepdim=True),
          lambda x: {"x": np.einsum("ik,l->ikl", np.eye(3), np.ones(4))[:, None]}),
    TCase("sum", "negative-dim", "sum(x**2, -2)", {"x": X34}, lambda t, x: (x**2).sum(-2, keepdim=True),
          lambda x: {"x": np.einsum("jl,kl->jkl", np.eye(4), 2 * x)[None]}),
    TCase("mean", "centered", "x - mean(x, 1)", {"x": X34}, lambda t, x: x - x.mean(1, keepdim=True), hand_mean_centered),
    TCase("prod", "dim-0", "prod(x, 0)", {"x": X34}, lambda t, x: x.prod(0, keepdim=True)),
    TCase("prod", "with-a-zero", "prod(x, 1)", {"x": np.array([[1.5, 0.0, -2.0], [0.5, 3.0, 0.0]])},
          lambda t, x: x.prod(1, keepdim=True)),
    TCase("logsumexp", "dim-1", "logsumexp(x, 1)", {"x": X34}, lambda t, x: t.logsumexp(x, 1, keepdim=True),
          hand_logsumexp_rows),
    TCase("logsumexp", "large-entries", "logsumexp(x, 0)", {"x": np.array([[1000.0, -3.0], [999.0, -700.0]])},
          lambda t, x: t.logsumexp(x, 0, keepdim=True)),
    TCase("norm", "dim-1", "norm(x, 1)", {"x": X34}, lambda t, x: t.linalg.vector_norm(x, dim=1, keepdim=True),
          hand_norm_rows),
    TCase("max", "dim-1", "max(x, 1)", {"x": X34}, lambda t, x: t.amax(x, 1, keepdim=True), hand_max_rows),
    TCase("max", "all", "max(x)", {"x": X34}, lambda t, x: t.amax(x),
          lambda x: {"x": (x == x.max()) * 1.0}),
    TCase("max", "shifted", "x - max(x, -1)", {"x": X34}, lambda t, x: x - t.amax(x, -1, keepdim=True)),
    TCase("min", "dim-0", "min(x, 0)", {"x": X34}, lambda t, x: t.amin(x, 0, keepdim=True)),
    TCase("var", "dim-1", "var(x, 1)", {"x": X34}, lambda t, x: t.var(x, 1, keepdim=True), hand_var_rows),
    TCase("var", "all", "var(x)", {"x": X34}, lambda t, x: t.var(x),
          lambda x: {"x": 2 * (x - x.mean()) / (x.size - 1)}),
    TCase("std", "dim-0", "std(x, 0)", {"x": X34}, lambda t, x: t.std(x, 0, keepdim=True)),
    TCase("std", "all", "std(x)", {"x": X34}, lambda t, x: t.std(x), hand_std_all),
    # -- softmax, log_softmax, class losses ----------------------------------------------------
    TCase("softmax", "dim-1", "softmax(x, 1)", {"x": X34}, lambda t, x: t.softmax(x, 1), hand_softmax_rows),
    TCase("softmax", "default-last-dim", "softmax(x)", {"x": X34}, lambda t, x: t.softmax(x, -1), hand_softmax_rows),
    TCase("softmax", "dim-0-of-3d", "softmax(x, 0)", {"x": rn(2, 2, 3)}, lambda t, x: t.softmax(x, 0)),
    TCase("softmax", "large-logits", "softmax(x, 1)", {"x": np.array([[800.0, 799.0, -5.0]])},
          lambda t, x: t.softmax(x, 1), hand_softmax_rows),
    TCase("log_softmax", "dim-1", "log_softmax(x, 1)", {"x": X34}, lambda t, x: t.log_softmax(x, 1),
          hand_log_softmax_rows),
    TCase("cross_entropy", "class-indices", "cross_entropy(z, y)", {"z": Z43, "y": Y4},
          lambda t, z, y: t.nn.functional.cross_entropy(z, y), hand_ce_classes),
    TCase("cross_entropy", "one-sample", "cross_entropy(z, y)", {"z": V3, "y": np.array(2)},
          lambda t, z, y: t.nn.functional.cross_entropy(z, y),
          lambda z, y: {"z": softmax_np(z) - onehot(y, 3)}),
    TCase("cross_entropy", "probabilities", "cross_entropy(z, p)", {"z": A23, "p": P23},
          lambda t, z, p: t.nn.functional.cross_entropy(z, p), hand_ce_probs),
    TCase("nll", "of-log-softmax", "nll(log_softmax(z, 1), y)", {"z": Z43, "y": Y4},
          lambda t, z, y: t.nn.functional.nll_loss(t.log_softmax(z, 1), y), hand_ce_classes),
    TCase("nll", "direct", "nll(lp, y)", {"lp": Z43, "y": Y4}, lambda t, lp, y: t.nn.functional.nll_loss(lp, y),
          lambda lp, y: {"lp": -onehot(y, 3) / 4}),
    # -- rearrangements ---------------------------------------------------------------------------
    TCase("reshape", "2x3", "reshape(x, 2, 3) * w", {"x": rn(6), "w": rn(3)}, lambda t, x, w: x.reshape(2, 3) * w),
    TCase("reshape", "minus-one", "reshape(X, -1)", {"X": A23}, lambda t, X: X.reshape(-1),
          lambda X: {"X": permutation(lambda i: i.reshape(-1), (2, 3))}),
    TCase("cat", "dim-0", "cat(a, b)", {"a": V3, "b": rn(2)}, lambda t, a, b: t.cat([a, b]),
          lambda a, b: {"a": np.eye(5, 3), "b": np.eye(5, 2, -3)}),
    TCase("cat", "dim-1", "cat(A, B.T, 1)", {"A": A23, "B": B32}, lambda t, A, B: t.cat([A, B.T], 1)),
    TCase("stack", "dim-0", "stack(a, b)", {"a": V3, "b": W3}, lambda t, a, b: t.stack([a, b])),
    TCase("stack", "dim-1", "stack(a, b, 1)", {"a": V3, "b": W3}, lambda t, a, b: t.stack([a, b], 1)),
]

INDEX_CASES = [
    TCase("index", "integer", "x[0] * y[1:3]", {"x": V3, "y": rn(4)}, lambda t, x, y: x[0] * y[1:3],
          lambda x, y: {"x": np.stack([y[1:3], np.zeros(2), np.zeros(2)], 1), "y": np.eye(2, 4, 1) * x[0]}),
    TCase("index", "column", "X[:, 1]", {"X": A23}, lambda t, X: X[:, 1],
          lambda X: {"X": permutation(lambda i: i[:, 1], (2, 3))}),
    TCase("index", "negative-and-step", "X[-1, ::2]", {"X": X34}, lambda t, X: X[-1, ::2],
          lambda X: {"X": permutation(lambda i: i[-1, ::2], (3, 4))}),
    TCase("index", "chained", "X[1][2:]", {"X": X34}, lambda t, X: X[1][2:]),
]

COVERED = {c.func for c in CASES}


def _report(case: TCase):
    if case.id not in _REPORTS:
        _REPORTS[case.id] = check_expression(case.expr, at=case.at).checks[0]
    return _REPORTS[case.id]


_REPORTS: dict = {}


def _torch_truth(case: TCase):
    """Value and Jacobians by torch.func.jacfwd of the plain-torch computation."""
    import torch

    names = [k for k, v in case.at.items() if v.dtype.kind == "f"]
    tensors = {k: torch.tensor(v) for k, v in case.at.items()}

    def f(*floats):
        return case.torch_fn(torch, **{**tensors, **dict(zip(names, floats))})

    jac = torch.func.jacfwd(f, argnums=tuple(range(len(names))))(*[tensors[k] for k in names])
    return f(*[tensors[k] for k in names]).numpy(), {k: j.numpy() for k, j in zip(names, jac)}


def _close(actual, expected, rtol, atol, what):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


@pytest.mark.parametrize("case", params(CASES + INDEX_CASES))
def test_against_torch_func(case):
    check = _report(case)
    assert check.passed, [d.message for d in check.diagnostics]
    value, jacs = _torch_truth(case)
    _close(check.value["torch"], value, 1e-12, 1e-12, "value (autograd)")
    _close(check.value["symbolic"], value, 1e-12, 1e-12, "value (symbolic)")
    assert [g.wrt for g in check.gradients] == list(jacs), "default wrt: the float variables, never class indices"
    for g in check.gradients:
        assert g.symbolic is not None, f"symbolic missing for d/d{g.wrt}: {[d.message for d in check.diagnostics]}"
        _close(g.autograd, jacs[g.wrt], 1e-10, 1e-12, f"autograd d/d{g.wrt}")
        _close(g.symbolic, jacs[g.wrt], 1e-10, 1e-12, f"symbolic d/d{g.wrt}")
        _close(g.finite_difference, jacs[g.wrt], 1e-7, 1e-9, f"finite differences d/d{g.wrt}")
    assert not (check.codes() - {"non_differentiable"}), [d.message for d in check.diagnostics]


@pytest.mark.parametrize("case", params([c for c in CASES + INDEX_CASES if c.hand is not None]))
def test_against_hand_formula(case):
    """The closed forms judge the truth above as well as the tool (all three columns)."""
    check = _report(case)
    expected = case.hand(**case.at)
    _, jacs = _torch_truth(case)
    for g in check.gradients:
        _close(jacs[g.wrt], expected[g.wrt], 1e-10, 1e-12, f"torch.func d/d{g.wrt} against the hand formula")
        for column in ("autograd", "symbolic", "finite_difference"):
            rtol = 1e-7 if column == "finite_difference" else 1e-10
            _close(getattr(g, column), expected[g.wrt], rtol, 1e-9, f"{column} d/d{g.wrt}")


def test_every_structured_function_has_a_case():
    from gradcheck_cli.expr.functions import FUNCTIONS

    structured = {n for n, s in FUNCTIONS.items() if s.kind == "structured" or s.axis}
    assert structured <= COVERED, sorted(structured - COVERED)


@pytest.mark.parametrize("case", params(CASES + INDEX_CASES))
def test_complex_step_only_where_every_function_is_analytic(case):
    """--fd complex runs the complex step through the structured functions the table calls
    analytic (torch has their complex forms), and falls back to richardson, saying so, for
    the others (softmax, max, var, the class losses, ...)."""
    from gradcheck_cli.engines.finite_diff import non_analytic_calls
    from gradcheck_cli.expr import parse

    check = check_expression(case.expr, at=case.at, fd="complex").checks[0]
    assert check.passed, [d.message for d in check.diagnostics]
    if non_analytic_calls(parse(case.expr)):
        assert check.extra["fd_scheme"] == "richardson" and "fd_fallback" in check.codes()
    else:
        assert check.extra["fd_scheme"] == "complex"
