"""A torch.library custom operator, registered the way PyTorch's custom-op tutorial says:
a real kernel, a fake kernel (for torch.compile and export), and an autograd formula.

    gradcheck op samples/ops/mylib.py:mylib::swish --at "x=randn(4, 5)"
    gradcheck op samples/ops/mylib.py:torch.ops.mylib.swish --at "x=randn(4, 5)" --reference "x*sigmoid(x)"

gradcheck checks its gradients like any op's, plus what torch.library.opcheck checks:
the fake kernel against the real one, the schema's mutation and aliasing claims, the
autograd registration, and the op under torch.compile(backend="aot_eager").
"""

import torch


@torch.library.custom_op("mylib::swish", mutates_args=())
def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


@swish.register_fake
def _(x):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    s = torch.sigmoid(x)
    return grad * (s + x * s * (1 - s))


swish.register_autograd(_backward, setup_context=_setup_context)
