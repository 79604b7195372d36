"""A zoo of custom ops for `gradcheck op`: correct ones that must pass, and buggy ones,
each with the bug class the gate must name.

Every op here is small and realistic: a torch.autograd.Function with a hand-written
backward, as people write them in front of their custom kernels.  The correct ones'
backward formulas are derived by hand in their docstrings; the tests also compare them
with torch's own autograd on the same math (an independent truth).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# the ops users copy from samples/ops are the zoo's too (they import each other by name)
_SAMPLES = str(Path(__file__).resolve().parent.parent / "samples" / "ops")
if _SAMPLES not in sys.path:
    sys.path.insert(0, _SAMPLES)

from buggy import SwishFlatKernel  # noqa: E402
from matmul import MatMul  # noqa: E402,F401  (y = x @ W;  dL/dx = g @ W^T, dL/dW = x^T @ g)
from swish import Swish  # noqa: E402  (y = x·s, s = sigmoid(x);  dy/dx = s·(1 + x·(1 - s)))

# ---- correct ops -----------------------------------------------------------------------------


class BigCube(torch.autograd.Function):
    """Large-magnitude outputs: y = 1e3·x³ (|y| ~ 1e9 at |x| ~ 100);  dy/dx = 3e3·x²."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 1e3 * x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3e3 * x**2


class PolarPair(torch.autograd.Function):
    """Two inputs, two outputs: (u, v) = (r·cos t, r·sin t).
    du/dr = cos t, du/dt = -r sin t;  dv/dr = sin t, dv/dt = r cos t."""

    @staticmethod
    def forward(ctx, r, t):
        ctx.save_for_backward(r, t)
        return r * torch.cos(t), r * torch.sin(t)

    @staticmethod
    def backward(ctx, gu, gv):
        r, t = ctx.saved_tensors
        c, s = torch.cos(t), torch.sin(t)
        return gu * c + gv * s, -gu * r * s + gv * r * c


class ScaleShift(torch.autograd.Function):
    """Broadcasting: y = x·w + b with x (B, D), w (D,), b (1, D).  The gradients of the
    broadcast inputs sum over the broadcast dimension: dL/dw = sum_b g·x, dL/db = sum_b g."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x * w + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, (g * x).sum(0), g.sum(0, keepdim=True)


class SoftmaxFn(torch.autograd.Function):
    """Row softmax p; dL/dx = p·(g - sum(g·p)) along the row."""

    @staticmethod
    def forward(ctx, x):
        p = torch.softmax(x, dim=-1)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        return p * (g - (g * p).sum(-1, keepdim=True))


class SinSquared(torch.autograd.Function):
    """y = sin(x)²; dy/dx = 2 sin x cos x = sin 2x, written with differentiable ops so
    double backward and forward-over-reverse work: d²y/dx² = 2 cos 2x; with its jvp."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return torch.sin(x) ** 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sin(2 * x)

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * torch.sin(2 * x)


class TimesSum(torch.autograd.Function):
    """y = x * sum(x): every output depends on every input (dense Jacobian rows)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.sum()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.sum() + (g * x).sum()  # d/dx_j of x_i s = s [i = j] + x_i


class PermutedSumX(torch.autograd.Function):
    """y = x * w (w broadcast over rows); the backward of w sums rows in a random order,
    like atomic adds on a GPU: repeated runs differ by rounding only (must pass)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        terms = g * x
        order = torch.randperm(terms.shape[0])
        acc = torch.zeros_like(w)
        for i in order.tolist():
            acc = acc + terms[i]
        return g * w, acc


def swish_plain(x):
    """A plain composite function (torch's own autograd): x·sigmoid(x)."""
    return x * torch.sigmoid(x)


def relu_plain(x):
    return torch.relu(x)


def big_tanh(x):
    """Large outputs near saturation: 1e6·tanh(x), whose backward computes 1e6·(1 - tanh²),
    known in float32 only to ~1e6·eps absolute (a correct op all the same)."""
    return 1e6 * torch.tanh(x)


