"""`gradcheck op` core (gradcheck_cli.ops*): the zoo of buggy ops is caught and named,
correct ops pass in float64 and float32, and the numbers are right.

Independent truths: hand-derived derivatives (written next to each op in op_zoo.py),
torch's own autograd on torch's own ops (torch.autograd.functional.jacobian of the
same math), and torch.autograd.gradcheck itself where the point is that it misses a bug.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import op_zoo
from gradcheck_cli import assert_op, check_op
from gradcheck_cli.errors import UserInputError
from gradcheck_cli.op.api import check_op_target
from gradcheck_cli.op.jacobian import combine, greedy_colors, step_sizes
from gradcheck_cli.op.loading import parse_kw
from gradcheck_cli.render.table import render_text

ZOO = str(Path(__file__).with_name("op_zoo.py"))
FAILING_CODES = {"gradient_mismatch", "scale_error", "wrong_sign", "swapped_gradients", "broadcast_reduction",
                 "missing_gradient", "nondeterministic", "input_mutated", "double_backward_mismatch", "nonfinite",
                 "noncontiguous_grad_output", "forward_mismatch", "op_error", "zero_grad_output",
                 "grad_output_ignored", "vjp_mismatch", "one_hot_mismatch", "projection_mismatch", "wrong_shape",
                 "bad_output", "gradient_leak", "double_backward_error"}


def zoo(attr: str) -> str:
    return f"{ZOO}:{attr}"


def codes(report) -> set:
    return {d.code for d in report.checks[0].diagnostics}


def only(report):
    assert len(report.checks) == 1
    return report.checks[0]


# ---- the acceptance zoo: every bug caught and named ------------------------------------------

@pytest.mark.parametrize("key", list(op_zoo.BUGS), ids=list(op_zoo.BUGS))
def test_bug_is_caught_and_named(key):
    op, at, extra, code = op_zoo.BUGS[key]
    report = check_op_target(zoo(op.__name__), at, [], **extra)
    check = only(report)
    assert not check.passed and report.exit_code == 1
    assert code in codes(report), render_text(report)
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON even with nan/inf inside


@pytest.mark.parametrize("key", ["scale", "missing_product_rule", "sign_region", "subtle_2e-5", "swapped",
                                 "mean_broadcast"])
def test_mismatch_is_localized_with_both_values(key):
    op, at, extra, _ = op_zoo.BUGS[key]
    check = only(check_op_target(zoo(op.__name__), at, [], **extra))
    bad = [g for g in check.gradients if not g.passed]
    assert bad
    for g in bad:
        assert g.failed_elements > 0 and g.worst_index is not None
        a = np.asarray(g.autograd)[g.worst_index]
        r = np.asarray(g.finite_difference)[g.worst_index]
        assert abs(a - r) > 1e-6 * max(1.0, abs(r))  # the worst entry really is wrong
    mismatch = [d.message for d in check.diagnostics if d.code == "gradient_mismatch"]
    assert mismatch and "autograd" in mismatch[0] and "vs finite differences" in mismatch[0]


def test_single_wrong_entry_is_located_exactly():
    class OneBadEntry(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            d = torch.cos(x)
            d[2, 3] = d[2, 3] * 1.5  # only element (2, 3) is wrong
            return g * d

    check = only(check_op(OneBadEntry, torch.randn(4, 5, dtype=torch.float64)))
    (g,) = check.gradients
    assert not g.passed and g.failed_elements == 1
    assert tuple(g.worst_index) == (2, 3, 2, 3)
    assert g.label_for(g.worst_index) == "out[2, 3] / x0[2, 3]"
    x = np.asarray(check.point["x0"])
    assert np.asarray(g.finite_difference)[2, 3, 2, 3] == pytest.approx(math.cos(x[2, 3]), rel=1e-9)
    assert np.asarray(g.autograd)[2, 3, 2, 3] == pytest.approx(1.5 * math.cos(x[2, 3]), rel=1e-12)
    assert "out[2, 3] / x0[2, 3]" in render_text(only_report(check))


def only_report(check):
    from gradcheck_cli.report import Report

    return Report((check,))


# ---- correct ops pass: float64 and float32 ---------------------------------------------------

GOOD = [
    ("swish", "Swish", [("x", "randn(4, 5)")], [], {"reference": "x*sigmoid(x)"}),
    ("large_magnitude", "BigCube", [("x", "[[100, -250.5, 31], [0.5, -77, 1000]]")], [], {"reference": "1000*x**3"}),
    ("two_outputs", "PolarPair", [("r", "rand(3, 4)"), ("t", "randn(3, 4)")], [], {"reference": "r*cos(t); r*sin(t)"}),
    ("broadcasting", "ScaleShift", [("x", "randn(4, 5)"), ("w", "randn(5)"), ("b", "randn(1, 5)")], [],
     {"reference": "x*w+b"}),
    ("matmul", "MatMul", [("x", "randn(6, 7)"), ("w", "randn(7, 3)")], [], {}),
    ("softmax_function", "SoftmaxFn", [("x", "randn(3, 5)")], [], {}),
    ("plain_composite", "swish_plain", [("x", "randn(7)")], [], {"reference": "x*sigmoid(x)"}),
    ("saturating_large", "big_tanh", [("x", "[0.05, -5.59, -1.92, 2.78, 5.78, 8.0, -0.3]")], [],
     {"reference": "1000000*tanh(x)"}),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", GOOD, ids=[c[0] for c in GOOD])
def test_correct_ops_pass(case, dtype):
    _, attr, at, kw, extra = case
    report = check_op_target(zoo(attr), at, kw, dtype=dtype, **extra)
    assert report.passed, render_text(report)
    assert not codes(report) & FAILING_CODES


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("target,kw", [
    ("torch.nn.functional:softmax", [("dim", "-1")]),
    ("torch.nn.functional:log_softmax", [("dim", "0")]),
    ("torch.nn.functional:layer_norm", [("normalized_shape", "[4]")]),
    ("torch:sort", []),  # values and (integer, ignored) indices: a permutation Jacobian
], ids=["softmax", "log_softmax", "layer_norm", "sort"])
def test_torch_functions_pass(target, kw, dtype):
    report = check_op_target(target, [("x", "randn(3, 4)")], kw, dtype=dtype)
    assert report.passed, render_text(report)


def test_numbers_agree_with_torch_autograd_on_the_same_math():
    """The finite-difference and autograd Jacobians reported for PolarPair equal torch's
    own autograd Jacobian of r*cos(t), r*sin(t) (built from torch ops, not the Function)."""
    check = only(check_op_target(zoo("PolarPair"), [("r", "rand(2, 3)"), ("t", "randn(2, 3)")], []))
    r = torch.tensor(np.asarray(check.point["r"]))
    t = torch.tensor(np.asarray(check.point["t"]))
    jr, jt = torch.autograd.functional.jacobian(lambda r, t: torch.stack([r * torch.cos(t), r * torch.sin(t)]),
                                                (r, t))
    gr, gt = check.gradients
    assert gr.output_shape == (2, 2, 3) and gr.shape == (2, 2, 3, 2, 3)  # two outputs of one shape: stacked
    np.testing.assert_allclose(np.asarray(gr.finite_difference), jr.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(gt.finite_difference), jt.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(gt.autograd), jt.numpy(), rtol=1e-13, atol=1e-15)
    assert gt.label_for((1, 0, 2, 0, 2)) == "out1[0, 2] / t[0, 2]"


def test_reference_gives_exact_symbolic_jacobian():
    check = only(check_op_target(zoo("Swish"), [("x", "randn(5)")], [], reference="x*sigmoid(x)"))
    (g,) = check.gradients
    x = np.asarray(check.point["x"])
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(np.diag(np.asarray(g.symbolic)), s * (1 + x * (1 - s)), rtol=1e-14)
    assert g.reference == "symbolic"
    assert check.extra["forward"]["passed"]
    np.testing.assert_allclose(np.asarray(check.value["reference"]), x * s, rtol=1e-14)


# ---- accuracy: subtle bugs in float64, no false alarms -----------------------------------------

def test_subtle_scale_fails_here_while_torch_gradcheck_passes_it():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op_zoo.SwishSubtle.apply, (x,))  # rtol=1e-3 lets 2e-5 through
    report = check_op(op_zoo.SwishSubtle, x)
    assert not report.passed
    msg = [d.message for d in report.checks[0].diagnostics if d.code == "scale_error"][0]
    assert "1.00002x" in msg


def test_finite_difference_noise_is_far_below_the_bug():
    """FD error against the hand-derived derivative ~1e-10, its own estimate of the same
    order, and both far below the 2e-5 the gate must catch."""
    check = only(check_op(op_zoo.Swish, torch.randn(50, dtype=torch.float64)))
    (g,) = check.gradients
    x = np.asarray(check.point["x0"])
    s = 1 / (1 + np.exp(-x))
    exact = s * (1 + x * (1 - s))
    fd = np.diag(np.asarray(g.finite_difference))
    true_err = np.abs(fd - exact)
    estimate = np.diag(np.asarray(g.fd_error_estimate))
    assert true_err.max() < 1e-9
    assert np.all(true_err <= 3 * estimate + 1e-15)  # the estimate bounds the error (with the safety factor)
    assert estimate.max() < 1e-8


def test_noncontiguous_bug_is_a_blind_spot_of_torch_gradcheck():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op_zoo.SwishAssumesContiguous.apply, (x,))
    report = check_op(op_zoo.SwishAssumesContiguous, x)
    assert "noncontiguous_grad_output" in codes(report)


def test_rounding_level_nondeterminism_passes_with_a_note():
    check = only(check_op_target(zoo("PermutedSumX"), [("x", "randn(60, 3)"), ("w", "randn(3)")], []))
    assert check.passed
    assert "nondeterministic_within_tolerance" in codes(only_report(check))
    assert check.extra["determinism"]["max_spread"]["w"] > 0


def test_kink_within_a_step_is_not_failed():
    report = check_op(op_zoo.relu_plain, torch.tensor([1e-7, -2.0, 3.0, -1e-8], dtype=torch.float64))
    assert report.passed, render_text(report)
    assert "non_differentiable" in codes(report)


# ---- low precision -----------------------------------------------------------------------------

def test_overflow_fails_in_float32_and_passes_in_float64():
    at = [("x", "[45.5, 47.0, 50.0]")]
    assert check_op_target(zoo("ExpOverflow"), at, [], dtype="float64").passed
    report = check_op_target(zoo("ExpOverflow"), at, [], dtype="float32")
    assert not report.passed and "nonfinite" in codes(report)
    msg = [d.message for d in report.checks[0].diagnostics if d.code == "nonfinite"][0]
    assert "overflows in float32" in msg


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precisions(dtype):
    good = check_op_target(zoo("Swish"), [("x", "randn(3, 4)")], [], dtype=dtype, reference="x*sigmoid(x)")
    assert good.passed, render_text(good)
    bad = check_op_target(zoo("SwishScaled"), [("x", "randn(3, 4)")], [], dtype=dtype)
    assert not bad.passed and "scale_error" in codes(bad)


class Float32Only(torch.autograd.Function):
    """A kernel that only exists for float32: the float64 re-run is impossible."""

    @staticmethod
    def forward(ctx, x):
        if x.dtype != torch.float32:
            raise TypeError(f"kernel compiled for float32 only, got {x.dtype}")
        ctx.save_for_backward(x)
        return torch.sin(x) * 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * torch.cos(x) * SCALE["k"]


SCALE = {"k": 1.0}


@pytest.mark.parametrize("k,passes", [(1.0, True), (2.0, False)], ids=["correct", "scale_bug"])
def test_op_without_float64_uses_the_reference(k, passes):
    SCALE["k"] = k
    x = torch.randn(3, 4, dtype=torch.float32)
    report = check_op(Float32Only, x, reference="3*sin(x0)")
    assert report.passed is passes, render_text(report)
    assert "reference_low_precision" in codes(report)
    assert report.checks[0].extra["fd_dtype"] == "float32"


def test_op_without_float64_and_without_reference_still_checks():
    SCALE["k"] = 1.0
    report = check_op(Float32Only, torch.randn(6, dtype=torch.float32))
    assert report.passed, render_text(report)
    SCALE["k"] = 1.5
    assert not check_op(Float32Only, torch.randn(6, dtype=torch.float32)).passed
    SCALE["k"] = 1.0


# ---- speed structure: sparsity is used -----------------------------------------------------------

def test_elementwise_needs_one_backward_call_and_few_forward_rows():
    check = only(check_op(op_zoo.Swish, torch.randn(300, dtype=torch.float64), mode="full"))
    assert check.passed
    assert check.extra["calls"]["jacobian_backward"] == 1
    # index bits (2 log2 n) and one central stencil (4 rows), each with the unperturbed point
    assert check.extra["calls"]["forward_rows"] == (2 * 9 + 1) + (4 + 1)
    assert check.gradients[0].details["method"]["fd_groups"] == 1


@pytest.mark.parametrize("fn,expected", [
    (lambda x: torch.flip(x, [0]), lambda n: n - 1 - np.arange(n)),  # a permutation
    (lambda x: torch.sin(x), lambda n: np.arange(n)),  # elementwise
    (lambda x: torch.cumsum(x, 0), None),  # each output depends on several: falls back
], ids=["flip", "sin", "cumsum"])
def test_bit_pattern_names_the_single_dependency(fn, expected):
    from gradcheck_cli.op.jacobian import bit_pattern
    from gradcheck_cli.op.batched import BatchedForward
    from gradcheck_cli.op.runner import OpSpec

    n = 37
    x = np.random.default_rng(1).standard_normal(n)
    spec = OpSpec(fn, "fn", ("x",), {}, ("x",), ("x",))
    batch = BatchedForward(spec, {"x": x}, "x", "float64", "cpu", [(n,)], np.random.default_rng(0))
    found = bit_pattern(batch, x, np.full(n, 1e-3), 4 * batch.noise)
    if expected is None:
        assert found is None
    else:
        cols, outs, rows = found
        assert rows == 2 * 6 + 1
        np.testing.assert_array_equal(cols[np.argsort(outs)], expected(n))


def test_dense_op_groups_rows_and_columns():
    check = only(check_op(op_zoo.MatMul, torch.randn(8, 6, dtype=torch.float64), torch.randn(6, 5,
                                                                                          dtype=torch.float64)))
    assert check.passed
    gx, gw = check.gradients
    assert gx.details["method"]["fd_groups"] == 6  # x[i, k] touches row i: one group per k
    assert gw.details["method"]["fd_groups"] == 6  # W[k, j] touches column j: one group per k
    assert gx.details["method"]["backward_groups"] == 8  # rows (i, j) sharing neither i nor j go together


class SinBatchSensitive(torch.autograd.Function):
    """A correct op (sin, backward cos) that, handed a batch of more than 4 rows, silently
    computes something else: batched evaluation must not be trusted blindly."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x) * (2.0 if x.ndim > 1 and x.shape[0] > 4 else 1.0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


