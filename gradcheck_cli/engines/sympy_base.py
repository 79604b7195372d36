"""What both SymPy models share (symbolic.py's per-element model and tensor_model.py's
element-expanded one): exact literals, powers that never compute huge numbers, constants
that are not real made nan, and numpy compilation without lambdify's star import."""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from gradcheck_cli.engines import sympy_functions as fns
from gradcheck_cli.expr import ir


def numpy_lambdify(args, expr, cse=False, order: str | None = None):
    """`sp.lambdify(args, expr, modules=[fns.NUMPY_FUNCTIONS, "numpy"])`, minus its `from numpy import *`.

    That star import touches every lazily loaded numpy submodule (f2py, testing, ...) and
    costs ~80 ms on a check's first formula.  The same NumPy printer and the same generated
    code run against numpy's already-loaded names instead.  `order="none"` prints sums and
    products in SymPy's internal order instead of sorting their terms (long programs print
    several times faster).
    """
    global _NUMPY_NAMESPACE
    if _NUMPY_NAMESPACE is None:
        _NUMPY_NAMESPACE = {k: v for k, v in vars(np).items() if not k.startswith("_")}
    from sympy.printing.numpy import NumPyPrinter

    settings = {"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": True}
    printer = NumPyPrinter({**settings, "order": order} if order else settings)
    return sp.lambdify(args, expr, modules=[fns.NUMPY_FUNCTIONS, _NUMPY_NAMESPACE], printer=printer, cse=cse)


_NUMPY_NAMESPACE: dict | None = None


# Exact numbers are kept exact while they are small.  Past these sizes they become 30-digit
# Floats: numpy cannot take integers beyond int64, and SymPy computing (2*x)**(99**50) or
# sqrt(2)**(99**50) exactly would hang (it distributes the power and builds 2**(huge)).
_EXACT_EXPONENT_LIMIT = 1024
_EXACT_BITS_LIMIT = 4096
_FLOAT_DIGITS = 30


def power(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    """a**b as SymPy builds it, without exact arithmetic on huge numbers, and nan (as torch
    gives) for a constant power that is not a real number, like (-8)**(1/3)."""
    if b.is_number and _magnitude(b) > _EXACT_EXPONENT_LIMIT:
        b = sp.Float(b.evalf(_FLOAT_DIGITS), _FLOAT_DIGITS)
    if a.is_number and math.isinf(_magnitude(a)):  # beyond float64: no exact power of it is useful
        a = sp.Float(a.evalf(_FLOAT_DIGITS), _FLOAT_DIGITS)
    e = a**b
    if b.is_number:
        e = _float_huge_rationals(e)
    if e.is_number and (e.has(sp.zoo, sp.nan) or e.is_extended_real is False):
        return sp.nan
    return e


def real_constant(e: sp.Expr) -> sp.Expr:
    """A constant that is not a real number (sqrt(-1), log(-1), asin(2)) is nan, as torch
    computes it, so the whole expression stays real for numpy."""
    if isinstance(e, sp.Expr) and e.is_number and e.is_extended_real is False and not e.has(sp.zoo):
        return sp.nan  # (complex infinity, 1/0, stays: x*zoo keeps x, and numpy_safe makes it nan)
    return e


def _magnitude(v: sp.Expr) -> float:
    """|v| as a float for a SymPy number (inf when it does not fit, nan when not real)."""
    try:
        return abs(float(v))
    except (TypeError, ValueError):
        return math.nan
    except OverflowError:
        return math.inf


def _float_huge_rationals(e: sp.Expr) -> sp.Expr:
    """Replace integers and fractions with more than _EXACT_BITS_LIMIT bits by Floats."""
    big = {r: sp.Float(r, _FLOAT_DIGITS) for r in e.atoms(sp.Rational)
           if max(abs(r.p), abs(r.q)).bit_length() > _EXACT_BITS_LIMIT}
    return e.xreplace(big) if big else e


def numpy_safe(expr: sp.Expr) -> sp.Expr:
    """The expression as numpy can evaluate it: integers beyond 2**53 as Floats (numpy has no
    big integers), complex infinity as nan (torch's 1/0 is inf or nan by sign; either way the
    check reports a non-finite number)."""
    swap = {r: sp.Float(r, _FLOAT_DIGITS) for r in expr.atoms(sp.Rational)
            if max(abs(r.p), abs(r.q)).bit_length() > 53}
    if expr.has(sp.zoo):
        swap[sp.zoo] = sp.nan
    return expr.xreplace(swap) if swap else expr


def literal(node: ir.Num) -> sp.Expr:
    """An exact number for a literal, as written: 6.7 is 67/10, not the nearest double."""
    return fns.exact(node.value, node.text)
