"""z**2 on complex inputs, as a torch.autograd.Function.

torch's convention for complex gradients: the backward returns grad_out * conj(dz**2/dz).
`SquareNoConj` forgets the conjugate -- the classic complex bug, invisible on the real axis.

    gradcheck op samples/ops/complex_square.py:Square --at "z=randn(3)" --dtype complex128
"""

import torch


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z * z

    @staticmethod
    def backward(ctx, grad_out):
        (z,) = ctx.saved_tensors
        return grad_out * (2 * z).conj()


class SquareNoConj(Square):
    @staticmethod
    def backward(ctx, grad_out):
        (z,) = ctx.saved_tensors
        return grad_out * 2 * z