# ---- buggy ops (class name -> the diagnostic code the gate must report) ------------------------


class SwishScaled(Swish):
    """Bug: scale error (the backward doubles)."""

    @staticmethod
    def backward(ctx, g):
        return 2 * Swish.backward(ctx, g)


class SwishSubtle(Swish):
    """Bug: off by 2e-5 relative (a stale constant); torch's rtol=1e-3 would not see it."""

    @staticmethod
    def backward(ctx, g):
        return (1 + 2e-5) * Swish.backward(ctx, g)


class SwishNoProductRule(Swish):
    """Bug: d(x·s)/dx written as s, the product rule's second term x·s'(x) missing."""

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * s


class SwishIgnoresGrad(Swish):
    """Bug: returns the local derivative without multiplying by grad_output."""

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return s * (1 + x * (1 - s))


class SwishSignRegion(Swish):
    """Bug: a sign error on one branch (x < 0), as in a hand-split piecewise kernel."""

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        d = s * (1 + x * (1 - s))
        return g * torch.where(x < 0, -d, d)


class MulSwapped(torch.autograd.Function):
    """Bug: y = a·b with the two input gradients swapped."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * a, g * b  # should be g * b, g * a


class ScaleShiftMean(ScaleShift):
    """Bug: the broadcast inputs' gradients average over the batch instead of summing."""

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, (g * x).mean(0), g.mean(0, keepdim=True)


class MulMissingGrad(MulSwapped):
    """Bug: returns None for the second input, which requires grad."""

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b, None


_STALE = {}


class SwishStaleBuffer(Swish):
    """Bug: accumulates into a cached workspace without zeroing it, so each backward call
    adds to the previous one's result: repeated runs disagree."""

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        key = (tuple(g.shape), g.dtype)
        buf = _STALE.setdefault(key, torch.zeros_like(g))
        buf += 1e-3 * g * s * (1 + x * (1 - s))
        return g * s * (1 + x * (1 - s)) + buf


class SigmoidInplace(torch.autograd.Function):
    """Bug: computes sigmoid in place on its input (saves memory, corrupts the caller's tensor)."""

    @staticmethod
    def forward(ctx, x):
        s = x.sigmoid_()
        ctx.save_for_backward(s)
        return s.clone()

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return g * s * (1 - s)


class SinSquaredDetached(SinSquared):
    """Bug (order 2): the backward detaches x, so its own derivative is lost: double
    backward gives 0 where d²y/dx² = 2 cos 2x."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sin(2 * x.detach())


class SinSquaredWrong2nd(torch.autograd.Function):
    """Bug (order 2): the backward is another Function whose own backward is wrong."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x) ** 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _Sin2xBackward.apply(g, x)


class _Sin2xBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, x):
        ctx.save_for_backward(g, x)
        return g * torch.sin(2 * x)

    @staticmethod
    def backward(ctx, gg):
        g, x = ctx.saved_tensors
        return gg * torch.sin(2 * x), gg * g * torch.cos(2 * x)  # d/dx sin 2x is 2 cos 2x: factor 2 missing


class ExpOverflow(torch.autograd.Function):
    """y = exp(x); the backward computes exp(x)² / exp(x), which overflows float32 for x > 44."""

    @staticmethod
    def forward(ctx, x):
        e = torch.exp(x)
        ctx.save_for_backward(e)
        return e

    @staticmethod
    def backward(ctx, g):
        (e,) = ctx.saved_tensors
        return g * (e * e) / e


class SwishAssumesContiguous(SwishFlatKernel):
    """Bug: reads grad_output through its raw memory with contiguous strides (what a
    Triton or CUDA kernel indexing by flat offset does) -- right for contiguous
    grad_outputs, wrong for transposed or strided ones (samples/ops/buggy.py)."""


