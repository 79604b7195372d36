"""SymPy functions the expression language needs beyond SymPy's own, with their
derivatives, and the numpy forms `lambdify` evaluates them with (numerically stable)."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p  # noqa: F401  (re-exported for the table)


class sigmoid(sp.Function):
    """1 / (1 + exp(-x)); d/dx = sigmoid(x) (1 - sigmoid(x)).

    Written as torch's backward computes it.  sigmoid(x) sigmoid(-x) is the same number and
    keeps relative accuracy for x above ~37 (where 1 - sigmoid(x) rounds to 0, an absolute
    error below 1e-16), but inside -log(1 - sigmoid(z)) (bce with target 0, the seed example)
    it loses 10 digits: there the rounding of 1 - sigmoid(z) in the numerator cancels the
    same rounding in the denominator only when both are formed the same way.
    """

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(sp.Function):
    """log(1 + exp(x)); d/dx = sigmoid(x)."""

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class norm_sqrt(sp.Function):
    """sqrt(r) for r = a sum of squares (the 2-norm), with torch's convention at r = 0:
    d/dr = 1 / (2 sqrt(r)) for r > 0, and 0 at r = 0 (so norm's gradient at the zero vector
    is 0, a valid subgradient, where the plain formula x / norm(x) gives 0/0)."""

    def fdiff(self, argindex=1):
        r = self.args[0]
        return sp.Piecewise((1 / (2 * sp.sqrt(r)), r > 0), (0, True))


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
                   "erf": _np_erf, "norm_sqrt": np.sqrt}


def _mp():
    import mpmath

    return mpmath


MPMATH_FUNCTIONS = {
    "sigmoid": lambda x: 1 / (1 + _mp().exp(-x)),
    "softplus": lambda x: _mp().log1p(_mp().exp(x)),
    "detach": lambda x: x,
    "norm_sqrt": lambda x: _mp().sqrt(x),
}


class stopmax(sp.Function):
    """The largest of its arguments, held constant (derivative 0): the shift a stable softmax
    or logsumexp subtracts.  Both are invariant to the shift, so the exact derivative is the
    one that treats it as a constant, and exp never overflows."""

    def _eval_derivative(self, s):
        return sp.S.Zero


def _ties(fn, args, k):
    """d fn(args) / d args[k] for fn = the max or the min: 1/m to each of the m arguments that
    attain it, 0 to the others (torch.amax / amin split a tie evenly)."""
    hit = [sp.Piecewise((1, sp.Eq(a, fn)), (0, True)) for a in args]
    return hit[k] / sp.Add(*hit)


class amax_ties(sp.Function):
    """The largest of its arguments (torch.amax): ties share the derivative evenly."""

    def fdiff(self, argindex=1):
        return _ties(self, self.args, argindex - 1)


class amin_ties(sp.Function):
    """The smallest of its arguments (torch.amin): ties share the derivative evenly."""

    def fdiff(self, argindex=1):
        return _ties(self, self.args, argindex - 1)


def _np_max(*xs):
    return np.max(np.stack(np.broadcast_arrays(*[np.asarray(x, dtype=np.float64) for x in xs])), axis=0)


def _np_min(*xs):
    return np.min(np.stack(np.broadcast_arrays(*[np.asarray(x, dtype=np.float64) for x in xs])), axis=0)


# (not named amax / amin: SymPy's printers know those names as array functions)
NUMPY_FUNCTIONS.update({"stopmax": _np_max, "amax_ties": _np_max, "amin_ties": _np_min})
MPMATH_FUNCTIONS.update({"stopmax": lambda *xs: max(xs), "amax_ties": lambda *xs: max(xs),
                         "amin_ties": lambda *xs: min(xs)})


def exact(v: float, text: str | None = None) -> sp.Expr:
    """A number as an exact one while it is small: 6.7 is 67/10, not the nearest double.
    `text` is the number as written (a literal's source text, sympy_base.literal); without
    it, the shortest text that reads back as v (a literal parameter, leaky_relu's slope:
    0.1 is 1/10)."""
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e15:
        return sp.Integer(int(v))
    text = repr(float(v)) if text is None else text.lower()
    return sp.Rational(text) if len(text) <= 24 and 1e-30 < abs(v) < 1e30 else sp.Float(v)
