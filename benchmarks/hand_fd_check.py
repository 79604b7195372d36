"""What a careful user writes by hand to check an expression's gradient at scale: the
baseline `gradcheck check`'s expression checks are timed against in bench_expr.py.

What it does, and nothing more:
  1. the gradient by torch autograd, in float64 (one forward, one backward);
  2. central differences in float64, (f(x + h e_j) - f(x - h e_j)) / 2h with the textbook
     step h = cbrt(eps) * max(1, |x_j|), for each of the `elements` it is given (the same
     number of elements gradcheck differences: all of them up to its budget, a sample
     above), every perturbed point a row of a batched torch call, CHUNK numbers per
     call (as gradcheck's engine does: a few MiB per call stay in cache, which makes
     both sides 2-10x faster than one call over every row);
  3. the largest relative difference between the two.
No error estimate, no step choice, no symbolic reference, no report: the minimum that
still checks a gradient.  The functions are written by hand in torch, batched over
rows, as such a user would.

    python benchmarks/hand_fd_check.py var 1000      # one run, prints the max relative error
"""

from __future__ import annotations

import sys

import numpy as np
import torch

CHUNK = 2**17  # numbers per batched call (gradcheck's fd_screen.CHUNK_NUMBERS)
EPS = float(np.finfo(np.float64).eps)


def variance(X):
    """mean((x - mean(x))**2) for every row of X."""
    return ((X - X.mean(dim=-1, keepdim=True)) ** 2).mean(dim=-1)


def swish_sum(X):
    """sum(x*sigmoid(x)) for every row of X."""
    return (X * torch.sigmoid(X)).sum(dim=-1)


FUNCTIONS = {"var": variance, "swish_sum": swish_sum}


def hand_check(f, x: np.ndarray, elements: np.ndarray) -> float:
    """Autograd gradient of f at x vs central differences at `elements`; the max relative error."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(xt[None])[0], xt)
    grad = grad.numpy()
    base = xt.detach()
    n = base.numel()
    h_all = EPS ** (1 / 3) * np.maximum(1.0, np.abs(x))
    per_call = max(1, CHUNK // (2 * n))
    fd = np.empty(len(elements))
    with torch.no_grad():
        for start in range(0, len(elements), per_call):
            idx = torch.as_tensor(elements[start:start + per_call])
            h = torch.as_tensor(h_all[idx.numpy()])
            rows = base.expand(2 * len(idx), n).clone()
            rows[torch.arange(len(idx)), idx] += h
            rows[torch.arange(len(idx), 2 * len(idx)), idx] -= h
            values = f(rows)
            fd[start:start + len(idx)] = ((values[:len(idx)] - values[len(idx):]) / (2 * h)).numpy()
    g = grad[elements]
    return float(np.max(np.abs(g - fd) / np.maximum(np.abs(g), 1e-300)))


def seed_check() -> float:
    """The seed example by hand: sigmoid(w*x+b) at w=2, b=1, x=6.7, the notebook's clamped
    BCE against 0, float32 autograd for d/dw and d/db, central differences in float64."""
    def loss(w, b):
        p = torch.clamp(torch.sigmoid(w * 6.7 + b), 1e-7, 1 - 1e-7)
        return -torch.log(1 - p)  # the target is 0

    w = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(1.0, requires_grad=True)
    auto = torch.stack(torch.autograd.grad(loss(w, b), (w, b))).double().numpy()
    h = EPS ** (1 / 3) * 2.0
    with torch.no_grad():
        w64, b64 = torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
        fd = np.array([float((loss(w64 + h, b64) - loss(w64 - h, b64)) / (2 * h)),
                       float((loss(w64, b64 + h) - loss(w64, b64 - h)) / (2 * h))])
    return float(np.max(np.abs(auto - fd) / np.abs(fd)))


if __name__ == "__main__":
    which, n = sys.argv[1], int(float(sys.argv[2]))
    x = np.random.default_rng(0).standard_normal(n)
    print(hand_check(FUNCTIONS[which], x, np.arange(n)))