def test_batched_finite_differences_are_rechecked_before_failing():
    check = only(check_op(SinBatchSensitive, torch.randn(40, dtype=torch.float64)))
    assert check.passed, render_text(only_report(check))
    assert check.extra["fd_batching"]["x0"] == "loop"


# ---- fast mode -----------------------------------------------------------------------------------

def test_auto_picks_fast_for_large_inputs_and_passes_a_correct_op():
    check = only(check_op(op_zoo.Swish, torch.randn(60, 80, dtype=torch.float64)))
    assert check.extra["mode"] == "fast" and check.passed
    (g,) = check.gradients
    assert g.entries is not None and g.shape == (g.entries.shape[0],)
    assert g.details["projections"]["passed"]
    doc = g.to_dict()
    assert doc["format"] == "entries" and len(doc["entries"]) == len(doc["autograd"])


@pytest.mark.parametrize("op,code", [
    (op_zoo.SwishScaled, "scale_error"), (op_zoo.SwishSignRegion, "wrong_sign"),
    (op_zoo.SwishIgnoresGrad, "grad_output_ignored"), (op_zoo.SwishAssumesContiguous, "noncontiguous_grad_output"),
    (op_zoo.SwishSubtle, "scale_error"),
], ids=["scale", "sign", "ignored", "noncontiguous", "subtle"])
def test_fast_mode_catches(op, code):
    report = check_op(op, torch.randn(40, 60, dtype=torch.float64), mode="fast")
    assert not report.passed and code in codes(report), render_text(report)


