"""The README's "from the notebook to real models" expressions as custom ops, the way a
learner would write them by hand: a plain torch function (autograd does the backward)
and a torch.autograd.Function whose hand-written backward has one classic mistake each.

samples/models.md runs them with `gradcheck op`; tests/test_models.py checks them and
compares the numbers with the expression checks of the same formulas.
"""

from __future__ import annotations

import torch

BCE_EPS = 1e-7  # the seed notebook's clamp, as bce(p, y) in the expression language


def logistic(X, w, b, y):
    """mean(bce(sigmoid(X @ w + b), y))"""
    p = torch.sigmoid(X @ w + b).clamp(BCE_EPS, 1 - BCE_EPS)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


class WrongLogistic(torch.autograd.Function):
    """Backward forgets the 1/n of the mean in d/dw (and only there)."""

    @staticmethod
    def forward(ctx, X, w, b, y):
        ctx.save_for_backward(X, w, b, y)
        return logistic(X, w, b, y)

    @staticmethod
    def backward(ctx, g):
        X, w, b, y = ctx.saved_tensors
        r = torch.sigmoid(X @ w + b) - y
        n = X.shape[0]
        return g * torch.outer(r, w) / n, g * X.T @ r, g * r.mean(), -g * (X @ w + b) / n


def softmax_ce(Z, W, y):
    """cross_entropy(Z @ W, y)"""
    return torch.nn.functional.cross_entropy(Z @ W, y)


class WrongSoftmaxCE(torch.autograd.Function):
    """Backward uses softmax(Z @ W) - onehot(y) but forgets the mean's 1/N."""

    @staticmethod
    def forward(ctx, Z, W, y):
        ctx.save_for_backward(Z, W, y)
        return softmax_ce(Z, W, y)

    @staticmethod
    def backward(ctx, g):
        Z, W, y = ctx.saved_tensors
        G = torch.softmax(Z @ W, 1) - torch.nn.functional.one_hot(y, W.shape[1]).to(Z.dtype)
        return g * G @ W.T, g * Z.T @ G, None


def mlp(X, W1, b1, W2, Y):
    """mean(sum((tanh(X @ W1 + b1) @ W2 - Y)**2, 1))"""
    return ((torch.tanh(X @ W1 + b1) @ W2 - Y) ** 2).sum(1, keepdim=True).mean()


class WrongMLP(torch.autograd.Function):
    """Backward forgets tanh's derivative (1 - H^2) on the way to W1, b1 and X."""

    @staticmethod
    def forward(ctx, X, W1, b1, W2, Y):
        ctx.save_for_backward(X, W1, b1, W2, Y)
        return mlp(X, W1, b1, W2, Y)

    @staticmethod
    def backward(ctx, g):
        X, W1, b1, W2, Y = ctx.saved_tensors
        H = torch.tanh(X @ W1 + b1)
        dR = g * 2 * (H @ W2 - Y) / X.shape[0]
        dA = dR @ W2.T  # missing: * (1 - H**2)
        return dA @ W1.T, X.T @ dA, dA.sum(0), H.T @ dR, -dR


def attention(Q, K, V):
    """softmax(Q @ transpose(K) / sqrt(4), 1) @ V"""
    return torch.softmax(Q @ K.T / 2, 1) @ V


class WrongAttention(torch.autograd.Function):
    """Backward treats softmax's Jacobian as diagonal (drops the - s s^T term)."""

    @staticmethod
    def forward(ctx, Q, K, V):
        ctx.save_for_backward(Q, K, V)
        return attention(Q, K, V)

    @staticmethod
    def backward(ctx, G):
        Q, K, V = ctx.saved_tensors
        P = torch.softmax(Q @ K.T / 2, 1)
        dP = G @ V.T
        dS = P * dP / 2  # right: P * (dP - (P * dP).sum(1, keepdim=True)) / 2
        return dS @ K, dS.T @ Q, P.T @ G


def layer_norm(x):
    """(x - mean(x, 1)) / sqrt(var(x, 1) + 1e-5)"""
    return (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-5)


class WrongLayerNorm(torch.autograd.Function):
    """Backward treats the variance as a constant (keeps only the centering)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return layer_norm(x)

    @staticmethod
    def backward(ctx, G):
        (x,) = ctx.saved_tensors
        s = torch.sqrt(x.var(1, keepdim=True) + 1e-5)
        return (G - G.mean(1, keepdim=True)) / s


def index_product(x, y):
    """x[0] * y[1:3]"""
    return x[0] * y[1:3]


class WrongIndexProduct(torch.autograd.Function):
    """Backward sends x's gradient to x[1] instead of x[0] (an off-by-one)."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return index_product(x, y)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        gx = torch.zeros_like(x)
        gx[1] = (g * y[1:3]).sum()
        gy = torch.zeros_like(y)
        gy[1:3] = g * x[0]
        return gx, gy
