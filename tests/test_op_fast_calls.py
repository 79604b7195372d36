"""Fast mode where each extra check costs about one backward call (issue 16): the calls it
makes, counted, and the shortcuts that save them -- grouped sampled rows, grouped sampled
columns, the determinism check's gradient and batched repeat reused -- each falling back to
the one-at-a-time answer where the shortcut cannot be trusted, so every bug is still caught
and localized to exact entries.

Truths: the ops' hand-derived Jacobians (op_zoo), torch's own autograd one-hot rows, and
call counts.  Timings live in benchmarks/ (bench_op.py --fast), never here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import op_zoo
from gradcheck_cli.op import fast as ops_fast, fast_rows
from gradcheck_cli.op.api import check_op
from gradcheck_cli.op.batched import VJPMany
from gradcheck_cli.op.directions import Direction
from gradcheck_cli.op.forward_ad import Unsupported, _refuse_without_jvp  # noqa: F401  (the rule under test)
from gradcheck_cli.op.runner import OpSpec
from gradcheck_cli.op.targets import resolve


def only(report):
    (check,) = report.checks
    return check


def codes(report) -> set:
    return {d.code for c in report.checks for d in c.diagnostics}


@pytest.fixture
def streaming(monkeypatch):
    """Fast mode as at 1e6 elements, on small inputs: one grad_output and one point per call."""
    monkeypatch.setattr(ops_fast, "STREAM_ELEMENTS", 100)
    monkeypatch.setattr(fast_rows, "STREAM_ELEMENTS", 100)


def x64(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ---- the calls, counted ---------------------------------------------------------------------------

def test_streaming_fast_mode_call_budget(streaming):
    """At one call per grad_output and point: 3 projection backward calls (the first is the
    determinism check's), 2 grouped calls for the 8 sampled rows; determinism's 3 (the last
    a batched call of one), zero, undefined and strided grad_outputs; 9 noise points, 2
    projection directions x 4 points, and one group of sampled columns x 4 points."""
    check = only(check_op(op_zoo.Swish, x64(3000), mode="fast"))
    assert check.passed
    calls = check.extra["calls"]
    assert calls["jacobian_backward"] == 3 + 2
    assert calls["checks_backward"] == 3 + 1 + 1 + 1
    assert calls["forward_rows"] == 9 + 2 * 4 + 4
    (g,) = check.gradients
    assert g.details["method"]["column_groups"] == 1 and g.details["method"]["columns_alone"] == 0


def test_batched_fast_mode_batches_its_backward_calls():
    """Where the budget allows, the 3 projections' gradients come from one batched call and
    the 8 sampled rows from another."""
    check = only(check_op(op_zoo.Swish, x64(3000), mode="fast"))
    assert check.passed and check.extra["calls"]["jacobian_backward"] == 2


# ---- the sampled rows from grouped calls ----------------------------------------------------------

def test_grouped_sampled_rows_are_the_one_hot_rows(streaming):
    """The entries read off 2 grouped calls are torch's own one-hot rows, exactly."""
    x = x64(500)
    check = only(check_op(op_zoo.Swish, x, mode="fast"))
    (g,) = check.gradients
    xl = x.clone().requires_grad_(True)
    y = op_zoo.Swish.apply(xl)
    for (o, j), auto in zip(g.entries, g.autograd):
        e = torch.zeros_like(y)
        e[o] = 1.0
        (row,) = torch.autograd.grad(y, xl, e, retain_graph=True)
        assert auto == row[j].item()


def times_first(x):
    """y_i = x_i * x_0: every row also depends on x_0 (dy_i/dx_i = x_0, dy_i/dx_0 = x_i, and
    dy_0/dx_0 = 2 x_0), so column 0 is shared by every sampled row."""
    return x * x[..., :1]


def test_rows_sharing_a_column_are_computed_one_by_one(streaming):
    check = only(check_op(times_first, x64(400), mode="fast"))
    assert check.passed
    assert check.extra["calls"]["jacobian_backward"] == 3 + 2 + 8  # grouped calls, then one-hot rows


class TimesFirstWrong(torch.autograd.Function):
    """times_first with the shared column's term forgotten: dy/dx_0 only on the diagonal."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x[:1]

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x[:1]


def test_a_missed_shared_column_is_caught(streaming):
    report = check_op(TimesFirstWrong, x64(400), mode="fast")
    assert not report.passed and "gradient_mismatch" in codes(report)


@pytest.mark.parametrize("dtype,grouped", [(torch.float32, 3), (torch.bfloat16, None)], ids=["float32", "bfloat16"])
def test_low_precision_groups_rows_with_more_calls_or_not_at_all(streaming, dtype, grouped):
    check = only(check_op(op_zoo.Swish, x64(400).to(dtype), mode="fast"))
    assert check.passed
    assert check.extra["calls"]["jacobian_backward"] == 3 + (grouped or 8)


# ---- the sampled columns in groups ----------------------------------------------------------------

class ShiftAdd(torch.autograd.Function):
    """y_i = x_i^2 + 0.3 x_{i-1} (cyclic): dy_i/dx_i = 2 x_i, dy_i/dx_{i-1} = 0.3."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x + 0.3 * torch.roll(x, 1)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g + 0.3 * torch.roll(g, -1)


class ShiftAddMissing(ShiftAdd):
    """Bug: the shifted term's gradient forgotten."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


@pytest.fixture
def every_column(monkeypatch, streaming):
    """Every column sampled (no remainder): the grouped columns alone must find the bug."""
    monkeypatch.setattr(fast_rows, "EXTRA_COLUMNS", 10_000)


def test_a_correct_op_passes_with_its_columns_grouped(every_column):
    check = only(check_op(ShiftAdd, x64(24), mode="fast"))
    assert check.passed
    (g,) = check.gradients
    assert g.details["method"]["column_groups"] >= 2  # a row touches two columns: never in one group
    assert g.details["method"]["columns_alone"] < g.details["method"]["columns_differenced"]


def test_a_dependency_autograd_misses_is_localized_after_the_group_is_redone(every_column):
    x = x64(24)
    report = check_op(ShiftAddMissing, x, mode="fast")
    check = only(report)
    assert not report.passed and "gradient_mismatch" in codes(report)
    (g,) = check.gradients
    assert g.details["method"]["columns_alone"] > 0  # the failing group, one column at a time
    failing = [tuple(int(v) for v in g.entries[k]) for k in g.failing]
    assert failing and all(j == (o - 1) % 24 for o, j in failing)  # exactly the forgotten entries
    position = {tuple(e): k for k, e in enumerate(g.entries.tolist())}
    for o, j in failing:
        k = position[(o, j)]
        assert g.autograd[k] == 0.0 and g.finite_difference[k] == pytest.approx(0.3, rel=1e-6)


# ---- determinism's batched repeat checks batching ------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["batched", "streaming"])
def test_a_backward_that_differs_under_vmap_is_reported_in_fast_mode(monkeypatch, stream):
    if stream:
        monkeypatch.setattr(ops_fast, "STREAM_ELEMENTS", 100)
        monkeypatch.setattr(fast_rows, "STREAM_ELEMENTS", 100)
    plain = VJPMany._batched
    monkeypatch.setattr(VJPMany, "_batched", lambda self, block: plain(self, block) * 1.01)
    check = only(check_op(op_zoo.Swish, x64(400), mode="fast"))
    assert not check.passed and "batched_grad_mismatch" in check.codes()
    assert "nondeterministic" not in check.codes()
    assert all(g.passed for g in check.gradients)  # the Jacobian was checked with plain calls


class NondeterministicSwish(op_zoo.Swish):
    """A backward that adds fresh noise on every call (an atomicAdd race, exaggerated)."""

    @staticmethod
    def backward(ctx, g):
        return op_zoo.Swish.backward(ctx, g) * (1 + 1e-4 * torch.rand(()).item())


def test_nondeterminism_is_not_mistaken_for_a_batching_fault():
    report = check_op(NondeterministicSwish, x64(400), mode="fast")
    assert "nondeterministic" in codes(report) and "batched_grad_mismatch" not in codes(report)


# ---- forward AD: a Function without jvp is not run with dual tensors ------------------------------

def test_a_function_without_jvp_is_refused_before_any_dual_tensor():
    class WithJvp(op_zoo.Swish):
        @staticmethod
        def jvp(ctx, t):
            return t

    for obj, refused in [(op_zoo.Swish, True), (WithJvp, False), (op_zoo.swish_plain, False)]:
        spec = OpSpec(resolve(obj, "op").fn, "op", ("x",), {}, ("x",), ("x",), target=resolve(obj, "op"))
        if refused:
            with pytest.raises(Unsupported, match="jvp function"):
                _refuse_without_jvp(spec)
        else:
            _refuse_without_jvp(spec)
    check = only(check_op(op_zoo.Swish, x64(50), mode="fast"))
    notes = [d.message for d in check.diagnostics if d.code == "forward_ad_unsupported"]
    assert notes == ["JVPs not checked: the op has no forward-mode AD (a torch.autograd.Function without a jvp "
                     "staticmethod)"]


# ---- uniform directions -------------------------------------------------------------------------

def test_a_uniform_direction_is_drawn_again_exactly_and_advances_like_one_draw():
    n = 200_003
    keep = np.arange(n) % 3 != 0
    rng, ref = np.random.default_rng(7), np.random.default_rng(7)
    d = Direction(rng, n, keep, uniform=True)
    first = d.draw(rng)
    expected = np.zeros(n)
    expected[keep] = ref.random(int(keep.sum())) * 2 - 1
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(d.again(), expected)
    assert rng.random() == ref.random()
    assert -1 <= first.min() and first.max() < 1


# ---- the projections' directions are independent draws -------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["batched", "streaming"])
def test_each_projection_has_its_own_grad_output(monkeypatch, stream):
    """A Direction only saves its generator's state: each projection's v must be drawn past
    the one before it, else projections 2-4 share one v (and the u drawn next repeats it:
    for an elementwise op the projection is sum J_ii u_i^2).  The four v are pairwise
    different, none is a u, the call counts stay, and a wrong backward is still caught."""
    if stream:
        monkeypatch.setattr(ops_fast, "STREAM_ELEMENTS", 100)
        monkeypatch.setattr(fast_rows, "STREAM_ELEMENTS", 100)
    made = []
    real = ops_fast.Projection
    monkeypatch.setattr(ops_fast, "Projection", lambda *args: made.append(real(*args)) or made[-1])
    check = only(check_op(op_zoo.Swish, x64(3000), mode="fast"))
    assert check.passed and len(made) == ops_fast.PROJECTIONS == 4
    vs = [p.v.again() for p in made]
    us = [d.again() for p in made for d in p.u.values()]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(vs[i], vs[j]), (i, j)
        assert not any(np.array_equal(vs[i], u[:vs[i].size]) for u in us), i
    (g,) = check.gradients
    assert len(set(g.details["projections"]["autograd"].tolist())) == 4
    assert check.extra["calls"]["jacobian_backward"] == (3 + 2 if stream else 2)
    made.clear()
    bad = only(check_op(op_zoo.SwishSubtle, x64(3000), mode="fast"))
    assert not bad.passed and {"projection_mismatch", "scale_error"} <= set(bad.codes())
    assert bad.gradients[0].details["projections"]["passed"] is False
