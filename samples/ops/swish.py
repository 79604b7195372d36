"""Swish (x * sigmoid(x)) as a custom autograd Function with a hand-written backward.

    gradcheck op samples/ops/swish.py:Swish --at x="randn(4, 5)" --reference "x*sigmoid(x)"
"""

import torch


class Swish(torch.autograd.Function):
    """y = x * sigmoid(x);  dy/dx = sigmoid(x) * (1 + x * (1 - sigmoid(x)))."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad_out):
        x, s = ctx.saved_tensors
        return grad_out * s * (1 + x * (1 - s))


class SwishTwice(torch.autograd.Function):
    """The same op, twice differentiable (`--order 2` passes).

    Swish's backward uses s = sigmoid(x) saved by forward.  forward runs without
    autograd, so to double backward that s is a constant and the term ds/dx of the second
    derivative is lost (`gradcheck op ... --order 2` reports double_backward_mismatch).
    Recomputing s from x inside backward keeps it in the graph.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad_out * s * (1 + x * (1 - s))
