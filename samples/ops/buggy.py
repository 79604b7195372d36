"""Three realistic backward bugs, to see what `gradcheck op` reports for each.

    gradcheck op samples/ops/buggy.py:SwishFlatKernel --at x="randn(4, 5)"
    gradcheck op samples/ops/buggy.py:SwishStaleConstant --at x="randn(4, 5)"
    gradcheck op samples/ops/buggy.py:RMSNormMeanWeight --at x="randn(4, 8)" --at w="randn(8)"

torch.autograd.gradcheck passes the first two: it only ever feeds contiguous one-hot
grad_outputs, and its rtol=1e-3 cannot see a 2e-5 error.
"""

from rms_norm import EPS, RMSNorm
from swish import Swish


def _contiguous_strides(shape):
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


class SwishFlatKernel(Swish):
    """Bug: the backward 'kernel' walks grad_output's memory by flat offset, as a Triton
    or CUDA kernel does when handed a pointer -- right only for contiguous grad_outputs
    (in training, grad_output is often a transposed view).  The forward is swish.py's."""

    @staticmethod
    def backward(ctx, grad_out):
        x, s = ctx.saved_tensors
        g = grad_out.as_strided(grad_out.shape, _contiguous_strides(grad_out.shape))
        return g * s * (1 + x * (1 - s))


class SwishStaleConstant(SwishFlatKernel):
    """Bug: a constant copied with too few digits makes the backward 2e-5 too large."""

    @staticmethod
    def backward(ctx, grad_out):
        x, s = ctx.saved_tensors
        return 1.00002 * grad_out * s * (1 + x * (1 - s))


class RMSNormMeanWeight(RMSNorm):
    """Bug: the weight is broadcast over the rows, and its gradient averages them."""

    @staticmethod
    def backward(ctx, grad_out):
        dx, _ = RMSNorm.backward(ctx, grad_out)
        x, w, r = ctx.saved_tensors
        return dx, (grad_out * x * r).reshape(-1, x.shape[-1]).mean(0)


__all__ = ["SwishFlatKernel", "SwishStaleConstant", "RMSNormMeanWeight", "EPS"]
