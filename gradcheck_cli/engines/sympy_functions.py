"""SymPy functions the expression language needs beyond SymPy's own, with their
derivatives, and the numpy forms `lambdify` evaluates them with (numerically stable)."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p  # noqa: F401  (re-exported for the table)


class sigmoid(sp.Function):
    """1 / (1 + exp(-x)); d/dx = sigmoid(x) (1 - sigmoid(x))."""

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(sp.Function):
    """log(1 + exp(x)); d/dx = sigmoid(x)."""

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class detach(sp.Function):
    """Stop-gradient: the value of its argument, derivative 0 (so the chain rule stops here)."""

    def fdiff(self, argindex=1):
        return sp.S.Zero


def _np_sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _np_softplus(x):
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _np_erf(x):
    import torch  # numpy has no erf; torch's is correctly rounded to float64 precision

    return torch.special.erf(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


NUMPY_FUNCTIONS = {"sigmoid": _np_sigmoid, "softplus": _np_softplus, "detach": lambda x: x,
                   "erf": _np_erf}


def _mp():
    import mpmath

    return mpmath


MPMATH_FUNCTIONS = {
    "sigmoid": lambda x: 1 / (1 + _mp().exp(-x)),
    "softplus": lambda x: _mp().log1p(_mp().exp(x)),
    "detach": lambda x: x,
}
