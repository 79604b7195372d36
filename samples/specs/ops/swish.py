"""A custom op with a hand-written backward: swish(x) = x * sigmoid(x).

d/dx x*s(x) = s(x) + x*s(x)*(1 - s(x)) = s(x) * (1 + x*(1 - s(x))).
`gradcheck run samples/specs` checks this backward against finite differences and the
forward against the reference expression in ops.toml.
"""

import torch


class Swish(torch.autograd.Function):
    """x * sigmoid(x), saving sigmoid(x) for the backward pass."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad_out):
        x, s = ctx.saved_tensors
        return grad_out * s * (1 + x * (1 - s))