def test_fast_mode_is_reproducible_with_its_seed():
    x = torch.randn(30, 40, dtype=torch.float64)
    a = only(check_op(op_zoo.Swish, x, mode="fast", seed=3)).gradients[0]
    b = only(check_op(op_zoo.Swish, x, mode="fast", seed=3)).gradients[0]
    assert np.array_equal(a.entries, b.entries)


def test_fast_mode_remainder_catches_a_leak_outside_the_sampled_columns():
    class Leaky(op_zoo.Swish):
        """Correct on the diagonal, plus a gradient on x[0] from every output."""

        @staticmethod
        def backward(ctx, g):
            d = op_zoo.Swish.backward(ctx, g).clone()
            d.view(-1)[0] += 0.01 * g.sum()
            return d

    report = check_op(Leaky, torch.randn(50, 50, dtype=torch.float64), mode="fast")
    assert not report.passed


# ---- order 2 -------------------------------------------------------------------------------------

def test_order2_double_backward_matches_hand_derived_second_derivative():
    check = only(check_op_target(zoo("SinSquared"), [("x", "randn(2, 3)")], [], order=2))
    assert check.passed, render_text(only_report(check))
    h = check.extra["hessian"]
    ad, fd = np.asarray(h["autograd"]), np.asarray(h["finite_difference"])
    assert ad.shape == (6, 6) and np.allclose(ad, np.diag(np.diag(ad)))  # elementwise: diagonal
    np.testing.assert_allclose(fd, ad, rtol=1e-6, atol=1e-8)
    assert h["labels"][0] == "x[0, 0]"


