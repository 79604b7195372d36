"""A deliberately wrong backward, to show what a failure looks like.

The bug: the backward of x*sigmoid(x) returns only sigmoid(x), forgetting the
x*sigmoid(x)*(1 - sigmoid(x)) term of the product rule.  The forward is right, so the
reference check passes and only the gradient check catches it.
"""

import torch


class BuggySwish(torch.autograd.Function):
    """x * sigmoid(x) with a backward that misses a term."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        ctx.save_for_backward(s)
        return x * s

    @staticmethod
    def backward(ctx, grad_out):
        (s,) = ctx.saved_tensors
        return grad_out * s  # BUG: should be grad_out * s * (1 + x*(1 - s))
