"""Correct ops must pass (issue 12): each cause of a false alarm or a crash found on
PyTorch's OpInfo corpus and published packages, as a small op written here."""

from __future__ import annotations

import pytest
import torch

import gradcheck_cli


def x64(*values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


class RoundWithZeroTensor(torch.autograd.Function):
    """round(x): the derivative is 0 almost everywhere, returned the way torch's own
    formulas return such a gradient (a ZeroTensor, which has no numpy view)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return torch._efficientzerotensor(ctx.shape, dtype=g.dtype, device=g.device)


@pytest.mark.parametrize("op, x", [
    (torch.sgn, x64(0.5, -1.25, 2.0)),  # real input: torch's backward formula gives a ZeroTensor
    (RoundWithZeroTensor.apply, x64(0.3, -1.2, 2.2)),
])
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_zero_tensor_gradients_are_zeros(op, x, mode):
    report = gradcheck_cli.check_op(op, x, mode=mode)
    (check,) = report.checks
    assert report.passed, [d.message for d in check.diagnostics]
    if mode == "full":  # every Jacobian entry, read from the ZeroTensor as 0
        assert check.gradients[0].autograd.tolist() == [[0.0] * 3] * 3


def test_a_wrong_gradient_next_to_a_zero_tensor_is_still_caught():
    class HalfRound(RoundWithZeroTensor):
        @staticmethod
        def forward(ctx, x):
            ctx.shape = x.shape
            return torch.round(x) + 0.5 * x  # derivative 0.5, but the backward says 0

    report = gradcheck_cli.check_op(HalfRound.apply, x64(0.3, -1.2, 2.2))
    assert not report.passed and "gradient_mismatch" in report.checks[0].codes()


class SortWithIndices(torch.autograd.Function):
    """sort(x) and its indices as floats, the indices marked non-differentiable: torch's
    own sort / native_layer_norm's mean and rstd have outputs like these."""

    @staticmethod
    def forward(ctx, x):
        values, indices = torch.sort(x)
        ctx.save_for_backward(indices)
        idx = indices.to(x.dtype)
        ctx.mark_non_differentiable(idx)
        return values, idx

    @staticmethod
    def backward(ctx, g_values, g_idx):
        (indices,) = ctx.saved_tensors
        return torch.zeros_like(g_values).scatter(0, indices, g_values)


def test_outputs_that_do_not_require_grad_are_not_checked():
    report = gradcheck_cli.check_op(SortWithIndices.apply, x64(0.3, -1.2, 2.2, 0.1))
    (check,) = report.checks
    assert report.passed, [d.message for d in check.diagnostics]
    note = next(d.message for d in check.diagnostics if d.code == "non_differentiable_output")
    assert "output(s) 1 [4]" in note
    assert check.gradients[0].shape == (4, 4)  # the Jacobian of the sorted values only


def test_a_wrong_gradient_beside_a_non_differentiable_output_is_caught():
    class Wrong(SortWithIndices):
        @staticmethod
        def backward(ctx, g_values, g_idx):
            (indices,) = ctx.saved_tensors
            return 2 * torch.zeros_like(g_values).scatter(0, indices, g_values)

    assert not gradcheck_cli.check_op(Wrong.apply, x64(0.3, -1.2, 2.2, 0.1)).passed


def test_layer_norm_statistics_are_not_compared():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    report = gradcheck_cli.check_op(torch.native_layer_norm, x, [4], w, b, 1e-5)
    assert report.passed, [d.message for d in report.checks[0].diagnostics]
    assert "non_differentiable_output" in report.checks[0].codes()


def running_mean_update(x, running):
    """A batch mean that also updates running statistics in place, as batch norm does."""
    with torch.no_grad():
        running.mul_(0.9).add_(0.1 * x.detach().mean(0))
    return x - x.mean(0)


def test_a_buffer_updated_in_place_is_a_note_and_a_mutated_input_still_fails():
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    running = torch.zeros(2, dtype=torch.float64)
    report = gradcheck_cli.check_op(running_mean_update, x, running)
    (check,) = report.checks
    assert report.passed and "buffer_mutated" in check.codes() and "input_mutated" not in check.codes()
    both = gradcheck_cli.check_op(running_mean_update, x, running, wrt=["x0", "x1"])
    assert not both.passed and "input_mutated" in both.checks[0].codes()


@pytest.mark.parametrize("op, x", [
    (lambda x: torch.nn.functional.pdist(x), torch.randn(1, 3, dtype=torch.float64)),  # one row: no pairs
    (lambda x: x.repeat(0, 1), torch.randn(2, 3, dtype=torch.float64)),
])
def test_empty_outputs_of_non_empty_inputs_pass_with_a_note(op, x):
    report = gradcheck_cli.check_op(op, x)
    (check,) = report.checks
    assert report.passed and "empty_output" in check.codes()
    assert check.gradients[0].shape[0] == 0 and check.gradients[0].input_shape == tuple(x.shape)


def test_a_sparse_output_is_checked_as_its_dense_values():
    report = gradcheck_cli.check_op(lambda x: (x * 3).to_sparse(), torch.randn(2, 3, dtype=torch.float64))
    assert report.passed and report.checks[0].gradients[0].shape == (2, 3, 2, 3)
    wrong = gradcheck_cli.check_op(lambda x: (x * 3).detach().to_sparse() + 0 * x.to_sparse(),
                                   torch.randn(2, 3, dtype=torch.float64))
    assert not wrong.passed


def test_a_sparse_input_is_a_clear_refusal_not_a_crash():
    with pytest.raises(gradcheck_cli.UserInputError, match="sparse inputs are not supported yet"):
        gradcheck_cli.check_op(torch.sparse.mm, torch.eye(3, dtype=torch.float64).to_sparse_csr(),
                               torch.randn(3, 2, dtype=torch.float64, requires_grad=True))


def cosine_like_loss(x, y, target):
    """The ±1 target of cosine_embedding_loss, compared with == 1: the output jumps at the
    very point (any step moves target off 1), and its derivative is 0 almost everywhere,
    so the backward returns None for it."""
    return _JumpInTarget.apply(x, y, target)


class _JumpInTarget(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, target):
        ctx.save_for_backward(x, y, target)
        return torch.where(target == 1, x * y, -x * y)

    @staticmethod
    def backward(ctx, g):
        x, y, target = ctx.saved_tensors
        sign = torch.where(target == 1, 1.0, -1.0).to(g.dtype)
        return g * sign * y, g * sign * x, None


def test_a_none_gradient_where_the_derivative_is_zero_is_zeros():
    x, y = x64(0.5, -1.0, 2.0), x64(1.5, 0.25, -0.75)
    target = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64, requires_grad=True)
    for mode in ("full", "fast"):
        report = gradcheck_cli.check_op(cosine_like_loss, x, y, target, mode=mode)
        (check,) = report.checks
        assert report.passed, [d.message for d in check.diagnostics]
        assert "missing_gradient" not in check.codes()
        if mode == "full":  # every entry differenced: the jump at the point is seen, and named
            assert "none_gradient_zero" in check.codes()