def test_order2_reports_a_once_differentiable_backward():
    from torch.autograd.function import once_differentiable

    class Once(op_zoo.Swish):
        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            return op_zoo.Swish.backward(ctx, g)

    x = torch.randn(4, dtype=torch.float64)
    assert check_op(Once, x).passed
    report = check_op(Once, x, order=2)
    assert not report.passed and "double_backward_mismatch" in codes(report)
    msg = [d.message for d in report.checks[0].diagnostics if d.code == "double_backward_mismatch"][0]
    assert "does not require grad" in msg


# ---- mutation, errors, outputs -------------------------------------------------------------------

def test_plain_function_mutating_its_input():
    def bump(x):
        x.add_(1.0)
        return x * 2

    report = check_op(bump, torch.randn(3, dtype=torch.float64))
    assert not report.passed and "input_mutated" in codes(report)


def test_backward_mutating_a_saved_input():
    class Clobber(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            x.data.zero_()  # scribbles over the caller's tensor
            return g * 3

    report = check_op(Clobber, torch.randn(3, dtype=torch.float64))
    assert not report.passed and "input_mutated" in codes(report)
    assert any("backward" in d.message for d in report.checks[0].diagnostics if d.code == "input_mutated")


def test_op_error_message_is_the_ops_own_with_location():
    report = check_op_target(zoo("RaisesInBackward"), [("x", "randn(3)")], [])
    msg = [d.message for d in report.checks[0].diagnostics if d.code == "op_error"][0]
    assert "ValueError: backward of swish is not implemented for this layout" in msg
    assert "op_zoo.py:" in msg and "Traceback" not in msg


def test_an_op_that_raised_shows_its_message_and_a_not_run_row():
    """The contract: one gradients entry per differentiable input, even when the op raised;
    its numbers are null and the diagnostic says why."""
    report = check_op_target(zoo("RaisesInForward"), [("x", "randn(3)")], [])
    text = render_text(report)
    assert "no kernel image is available" in text and "not run" in text
    (entry,) = report.to_dict()["checks"][0]["gradients"]
    assert entry["wrt"] == "x" and entry["autograd"] is None and entry["passed"] is False
    assert report.to_dict()["checks"][0]["value"] == {"torch": None, "symbolic": None}


def test_op_raising_only_near_the_point():
    def picky(x):
        if float(x.detach().reshape(-1)[0]) != 0.5:
            raise ValueError("only defined at 0.5")
        return x * 2

    report = check_op(picky, torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert not report.passed and "op_error" in codes(report)


def test_outputs_of_different_shapes_are_flattened():
    def both(x):
        return x.sum(), torch.sin(x)

    check = only(check_op(both, torch.randn(2, 3, dtype=torch.float64)))
    assert check.passed
    (g,) = check.gradients
    assert g.output_shape == (7,)  # 1 + 6, concatenated
    assert g.label_for((0, 1, 2)) == "out0 / x0[1, 2]"
    assert g.label_for((3, 0, 2)) == "out1[0, 2] / x0[0, 2]"
    np.testing.assert_allclose(np.asarray(g.autograd)[0], np.ones((2, 3)))


def test_missing_gradient_for_an_unused_input_is_not_a_failure():
    def first(a, b):
        return a * 2

    report = check_op(first, torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    assert report.passed and "no_dependence" in codes(report)


# ---- Python API ----------------------------------------------------------------------------------

def test_api_requires_grad_selects_inputs_and_names():
    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64)
    check = only(check_op(op_zoo.MulMissingGrad, a, b, names=["a", "b"]))  # b not differentiated: no bug seen
    assert check.passed and [g.wrt for g in check.gradients] == ["a"]
    check = only(check_op(op_zoo.MulMissingGrad, a, b, names=["a", "b"], wrt=["a", "b"]))
    assert not check.passed and "missing_gradient" in codes(only_report(check))


def test_api_passes_other_arguments_and_kwargs_as_is():
    def scaled_power(x, k, *, scale):
        assert isinstance(k, int)
        return scale * x**k

    check = only(check_op(scaled_power, torch.rand(4, dtype=torch.float64) + 0.5, 3, kwargs={"scale": 2.0},
                          reference="2*x0**3"))
    assert check.passed, render_text(only_report(check))


def test_wrt_checks_only_the_named_inputs():
    at = [("x", "randn(4, 5)"), ("w", "randn(5)"), ("b", "randn(1, 5)")]
    check = only(check_op_target(zoo("ScaleShiftMean"), at, [], wrt=["x"]))
    assert check.passed and [g.wrt for g in check.gradients] == ["x"]  # the bug is in w and b only
    check = only(check_op_target(zoo("ScaleShiftMean"), at, [], wrt=["b"]))
    assert not check.passed and [g.wrt for g in check.gradients] == ["b"]


def test_api_dtype_follows_the_tensors():
    check = only(check_op(op_zoo.Swish, torch.randn(4, dtype=torch.float32)))
    assert check.dtype == "float32" and check.passed


def test_assert_op_raises_with_the_table():
    with pytest.raises(AssertionError, match="scale_error"):
        assert_op(op_zoo.SwishScaled, torch.randn(3, dtype=torch.float64))
    assert_op(op_zoo.Swish, torch.randn(3, dtype=torch.float64))


def test_points_checks_more_points_and_finds_a_regional_bug():
    class WrongAbove2(op_zoo.Swish):
        @staticmethod
        def backward(ctx, g):
            x, _ = ctx.saved_tensors
            return op_zoo.Swish.backward(ctx, g) * torch.where(x > 2.0, 1.1, 1.0).to(x.dtype)

    at = [("x", "[0.1, -0.5, 1.0]")]
    assert check_op_target(zoo("Swish"), at, [], points=3).checks[0].extra["points_checked"] == 4
    # the given point is below 2; perturbed points (scale 0.5) reach above it sometimes
    with_points = check_op(WrongAbove2, torch.tensor([1.9, 1.8, 1.95], dtype=torch.float64), points=6)
    assert not with_points.passed


# ---- inputs the user got wrong: exit 2 ----------------------------------------------------------

@pytest.mark.parametrize("target,at,kw,message", [
    ("no_such_file.py:X", [("x", "1")], [], "not found"),
    (f"{ZOO}:NoSuchOp", [("x", "1")], [], "has no attribute 'NoSuchOp'"),
    (f"{ZOO}:torch", [("x", "1")], [], "not callable"),
    ("no_such_module_xyz:f", [("x", "1")], [], "cannot import module"),
    ("torch.nn.functional:softmaxx", [("x", "1")], [], "did you mean softmax"),
    ("just_a_name", [("x", "1")], [], "expected FILE.py:ATTR"),
    ("torch.nn:Linear", [("x", "1")], [], "missing a required argument: .in_features.*--init gives"),
    ("torch:sin", [], [], "needs the op's inputs"),
    ("torch:sin", [("x", "1")], [("x", "2")], "both as --at"),
], ids=["missing-file", "missing-attr", "not-callable", "no-module", "typo", "no-colon", "module-class-without-init",
        "no-inputs", "kw-clash"])
def test_user_errors(target, at, kw, message):
    with pytest.raises(UserInputError, match=message):
        check_op_target(target, at, kw)


def test_import_errors_carry_the_modules_message(tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('needs the triton package')\n")
    with pytest.raises(UserInputError, match="needs the triton package"):
        check_op_target("broken.py:f", [("x", "1")], [], base_dir=str(tmp_path))


def test_file_targets_resolve_against_base_dir_and_import_siblings(tmp_path):
    (tmp_path / "helpers.py").write_text("import torch\ndef double(x):\n    return 2 * x\n")
    (tmp_path / "myop.py").write_text("import helpers\nclass Ops:\n    double = staticmethod(helpers.double)\n")
    report = check_op_target("myop.py:Ops.double", [("x", "randn(3)")], [], base_dir=str(tmp_path),
                             reference="2*x", name="doubled")
    assert report.passed and report.checks[0].name == "doubled"


@pytest.mark.parametrize("text,value", [
    ("-1", -1), ("2.5", 2.5), ("1e-3", 1e-3), ("true", True), ("False", False), ("none", None),
    ("'mean'", "mean"), ('"a b"', "a b"), ("tanh", "tanh"), ("[0, 1]", [0, 1]), ("[0.5, -2]", [0.5, -2.0]),
    ("[]", []),
], ids=lambda v: repr(v))
def test_kw_values(text, value):
    got = parse_kw("k", text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["(1", "[1, a]", "[1, 2", "a b"])
def test_kw_rejects(text):
    with pytest.raises(UserInputError):
        parse_kw("k", text)


def test_reference_errors_are_user_errors():
    with pytest.raises(UserInputError, match="not an input"):
        check_op_target("torch:sin", [("x", "randn(3)")], [], reference="sin(y)")
    with pytest.raises(UserInputError):
        check_op_target("torch:sin", [("x", "randn(3)")], [], reference="sin(x")


def test_reference_count_must_match_outputs():
    report = check_op_target(zoo("PolarPair"), [("r", "rand(3)"), ("t", "randn(3)")], [], reference="r*cos(t)")
    assert "forward_mismatch" in codes(report) and "';'" in render_text(report)


# ---- the finite-difference machinery -------------------------------------------------------------

def _conflict_free(colors, item, key):
    seen = {}
    for i, k in zip(item.tolist(), key.tolist()):
        if (k, colors[i]) in seen and seen[(k, colors[i])] != i:
            return False
        seen[(k, colors[i])] = i
    return True


@pytest.mark.parametrize("n_items,pairs,max_colors", [
    (5, [(i, i) for i in range(5)], 1),  # diagonal: one colour
    (4, [(i, 0) for i in range(4)], 4),  # all share one key: all differ
    (6, [(i, i // 2) for i in range(6)] + [(i, 10 + i % 2) for i in range(6)], 4),  # greedy: <= degree + 1
], ids=["diagonal", "dense", "banded"])
def test_greedy_colors(n_items, pairs, max_colors):
    item = np.array([p[0] for p in pairs])
    key = np.array([p[1] for p in pairs])
    colors = greedy_colors(n_items, item, key, 20)
    assert _conflict_free(colors, item, key)
    assert colors.max() + 1 <= max_colors


def test_steps_are_representable():
    x = np.array([0.1, 1e8, -3.3, 0.0])
    h = step_sizes(x, "central", None, 2.0**-52)
    assert np.all((x + h) - x == h) and np.all(h > 0)


@pytest.mark.parametrize("x0,kink", [(1e-7, True), (-3e-6, True), (0.5, False), (-2.0, False)])
def test_kink_detection_on_relu(x0, kink):
    h = step_sizes(np.array([x0]), "central", None, 2.0**-52)[0]
    deltas = (1, -1, 2, -2)
    values = np.array([[max(0.0, x0 + d * h) for d in deltas]])
    disp = np.array([[d * h] for d in deltas])
    est, err, flagged, lo, hi = combine("central", deltas, values, np.array([max(0.0, x0)]), disp,
                                        np.array([1e-16]))
    assert bool(flagged[0]) is kink
    if kink:
        assert lo[0] <= (1.0 if x0 > 0 else 0.0) <= hi[0]


def test_smooth_steep_function_is_not_a_kink():
    x0 = 0.3
    h = step_sizes(np.array([x0]), "central", None, 2.0**-52)[0]
    deltas = (1, -1, 2, -2)
    f = lambda v: math.exp(40 * v)  # noqa: E731  (curvature large next to the slope)
    values = np.array([[f(x0 + d * h) for d in deltas]])
    disp = np.array([[d * h] for d in deltas])
    est, err, flagged, _, _ = combine("central", deltas, values, np.array([f(x0)]), disp,
                                      np.array([4 * 2.0**-52 * f(x0)]))
    assert not flagged[0]
    assert est[0] == pytest.approx(40 * f(x0), rel=1e-8)


# ---- devices -------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("op,passes", [(op_zoo.Swish, True), (op_zoo.SwishScaled, False),
                                       (op_zoo.SwishAssumesContiguous, False)], ids=["good", "scale", "noncontig"])
def test_cuda(op, passes):
    report = check_op(op, torch.randn(8, 9, dtype=torch.float64, device="cuda"))
    assert report.passed is passes, render_text(report)
    assert report.checks[0].dtype == "float64"
    report32 = check_op(op, torch.randn(8, 9, dtype=torch.float32, device="cuda"))
    assert report32.passed is passes, render_text(report32)


def test_op_value_has_symbolic_from_the_reference():
    """The contract's `value: {torch, symbolic}` for ops: symbolic is the --reference
    expression evaluated exactly (here sin, checked against math.sin), null without one."""
    import math

    report = check_op_target("torch:sin", [("x", "[0.5, -1.25]")], [], reference="sin(x)")
    value = report.to_dict()["checks"][0]["value"]
    assert value["symbolic"] == pytest.approx([math.sin(0.5), math.sin(-1.25)], rel=1e-15)
    plain = check_op_target("torch:sin", [("x", "[0.5, -1.25]")], []).to_dict()["checks"][0]["value"]
    assert plain["symbolic"] is None and plain["torch"] == pytest.approx([math.sin(0.5), math.sin(-1.25)])
