"""nn.Modules for `gradcheck op`: their inputs AND parameters are checked.

    gradcheck op samples/ops/layers.py:RMSNormLayer --init dim=8 --at "x=randn(4, 8)"
    gradcheck op samples/ops/layers.py:mlp --at "x=randn(5, 3)"                  # an instance
    gradcheck op samples/ops/layers.py:MLP --init d_in=3 --init hidden=6 --at "x=randn(5, 3)" --wrt fc1.weight

A class is built with the --init keyword arguments (its random initial weights drawn with
--seed); an instance is used as it is.  gradcheck works on a copy in the check's dtype
(float64 by default), calls it with torch.func.functional_call, and names each parameter
as named_parameters() does: weight, fc1.bias, ...  `RMSNormLayerMeanGrad` is the same
layer with a weight gradient that averages over the rows where it must sum.
"""

import torch
from torch import nn

from rms_norm import EPS, RMSNorm


class RMSNormLayer(nn.Module):
    """RMSNorm (samples/ops/rms_norm.py, a custom Function) with its weight as a parameter."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x):
        return RMSNorm.apply(x, self.weight)


class _MeanGrad(RMSNorm):
    @staticmethod
    def backward(ctx, grad_out):
        x, w, r = ctx.saved_tensors
        dx, _ = RMSNorm.backward(ctx, grad_out)
        return dx, (grad_out * x * r).reshape(-1, x.shape[-1]).mean(0)  # the bug: mean, not sum


class RMSNormLayerMeanGrad(RMSNormLayer):
    def forward(self, x):
        return _MeanGrad.apply(x, self.weight)


class MLP(nn.Module):
    """Linear -> tanh -> Linear."""

    def __init__(self, d_in: int = 3, hidden: int = 4, d_out: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


with torch.random.fork_rng():  # its weights from a seed of its own: importing this file draws nothing
    torch.manual_seed(0)
    mlp = MLP()

__all__ = ["EPS", "MLP", "RMSNormLayer", "RMSNormLayerMeanGrad", "mlp"]
