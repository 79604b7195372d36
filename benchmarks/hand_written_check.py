"""What a careful user writes by hand to check the seed example three ways: torch
autograd, SymPy, and central differences with numpy.  The baseline gradcheck is timed
against in benchmarks/run.py (same work, same libraries, no tool)."""

import numpy as np
import sympy as sp
import torch

# autograd, float32, the seed notebook's clamped BCE
x = torch.tensor(6.7)
y = torch.tensor(0.0)
w = torch.tensor(2.0, requires_grad=True)
b = torch.tensor(1.0, requires_grad=True)
p = torch.clamp(torch.sigmoid(w * x + b), 1e-7, 1 - 1e-7)
loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
loss.backward()
auto = np.array([w.grad.item(), b.grad.item()])

# exact derivatives with SymPy, evaluated in float64
W, B, X = sp.symbols("w b x", real=True)
P = 1 / (1 + sp.exp(-(W * X + B)))
L = -sp.log(1 - P)
grad = sp.lambdify((W, B, X), [sp.diff(L, W), sp.diff(L, B)], "numpy")
exact = np.array(grad(2.0, 1.0, 6.7), dtype=float)


# central differences in float64
def f(wv, bv):
    pv = 1 / (1 + np.exp(-(wv * 6.7 + bv)))
    return -np.log(1 - pv)


h = np.finfo(float).eps ** (1 / 3) * 2
fd = np.array([(f(2 + h, 1) - f(2 - h, 1)) / (2 * h), (f(2, 1 + h) - f(2, 1 - h)) / (2 * h)])
print("autograd", auto, "symbolic", exact, "fd", fd, "max rel", np.max(np.abs(auto - exact) / np.abs(exact)))
