"""Plain callables (not autograd.Function): autograd derives their backward, and a
keyword argument (`--kw` / spec `kw`) is passed through as is."""

import torch


def scaled_softplus(x, beta=1.0):
    """softplus(beta*x)/beta, the smooth ReLU with a sharpness knob."""
    return torch.nn.functional.softplus(x * beta) / beta


def bilinear(a, w, b):
    """a @ w @ b for matrices: several inputs, each with its own Jacobian."""
    return a @ w @ b
