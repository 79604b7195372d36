"""Full mode at scale (issue 16): the Jacobian's sparsity found at every size, and nothing
of size (outputs x inputs) built for a sparse Jacobian, so an elementwise op is checked
entry by entry at 1e5 elements with one backward call and ~2·log2(n) forward rows.

Truths: hand-derived derivatives (op_zoo's docstrings), the index arithmetic of the
Jacobians' patterns (a diagonal, a flip, rows of a softmax), and call counts.  No timing
is asserted here: benchmarks/bench_op_scale.py measures time and memory side by side.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import op_zoo
from gradcheck_cli.errors import UserInputError
from gradcheck_cli.op.api import check_op
from gradcheck_cli.op.batched import BatchedForward
from gradcheck_cli.op.full_entries import KnownRows, member
from gradcheck_cli.op.pattern import bit_pattern, find_pattern, move_threshold
from gradcheck_cli.op.runner import OpSpec


def only(report):
    (check,) = report.checks
    return check


def codes(report) -> set:
    return {d.code for c in report.checks for d in c.diagnostics}


def bits(n: int) -> int:
    return max(1, math.ceil(math.log2(n)))


# ---- the pattern survives a kernel whose last digit depends on where an element sits ---------

def sin_with_tail_jitter(x):
    """sin(x), except that in a batch of six rows or more the element at flat position
    5.5 n comes out one ulp off: what a vectorized kernel does to the elements its scalar
    tail (or another thread's share) computes.  Plain calls, and the probes batching is
    tested on (four rows), never see it.  (float() keeps it out of vmap: batched calls are
    the op's own broadcasting over a leading dimension.)"""
    if float(x.reshape(-1)[0]) > 1e300:
        return x
    y = torch.sin(x)
    if x.ndim > 1 and x.shape[0] >= 6:
        flat = y.reshape(-1)
        k = 5 * x.shape[-1] + x.shape[-1] // 2
        flat[k] = torch.nextafter(flat[k], torch.tensor(np.inf, dtype=y.dtype))
    return y


@pytest.mark.parametrize("n", [1000, 2000, 2001, 4096])
def test_one_ulp_of_kernel_jitter_does_not_lose_the_pattern(n):
    """Before: an output moved by one ulp in the row that did not perturb it counted as a
    second dependency, the index bits gave up, and n = 2000 needed 2,031 rows, not 28."""
    x = np.random.default_rng(n).standard_normal(n)
    spec = OpSpec(sin_with_tail_jitter, "sin", ("x",), {}, ("x",), ("x",))
    batch = BatchedForward(spec, {"x": x}, "x", "float64", "cpu", [(n,)], np.random.default_rng(0))
    assert batch.mode == "native"
    plus = 6e-6 * np.maximum(1.0, np.abs(x))
    threshold = move_threshold(np.sin(x), 2.0**-52, batch.noise)
    found = bit_pattern(batch, x, plus, threshold)
    assert found is not None
    cols, outs, rows = found
    np.testing.assert_array_equal(cols[np.argsort(outs)], np.arange(n))
    assert rows <= 2 * bits(n) + 2


@pytest.mark.parametrize("n", [1000, 2000, 3000, 4096])
def test_full_mode_of_an_elementwise_op_needs_index_bits_at_every_size(n):
    check = only(check_op(op_zoo.Swish, torch.randn(n, dtype=torch.float64, generator=torch.Generator()
                                                    .manual_seed(n)), mode="full"))
    assert check.passed
    calls = check.extra["calls"]
    assert calls["jacobian_backward"] == 1
    assert calls["forward_rows"] <= 2 * bits(n) + 1 + 4 + 1 + 1  # bits, their base row(s), one stencil
    assert check.gradients[0].details["method"]["fd_pattern"] == "bits"


# ---- a diagonal Jacobian of 1e5 elements: its entries, not a 1e10 array -------------------------

@pytest.fixture(scope="module")
def swish_1e5():
    x = torch.randn(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return x, only(check_op(op_zoo.Swish, x, mode="full"))


def test_full_mode_at_1e5_compares_every_entry_of_the_diagonal(swish_1e5):
    x, check = swish_1e5
    assert check.passed and check.extra["mode"] == "full"
    (g,) = check.gradients
    assert g.entries is not None and g.entries.shape == (100_000, 2)  # its entries: 1e5, not 1e10
    np.testing.assert_array_equal(g.entries[:, 0], g.entries[:, 1])  # the diagonal only
    xs = x.numpy()[g.entries[:, 1]]
    s = 1 / (1 + np.exp(-xs))
    truth = s * (1 + xs * (1 - s))  # d(x·s)/dx, derived in op_zoo.Swish
    np.testing.assert_allclose(g.autograd, truth, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g.finite_difference, truth, rtol=1e-7, atol=1e-9)
    assert g.details["method"]["entries_compared"] == 100_000
    assert check.extra["calls"]["jacobian_backward"] == 1
    assert check.extra["calls"]["forward_rows"] <= 2 * bits(100_000) + 3 + 4 + 1


def test_full_mode_at_1e5_writes_entries_json(swish_1e5):
    _, check = swish_1e5
    g = json.loads(json.dumps(check.to_dict()))["gradients"][0]
    assert g["format"] == "entries" and g["jacobian_shape"] == [100_000, 100_000]
    assert len(g["entries"]) == 100_000 and g["passed"]


def test_a_wrong_backward_at_1e5_is_caught_and_localized():
    x = torch.randn(50_000, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    report = check_op(op_zoo.SwishSignRegion, x, mode="full")
    check = only(report)
    assert not report.passed and {"gradient_mismatch", "wrong_sign"} <= codes(report)
    (g,) = check.gradients
    assert g.entries is not None and g.failed_elements == int((x < 0).sum())
    o, j = g.entries[g.worst_index[0]]
    assert o == j and x[j] < 0  # the worst entry is on the diagonal, where x < 0
    from gradcheck_cli.render.table import render_text

    assert "FAIL" in render_text(report)


def test_swapped_gradients_are_named_from_entries():
    a = torch.randn(600, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    b = torch.randn(600, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    report = check_op(op_zoo.MulSwapped, a, b, mode="full")
    assert not report.passed and "swapped_gradients" in codes(report)
    assert all(g.entries is not None for g in only(report).gradients)  # 600 x 600 each: entries


# ---- ops over short windows: strided index bits ------------------------------------------------

@pytest.mark.parametrize("op,shape,stride", [
    (op_zoo.SoftmaxFn, (512, 8), 8),  # each output depends on its row of 8
    (lambda x: torch.cumsum(x, -1), (300, 5), 8),
    (lambda x: torch.nn.functional.conv1d(x[None, None], torch.tensor([[[1.0, -2.0, 0.5]]],
                                                                        dtype=torch.float64))[0, 0], (5000,), 4),
], ids=["softmax-rows", "cumsum-rows", "conv1d"])
def test_window_ops_find_their_pattern_with_strided_bits(op, shape, stride):
    check = only(check_op(op, torch.randn(*shape, dtype=torch.float64), mode="full"))
    assert check.passed
    (g,) = check.gradients
    n = math.prod(shape)
    assert g.details["method"]["fd_pattern"] == f"bits/{stride}"
    assert check.extra["calls"]["forward_rows"] < n / 2  # not one row per element


class SoftmaxNoCentering(op_zoo.SoftmaxFn):
    """Bug: p·g, the row's sum(g·p) term forgotten."""

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        return p * g


def test_a_wrong_window_backward_is_caught_with_strided_bits():
    report = check_op(SoftmaxNoCentering, torch.randn(512, 8, dtype=torch.float64), mode="full")
    assert not report.passed and "gradient_mismatch" in codes(report)


def test_strided_bits_name_each_rows_dependencies():
    n, w = 2048, 8  # softmax over rows of 8: output o depends on o's row

    def softmax_rows(t):
        return torch.softmax(t.reshape(t.shape[:-1] + (-1, w)), -1).reshape(t.shape)

    x = np.random.default_rng(2).standard_normal(n)
    spec = OpSpec(softmax_rows, "softmax", ("x",), {}, ("x",), ("x",))
    batch = BatchedForward(spec, {"x": x}, "x", "float64", "cpu", [(n,)], np.random.default_rng(0))
    f0 = softmax_rows(torch.tensor(x)).numpy()
    cols, outs, rows, how = find_pattern(batch, x, 6e-6 * np.ones(n), move_threshold(f0, 2.0**-52, batch.noise),
                                         True, False)
    assert how == "bits/8"
    got = set(zip(outs.tolist(), cols.tolist()))
    assert got == {(o, j) for o in range(n) for j in range(o // w * w, o // w * w + w)}


def test_a_dense_jacobian_past_the_limit_is_refused_with_exit_2_not_computed():
    with pytest.raises(UserInputError, match="--mode fast"):
        check_op(lambda x: x + x.sum(), torch.randn(5000, dtype=torch.float64), mode="full")


def test_a_large_sparse_jacobian_uses_full_mode_past_the_dense_limit():
    """4.4e7 entries (past the 1.7e7 a dense Jacobian may have): 3e5 of them nonzero."""
    x, y = torch.randn(300, 1, dtype=torch.float64), torch.randn(1, 500, dtype=torch.float64)
    check = only(check_op(lambda a, b: a * b, x, y, mode="full"))
    assert check.passed
    gx, gy = check.gradients
    assert gx.entries.shape == (150_000, 2) and gy.entries.shape == (150_000, 2)
    np.testing.assert_allclose(gx.autograd, y.numpy().reshape(-1)[gx.entries[:, 0] % 500], rtol=1e-15)


# ---- the sparse bookkeeping ---------------------------------------------------------------------

def test_known_rows_replace_and_look_up():
    known = KnownRows.empty(5).with_rows(np.array([1, 3]), np.array([[0, 2.0, 0, 0, np.nan], [1.0, 0, 0, 0, 0]]))
    np.testing.assert_array_equal(known.lookup(np.array([1, 1, 3, 3]), np.array([1, 0, 0, 4])), [2.0, 0, 1.0, 0])
    assert np.isnan(known.lookup(np.array([1]), np.array([4])))[0]
    known = known.with_rows(np.array([1]), np.zeros((1, 5)))  # row 1 again: now all zero
    np.testing.assert_array_equal(known.lookup(np.array([1, 3]), np.array([1, 0])), [0.0, 1.0])
    rows, cols, vals = known.in_columns(0, 2)
    assert rows.tolist() == [3] and cols.tolist() == [0] and vals.tolist() == [1.0]


def test_member_is_isin():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 50, 200), rng.integers(0, 50, 30)
    np.testing.assert_array_equal(member(a, b), np.isin(a, b))
    assert member(np.zeros(0, dtype=int), b).shape == (0,)
    assert not member(a, np.zeros(0, dtype=int)).any()
