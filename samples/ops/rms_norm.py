"""RMSNorm as a custom autograd Function: a per-row reduction and a broadcast weight.

    gradcheck op samples/ops/rms_norm.py:RMSNorm --at x="randn(4, 8)" --at w="randn(8)"
    gradcheck op samples/ops/rms_norm.py:RMSNorm --at x="randn(4, 8)" --at w="randn(8)" --dtype float32

y = x · r · w with r = (mean(x², -1) + eps)^(-1/2) per row.  Since dr/dx_j = -r³ x_j / D,

    dL/dx = r · (g·w) - x · r³ · mean(g·w·x, -1)
    dL/dw = sum over rows of g · x · r          (w is broadcast over the rows: sum, not mean)
"""

import torch

EPS = 1e-6


class RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
        ctx.save_for_backward(x, w, r)
        return x * r * w

    @staticmethod
    def backward(ctx, grad_out):
        x, w, r = ctx.saved_tensors
        gw = grad_out * w
        dx = r * gw - x * r.pow(3) * (gw * x).mean(-1, keepdim=True)
        dw = (grad_out * x * r).reshape(-1, x.shape[-1]).sum(0)
        return dx, dw