def test_a_none_gradient_where_the_output_depends_on_the_input_still_fails():
    class Forgets(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x * y

        @staticmethod
        def backward(ctx, g):
            return g, None

    report = gradcheck_cli.check_op(Forgets.apply, x64(1.0, 2.0), x64(3.0, 4.0))
    assert not report.passed and "missing_gradient" in report.checks[0].codes()


def c128(*values):
    return torch.tensor(values, dtype=torch.complex128, requires_grad=True)


class SquareComplex(torch.autograd.Function):
    """z**2 with torch's convention for complex gradients: grad_in = grad_out * conj(dz/dz)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z * z

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * (2 * z).conj()


class SquareComplexNoConj(SquareComplex):
    """The classic complex bug: the derivative without its conjugate."""

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * 2 * z


def test_complex_inputs_are_checked_through_their_real_views():
    z = c128(0.5 + 1j, -1.25 - 0.5j, 2.0 + 0.25j)
    good = gradcheck_cli.check_op(SquareComplex.apply, z)
    (check,) = good.checks
    assert good.passed and "complex_as_real" in check.codes()
    assert check.dtype == "complex128" and check.gradients[0].input_shape == (3, 2)
    bad = gradcheck_cli.check_op(SquareComplexNoConj.apply, z)
    assert not bad.passed and "gradient_mismatch" in bad.checks[0].codes()
    assert torch.autograd.gradcheck(SquareComplex.apply, (z,)) is True  # torch agrees with both verdicts
    assert torch.autograd.gradcheck(SquareComplexNoConj.apply, (z,), raise_exception=False) is False


def real_to_complex(x):
    """A real input to a complex output, like rfft or polar: exp(i x) * x."""
    return torch.polar(x, x)


def test_complex_outputs_of_real_inputs_are_checked():
    x = x64(0.5, 1.25, 2.0)
    report = gradcheck_cli.check_op(real_to_complex, x)
    assert report.passed and "complex_as_real" in report.checks[0].codes()
    assert report.checks[0].gradients[0].shape == (3, 2, 3)  # (real, imag) of each output, per input

    class WrongPolar(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.polar(x, x)

        @staticmethod
        def backward(ctx, g):  # drops the derivative of the angle
            (x,) = ctx.saved_tensors
            return (g * torch.exp(-1j * x)).real

    assert not gradcheck_cli.check_op(WrongPolar.apply, x64(0.5, 1.25, 2.0)).passed


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_infinite_inputs_are_not_stepped(mode):
    """A -inf mask before softmax: stepping it gives NaN (or nothing); its columns are left
    out, the others are compared, and a wrong backward is still caught."""
    x = torch.tensor([[0.5, float("-inf"), 1.0], [float("-inf"), -0.2, 0.3]], dtype=torch.float64,
                     requires_grad=True)
    report = gradcheck_cli.check_op(lambda t: torch.softmax(t, -1), x, mode=mode)
    (check,) = report.checks
    assert report.passed, [d.message for d in check.diagnostics]
    assert "nonfinite_input" in check.codes() and "2 element(s)" in next(
        d.message for d in check.diagnostics if d.code == "nonfinite_input")

    class TwiceSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            y = torch.softmax(t, -1)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return 2 * y * (g - (g * y).sum(-1, keepdim=True))

    assert not gradcheck_cli.check_op(TwiceSoftmax.apply, x, mode=mode).passed


def test_tensors_inside_a_list_are_inputs():
    a, b = x64(0.5, -1.0), x64(2.0, 0.25)
    report = gradcheck_cli.check_op(torch.stack, [a, b], kwargs={"dim": 1})
    (check,) = report.checks
    assert report.passed and [g.wrt for g in check.gradients] == ["x0", "x1"]

    def wrong_cat(tensors):
        first, second = tensors
        return torch.cat([first, second.detach() + 0 * second])  # the second one's gradient is lost

    assert not gradcheck_cli.check_op(wrong_cat, (a, b)).passed


def test_a_tensor_keyword_argument_that_requires_grad_is_checked_too():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64)  # does not require grad: passed as it is
    report = gradcheck_cli.check_op(torch.nn.functional.layer_norm, x, [3], kwargs={"weight": w, "bias": b})
    (check,) = report.checks
    assert report.passed and [g.wrt for g in check.gradients] == ["x0", "weight"]

    def ignores_weight_grad(x, shape, weight=None):
        return torch.nn.functional.layer_norm(x, shape) * weight.detach() + 0 * weight

    bad = gradcheck_cli.check_op(ignores_weight_grad, x, [3], kwargs={"weight": w})
    assert not bad.passed and any(g.wrt == "weight" and not g.passed for g in bad.checks[0].gradients)
