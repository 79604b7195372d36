"""x @ W as a custom autograd Function: two inputs, a dense Jacobian.

    gradcheck op samples/ops/matmul.py:MatMul --at x="randn(4, 3)" --at w="randn(3, 2)"
"""

import torch


class MatMul(torch.autograd.Function):
    """y = x @ W;  dL/dx = g @ W^T,  dL/dW = x^T @ g."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        return grad_out @ w.t(), x.t() @ grad_out