class SwishViewGrad(Swish):
    """Bug: grad.view(-1) raises on a non-contiguous grad_output."""

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return (g.view(-1) * (s * (1 + x * (1 - s))).reshape(-1)).view(x.shape)


class GeluTanh(torch.autograd.Function):
    """The tanh approximation of GELU, checked against the exact erf GELU as --reference:
    its forward differs by up to ~1e-3 (forward_mismatch)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.nn.functional.gelu(x, approximate="tanh")
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            y = torch.nn.functional.gelu(xx, approximate="tanh")
            (d,) = torch.autograd.grad(y, xx, g)
        return d


class SwishFlatGrad(Swish):
    """Bug: returns the gradient flattened (wrong shape)."""

    @staticmethod
    def backward(ctx, g):
        return Swish.backward(ctx, g).reshape(-1)


class RaisesInForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        raise RuntimeError("no kernel image is available for execution on the device")

    @staticmethod
    def backward(ctx, g):
        return g


class RaisesInBackward(Swish):
    @staticmethod
    def backward(ctx, g):
        raise ValueError("backward of swish is not implemented for this layout")


def returns_string(x):
    return "not a tensor"


# the bug class each buggy op must be reported with: (op, inputs (name, value), extra options, code)
BUGS = {
    "scale": (SwishScaled, [("x", "randn(3, 4)")], {}, "scale_error"),
    "subtle_2e-5": (SwishSubtle, [("x", "randn(3, 4)")], {}, "scale_error"),
    "missing_product_rule": (SwishNoProductRule, [("x", "randn(3, 4)")], {}, "gradient_mismatch"),
    "ignored_grad_output": (SwishIgnoresGrad, [("x", "randn(3, 4)")], {}, "grad_output_ignored"),
    "sign_region": (SwishSignRegion, [("x", "randn(3, 4)")], {}, "wrong_sign"),
    "swapped": (MulSwapped, [("a", "randn(3, 4)"), ("b", "randn(3, 4)")], {}, "swapped_gradients"),
    "mean_broadcast": (ScaleShiftMean, [("x", "randn(4, 5)"), ("w", "randn(5)"), ("b", "randn(1, 5)")], {},
                       "broadcast_reduction"),
    "missing_gradient": (MulMissingGrad, [("a", "randn(3, 4)"), ("b", "randn(3, 4)")], {}, "missing_gradient"),
    "nondeterministic": (SwishStaleBuffer, [("x", "randn(3, 4)")], {}, "nondeterministic"),
    "input_mutated": (SigmoidInplace, [("x", "randn(3, 4)")], {}, "input_mutated"),
    "double_backward_detached": (SinSquaredDetached, [("x", "randn(2, 3)")], {"order": 2}, "double_backward_mismatch"),
    "double_backward_wrong": (SinSquaredWrong2nd, [("x", "randn(2, 3)")], {"order": 2}, "double_backward_mismatch"),
    "float32_overflow": (ExpOverflow, [("x", "[45.5, 47.0, 50.0]")], {"dtype": "float32"}, "nonfinite"),
    "noncontiguous_as_strided": (SwishAssumesContiguous, [("x", "randn(3, 4)")], {}, "noncontiguous_grad_output"),
    "noncontiguous_view": (SwishViewGrad, [("x", "randn(3, 4)")], {}, "noncontiguous_grad_output"),
    "forward_vs_reference": (GeluTanh, [("x", "randn(3, 4)")], {"reference": "x*0.5*(1+erf(x/sqrt(2)))"},
                             "forward_mismatch"),
    "wrong_shape": (SwishFlatGrad, [("x", "randn(3, 4)")], {}, "wrong_shape"),
    "raises_forward": (RaisesInForward, [("x", "randn(3)")], {}, "op_error"),
    "raises_backward": (RaisesInBackward, [("x", "randn(3)")], {}, "op_error"),
    "not_a_tensor": (returns_string, [("x", "randn(3)")], {}, "bad_output"),
}
