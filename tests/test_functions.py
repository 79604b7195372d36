"""Every function of the expression language against an independent truth.

The truth is mpmath at 50 digits: each row carries the function's value and its
hand-derived derivative, both written in mpmath (never through the tool's own table),
and `test_truth_table_is_right` checks those hand derivations against mpmath's own
numerical differentiation, so a slip in the truth table cannot hide a slip in the tool.

Each column of the report (autograd, symbolic, finite differences) is compared with the
truth separately: agreeing with each other is not enough, all three could share a bug.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import mpmath as mp
import numpy as np
import pytest

from gradcheck_cli.checker import check_expression
from gradcheck_cli.expr.functions import FUNCTIONS

DPS = 50


# ---- mpmath building blocks (hand-written, independent of the tool) --------------------------

def sig(x):
    return 1 / (1 + mp.exp(-x))


def sign(x):
    return mp.mpf(1) if x > 0 else mp.mpf(-1) if x < 0 else mp.mpf(0)


def ind(cond) -> mp.mpf:
    """1 where the condition holds, else 0 (the derivative of a selected branch)."""
    return mp.mpf(1) if cond else mp.mpf(0)


BCE_EPS = mp.mpf(1e-7)  # the clamp of the contract's bce: p' = clamp(p, 1e-7, 1 - 1e-7)


def bce_clamp(p):
    return min(max(p, BCE_EPS), 1 - BCE_EPS)


def elems(v):
    """A scalar or a list of mpf as a list."""
    return v if isinstance(v, list) else [v]


def bcast(a, b):
    """Broadcast two operands (scalar or list) to equal-length lists."""
    a, b = elems(a), elems(b)
    n = max(len(a), len(b))
    return (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)


def unbcast(grads, like):
    """Sum a per-element gradient back to a scalar operand (broadcasting's adjoint)."""
    return sum(grads) if not isinstance(like, list) else grads


# ---- the table -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One function at one point: the expression, its values, and the mpmath truth."""

    func: str
    label: str
    expr: str
    at: dict
    value: Callable  # (**mpf args) -> mpf
    grad: Callable  # (**mpf args) -> {name: mpf or [mpf]}
    rtol: float = 1e-10  # autograd and symbolic against the truth
    atol: float = 1e-15
    fd_rtol: float | None = 1e-7  # None: the stencil crosses a kink here; finite differences are not compared
    fd_atol: float = 1e-12
    extra_codes: tuple = ()  # diagnostics this point must produce

    @property
    def id(self) -> str:
        return f"{self.func}-at-{self.label}"


def unary(func: str, label: str, x, value, deriv, **kw) -> Case:
    return Case(func, label, f"{func}(x)", {"x": x}, lambda x: value(x), lambda x: {"x": deriv(x)}, **kw)


CASES: list[Case] = []
add = CASES.append

for lbl, x in [("-2.5", -2.5), ("3", 3.0), ("1e6", 1e6), ("-1e300", -1e300)]:
    add(unary("abs", lbl, x, abs, sign))
# 1e-300: a complex step of 1e-20*max(1, |x|) would step across the function's whole scale
# there (finite differences once came out 1e140 times too small at this point)
for lbl, x in [("4", 4.0), ("1e-8", 1e-8), ("1e10", 1e10), ("1e-300", 1e-300)]:
    add(unary("sqrt", lbl, x, mp.sqrt, lambda x: 1 / (2 * mp.sqrt(x))))
for lbl, x in [("0", 0.0), ("-50", -50.0), ("50", 50.0), ("700", 700.0), ("-700", -700.0)]:
    add(unary("exp", lbl, x, mp.exp, mp.exp))
for lbl, x in [("1e-10", 1e-10), ("1", 1.0), ("1e10", 1e10), ("0.5", 0.5), ("1e-300", 1e-300)]:
    add(unary("log", lbl, x, mp.log, lambda x: 1 / x))
for lbl, x in [("-0.999999", -0.999999), ("0", 0.0), ("1e-10", 1e-10), ("1e8", 1e8), ("-0.5", -0.5)]:
    add(unary("log1p", lbl, x, mp.log1p, lambda x: 1 / (1 + x)))
for lbl, x in [("0", 0.0), ("1e-10", 1e-10), ("-40", -40.0), ("30", 30.0), ("-1e-5", -1e-5)]:
    add(unary("expm1", lbl, x, mp.expm1, mp.exp))
for lbl, x in [("0", 0.0), ("-3", -3.0), ("100", 100.0), ("1e-8", 1e-8), ("pi-half", math.pi / 2)]:
    add(unary("sin", lbl, x, mp.sin, mp.cos, atol=1e-14))
    add(unary("cos", lbl, x, mp.cos, lambda x: -mp.sin(x), atol=1e-14))
for lbl, x in [("0", 0.0), ("1.5", 1.5), ("-1.57", -1.57), ("3", 3.0)]:
    add(unary("tan", lbl, x, mp.tan, lambda x: 1 / mp.cos(x) ** 2))
# near +-1 the derivative 1/sqrt(1-x^2) amplifies the rounding of 1 - x^2 (condition ~1/(1-x^2))
for lbl, x in [("0", 0.0), ("0.5", 0.5), ("0.999999", 0.999999), ("-0.999999", -0.999999)]:
    add(unary("asin", lbl, x, mp.asin, lambda x: 1 / mp.sqrt(1 - x**2), rtol=1e-9))
    add(unary("acos", lbl, x, mp.acos, lambda x: -1 / mp.sqrt(1 - x**2), rtol=1e-9))
for lbl, x in [("0", 0.0), ("1e8", 1e8), ("-1e8", -1e8), ("0.7", 0.7)]:
    add(unary("atan", lbl, x, mp.atan, lambda x: 1 / (1 + x**2)))
for lbl, x in [("0", 0.0), ("-20", -20.0), ("20", 20.0), ("700", 700.0)]:
    add(unary("sinh", lbl, x, mp.sinh, mp.cosh))
    add(unary("cosh", lbl, x, mp.cosh, mp.sinh))
# tanh'(20) = 1.7e-17: torch forms 1 - tanh^2 = 0, an absolute error far below any tolerance
for lbl, x in [("0", 0.0), ("-20", -20.0), ("20", 20.0), ("0.5", 0.5)]:
    add(unary("tanh", lbl, x, mp.tanh, lambda x: 1 / mp.cosh(x) ** 2))
for lbl, x in [("0", 0.0), ("-40", -40.0), ("40", 40.0), ("2.5", 2.5), ("-2.5", -2.5)]:
    add(unary("sigmoid", lbl, x, sig, lambda x: sig(x) * sig(-x)))
# torch's softplus returns x itself above 20 (derivative exactly 1): 1.3e-9 from the truth at 20.5
for lbl, x in [("0", 0.0), ("-30", -30.0), ("30", 30.0), ("19.5", 19.5), ("20.5", 20.5)]:
    add(unary("softplus", lbl, x, lambda x: mp.log1p(mp.exp(x)), sig, atol=2e-9))
for lbl, x in [("2", 2.0), ("-2", -2.0), ("0.5", 0.5), ("-1e10", -1e10)]:
    add(unary("relu", lbl, x, lambda x: max(x, 0), lambda x: ind(x > 0)))
for lbl, x in [("0", 0.0), ("0.5", 0.5), ("3", 3.0), ("-5", -5.0), ("30", 30.0)]:
    add(unary("erf", lbl, x, mp.erf, lambda x: 2 / mp.sqrt(mp.pi) * mp.exp(-x**2)))

def phi(x):
    """The standard normal density and distribution (gelu's exact form is x * Phi(x))."""
    return mp.exp(-x**2 / 2) / mp.sqrt(2 * mp.pi)


def Phi(x):  # noqa: N802
    return (1 + mp.erf(x / mp.sqrt(2))) / 2


for lbl, x in [("0", 0.0), ("1.5", 1.5), ("-3", -3.0), ("10", 10.0), ("-0.5", -0.5)]:
    add(unary("gelu", lbl, x, lambda x: x * Phi(x), lambda x: Phi(x) + x * phi(x), atol=1e-14))
for lbl, x in [("0", 0.0), ("2", 2.0), ("-5", -5.0), ("40", 40.0), ("-40", -40.0)]:
    add(unary("silu", lbl, x, lambda x: x * sig(x), lambda x: sig(x) * (1 + x * (1 - sig(x)))))
for lbl, x in [("1.5", 1.5), ("-2", -2.0), ("-1e8", -1e8)]:
    add(Case("leaky_relu", f"slope-0.2-at-{lbl}", "leaky_relu(x, 0.2)", {"x": x},
             lambda x: x if x > 0 else x / 5, lambda x: {"x": mp.mpf(1) if x > 0 else mp.mpf(1) / 5}))
add(Case("leaky_relu", "default-slope-at--3", "leaky_relu(x)", {"x": -3.0}, lambda x: x / 100,
         lambda x: {"x": mp.mpf(1) / 100}))
for lbl, x in [("0.7", 0.7), ("-1.5", -1.5), ("-30", -30.0)]:
    add(unary("elu", lbl, x, lambda x: x if x > 0 else mp.expm1(x), lambda x: mp.mpf(1) if x > 0 else mp.exp(x)))
# elu at 0: the derivative is 1 from both sides (alpha 1), but the second derivative jumps, so a
# stencil across 0 loses its order and its error estimate: reported as a kink, never failed
for lbl, x in [("0", 0.0), ("1e-10", 1e-10)]:
    add(unary("elu", lbl, x, lambda x: x if x > 0 else mp.expm1(x), lambda x: mp.mpf(1) if x > 0 else mp.exp(x),
              fd_rtol=None, extra_codes=("non_differentiable",)))
for lbl, x in [("0.3", 0.3), ("-0.99", -0.99), ("2", 2.0), ("-7", -7.0)]:
    add(unary("hardtanh", lbl, x, lambda x: min(max(x, -1), 1), lambda x: ind(-1 < x < 1)))

# atan2 in every quadrant and on the axes away from its branch cut (the negative x axis)
for lbl, y, x in [("q1", 1.0, 2.0), ("q2", 1.5, -0.5), ("q3", -1.0, -3.0), ("q4", -2.0, 0.5),
                  ("pos-x-axis", 0.0, 1.0), ("pos-y-axis", 2.0, 0.0), ("neg-y-axis", -3.0, 0.0)]:
    add(Case("atan2", lbl, "atan2(y, x)", {"y": y, "x": x}, lambda y, x: mp.atan2(y, x),
             lambda y, x: {"y": x / (x**2 + y**2), "x": -y / (x**2 + y**2)}))

for lbl, a, b in [("a-smaller", -1.0, 2.0), ("a-larger", 3.0, 0.5), ("close", 1.0, 1.1)]:
    add(Case("minimum", lbl, "minimum(a, b)", {"a": a, "b": b}, lambda a, b: min(a, b),
             lambda a, b: {"a": ind(a < b), "b": ind(a > b)}))
    add(Case("maximum", lbl, "maximum(a, b)", {"a": a, "b": b}, lambda a, b: max(a, b),
             lambda a, b: {"a": ind(a > b), "b": ind(a < b)}))
add(Case("minimum", "vector-vs-scalar", "sum(minimum(a, b))", {"a": [-1.0, 0.5, 3.0], "b": 1.0},
         lambda a, b: sum(min(ai, b) for ai in a),
         lambda a, b: {"a": [ind(ai < b) for ai in a], "b": sum(ind(ai > b) for ai in a)}))

for lbl, x in [("inside", 0.3), ("below", -2.0), ("above", 5.0)]:
    add(Case("clamp", lbl, "clamp(x, lo, hi)", {"x": x, "lo": -1.0, "hi": 1.0},
             lambda x, lo, hi: min(max(x, lo), hi),
             lambda x, lo, hi: {"x": ind(lo < x < hi), "lo": ind(x < lo), "hi": ind(x > hi)}))

for lbl, x in [("taken", 1.5), ("not-taken", -1.5)]:
    add(Case("where", lbl, "where(x > 0, x**3, sin(x))", {"x": x},
             lambda x: x**3 if x > 0 else mp.sin(x),
             lambda x: {"x": 3 * x**2 if x > 0 else mp.cos(x)}))
add(Case("where", "vector", "sum(where(x <= y, x*y, exp(x)))", {"x": [0.5, 2.0, -1.0], "y": [1.0, 1.0, -3.0]},
         lambda x, y: sum(xi * yi if xi <= yi else mp.exp(xi) for xi, yi in zip(x, y)),
         lambda x, y: {"x": [yi if xi <= yi else mp.exp(xi) for xi, yi in zip(x, y)],
                       "y": [xi if xi <= yi else mp.mpf(0) for xi, yi in zip(x, y)]}))

# detach: autograd and symbolic stop at it (the truth below is stop-gradient semantics);
# finite differences see through it, so they are compared with the derivative of the value
add(Case("detach", "1.5", "detach(x)*y + x", {"x": 1.5, "y": 2.0}, lambda x, y: x * y + x,
         lambda x, y: {"x": mp.mpf(1), "y": x}, fd_rtol=None, extra_codes=("stop_gradient",)))

add(Case("sum", "vector", "sum(x)", {"x": [1.5, -2.0, 1e6]}, lambda x: sum(x), lambda x: {"x": [mp.mpf(1)] * 3}))
add(Case("sum", "matrix-of-squares", "sum(x**2)", {"x": [[1.0, 2.0], [-3.0, 0.0]]},
         lambda x: sum(v**2 for v in x), lambda x: {"x": [2 * v for v in x]}))
add(Case("mean", "vector", "mean(x)", {"x": [1.0, 2.0, 3.0, 4.0]}, lambda x: sum(x) / 4,
         lambda x: {"x": [mp.mpf(1) / 4] * 4}))
add(Case("mean", "of-exp", "mean(exp(x))", {"x": [-30.0, 0.0, 30.0]}, lambda x: sum(mp.exp(v) for v in x) / 3,
         lambda x: {"x": [mp.exp(v) / 3 for v in x]}))


def _exclusive(x, i):
    out = mp.mpf(1)
    for j, v in enumerate(x):
        if j != i:
            out *= v
    return out


for lbl, x in [("vector", [2.0, -3.0, 0.5]), ("one-zero", [0.0, 2.0, 3.0]), ("two-zeros", [0.0, 5.0, 0.0]),
               ("tiny-and-huge", [1e-150, 1e150, 3.0])]:
    add(Case("prod", lbl, "prod(x)", {"x": x}, lambda x: mp.fprod(x),
             lambda x: {"x": [_exclusive(x, i) for i in range(len(x))]}))

for lbl, x in [("3-4", [3.0, 4.0]), ("large", [1e150, -2e150]), ("one-element-zero", [0.0, -2.0, 1e-8])]:
    add(Case("norm", lbl, "norm(x)", {"x": x}, lambda x: mp.sqrt(sum(v**2 for v in x)),
             lambda x: {"x": [v / mp.sqrt(sum(u**2 for u in x)) for v in x]}))


def _softmax(x):
    m = max(x)
    z = sum(mp.exp(v - m) for v in x)
    return [mp.exp(v - m) / z for v in x]


# large entries: a step proportional to |x| (1e-3*1000 = 1 for richardson) would keep only ~3 digits
# of the softmax here; finite differences must pick a step on the function's own scale
for lbl, x in [("small", [0.5, -1.0, 2.0]), ("large-entries", [1000.0, 999.0, -1000.0]),
               ("very-negative", [-800.0, -801.0])]:
    add(Case("logsumexp", lbl, "logsumexp(x)", {"x": x}, lambda x: mp.log(sum(mp.exp(v) for v in x)),
             lambda x: {"x": _softmax(x)}))

add(Case("dot", "vectors", "dot(a, b)", {"a": [1.0, -2.0, 3.0], "b": [0.5, 4.0, -1.0]},
         lambda a, b: sum(u * v for u, v in zip(a, b)), lambda a, b: {"a": list(b), "b": list(a)}))
add(Case("dot", "vector-and-scalar", "dot(a, b)", {"a": [1.0, -2.0, 3.0], "b": 2.0},
         lambda a, b: sum(a) * b, lambda a, b: {"a": [b] * 3, "b": sum(a)}))


def _bce_value(p, y):
    p, y = bcast(p, y)
    return sum(-(yi * mp.log(bce_clamp(pi)) + (1 - yi) * mp.log(1 - bce_clamp(pi))) for pi, yi in zip(p, y)) / len(p)


def _bce_grad(p, y):
    p0, y0 = p, y
    p, y = bcast(p, y)
    n = len(p)
    inside = [BCE_EPS < pi < 1 - BCE_EPS for pi in p]
    dp = [(-(yi / pi) + (1 - yi) / (1 - pi)) / n if ok else mp.mpf(0) for pi, yi, ok in zip(p, y, inside)]
    dy = [-(mp.log(bce_clamp(pi)) - mp.log(1 - bce_clamp(pi))) / n for pi in p]
    return {"p": unbcast(dp, p0), "y": unbcast(dy, y0)}


for lbl, p, y, fd_rtol, codes in [
        ("middle", [0.3, 0.9], [1.0, 0.0], 1e-7, ()),
        ("vector-p-scalar-y", [0.2, 0.6, 0.7], 1.0, 1e-7, ()),
        # within richardson's 1e-3 step of the clamp's kink at 1e-7: finite differences cannot see the
        # derivative there and the report says so; autograd and symbolic are still compared
        ("just-inside-low-clamp", 2e-7, 0.0, None, ("non_differentiable",)),
        ("just-inside-high-clamp", 1 - 2e-7, 1.0, None, ("non_differentiable",)),
        ("below-the-clamp", 1e-9, 1.0, None, ("non_differentiable",)),
        ("soft-target", 0.25, 0.4, 1e-7, ())]:
    add(Case("bce", lbl, "bce(p, y)", {"p": p, "y": y}, _bce_value, _bce_grad, fd_rtol=fd_rtol, extra_codes=codes))


def _bce_logits_value(z, y):
    z, y = bcast(z, y)
    return sum(mp.log1p(mp.exp(zi)) - zi * yi for zi, yi in zip(z, y)) / len(z)


def _bce_logits_grad(z, y):
    z0, y0 = z, y
    z, y = bcast(z, y)
    n = len(z)
    return {"z": unbcast([(sig(zi) - yi) / n for zi, yi in zip(z, y)], z0),
            "y": unbcast([-zi / n for zi in z], y0)}


for lbl, z, y in [("0", 0.0, 0.3), ("50", 50.0, 0.0), ("-50", -50.0, 1.0), ("50-target-1", 50.0, 1.0),
                  ("vector", [-2.0, 0.0, 3.0], [0.0, 1.0, 1.0])]:
    add(Case("bce_logits", lbl, "bce_logits(z, y)", {"z": z, "y": y}, _bce_logits_value, _bce_logits_grad))


def _mse_value(a, b):
    a, b = bcast(a, b)
    return sum((u - v) ** 2 for u, v in zip(a, b)) / len(a)


def _mse_grad(a, b):
    a0, b0 = a, b
    a, b = bcast(a, b)
    n = len(a)
    da = [2 * (u - v) / n for u, v in zip(a, b)]
    return {"a": unbcast(da, a0), "b": unbcast([-d for d in da], b0)}


for lbl, a, b in [("scalars", 3.0, -1.0), ("vectors", [1.0, 2.0, 3.0], [0.5, 2.0, 5.0]),
                  ("vector-and-scalar", [1.0, 2.0, 3.0], 2.5)]:
    add(Case("mse", lbl, "mse(a, b)", {"a": a, "b": b}, _mse_value, _mse_grad))


# ---- helpers ---------------------------------------------------------------------------------------

def _mp_args(case: Case) -> dict:
    """The point as mpf (exactly the float64 numbers the tool sees), flattened lists."""
    out = {}
    for name, v in case.at.items():
        arr = np.asarray(v, dtype=np.float64)
        out[name] = [mp.mpf(float(t)) for t in arr.reshape(-1)] if arr.ndim else mp.mpf(float(arr))
    return out


def truth(case: Case) -> tuple[float, dict]:
    """(value, {name: float64 array of the point's shape}) from the mpmath truth."""
    with mp.workdps(DPS):
        args = _mp_args(case)
        value = float(case.value(**args))
        grads = {}
        for name, g in case.grad(**args).items():
            shape = np.asarray(case.at[name]).shape
            grads[name] = np.array([float(v) for v in elems(g)], dtype=np.float64).reshape(shape)
    return value, grads


def assert_close(actual, expected, rtol, atol, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    allowed = atol + rtol * np.abs(expected)
    bad = ~(err <= allowed)
    assert not bad.any(), (f"{what}: got {actual[bad].tolist()}, truth {expected[bad].tolist()} "
                           f"(abs error {err[bad].tolist()}, allowed {allowed[bad].tolist()})")


_CHECKS: dict = {}


def run(case: Case):
    """The tool's check of this case (computed once: two tests read it)."""
    if case.id not in _CHECKS:
        (_CHECKS[case.id],) = check_expression(case.expr, at=case.at).checks
    return _CHECKS[case.id]


# ---- the tests -------------------------------------------------------------------------------------

def params(cases):
    """pytest params with readable ids (sigmoid-at-40)."""
    return [pytest.param(c, id=c.id) for c in cases]


def test_table_covers_every_function():
    """Adding a function to FUNCTIONS without a row here fails this test."""
    from test_tensor_functions import COVERED  # the structured functions' truths live there

    tested = {c.func for c in CASES} | {k.func for k in KINKS} | COVERED
    missing = sorted(set(FUNCTIONS) - tested)
    assert not missing, f"functions without a truth test: {missing}"
    assert not sorted(tested - set(FUNCTIONS)), "the table tests a function the language does not have"


def test_ids_are_unique():
    ids = [c.id for c in CASES] + [k.id for k in KINKS]
    assert len(ids) == len(set(ids))


# detach's truth is stop-gradient semantics, not the derivative of its value: not checked here
@pytest.mark.parametrize("case", params([c for c in CASES if c.func != "detach"]))
def test_truth_table_is_right(case):
    """The hand-derived mpmath derivatives agree with mpmath's own numerical differentiation
    (the truth is checked before it judges the tool)."""
    with mp.workdps(DPS):
        args = _mp_args(case)
        hand = case.grad(**args)
        for name, g in hand.items():
            base = args[name]
            for i, gi in enumerate(elems(g)):
                def f(t, name=name, i=i):
                    moved = dict(args)
                    if isinstance(base, list):
                        moved[name] = base[:i] + [t] + base[i + 1:]
                    else:
                        moved[name] = t
                    return case.value(**moved)

                x0 = base[i] if isinstance(base, list) else base
                # a relative step far below any kink distance in the table, far above 50-digit rounding
                numeric = mp.diff(f, x0, h=mp.mpf(10) ** -20 * (abs(x0) if x0 else 1))
                assert abs(numeric - gi) <= mp.mpf(10) ** -12 * max(1, abs(gi)), (name, i, numeric, gi)


@pytest.mark.parametrize("case", params(CASES))
def test_function_against_mpmath(case):
    value, grads = truth(case)
    check = run(case)
    assert check.passed, f"{case.expr} at {case.at} failed: {[d.message for d in check.diagnostics]}"
    assert_close(check.value["torch"], value, case.rtol, case.atol, "value (torch)")
    assert_close(check.value["symbolic"], value, case.rtol, case.atol, "value (symbolic)")
    assert [g.wrt for g in check.gradients] == list(case.at), "default wrt: every variable, in order"
    for g in check.gradients:
        expected = grads[g.wrt]
        assert g.shape == expected.shape
        assert_close(g.autograd, expected, case.rtol, case.atol, f"autograd d/d{g.wrt}")
        assert g.symbolic is not None, f"symbolic missing for d/d{g.wrt}"
        assert_close(g.symbolic, expected, case.rtol, case.atol, f"symbolic d/d{g.wrt}")
        if case.fd_rtol is not None:
            assert_close(g.finite_difference, expected, case.fd_rtol, case.fd_atol, f"finite differences d/d{g.wrt}")
    codes = check.codes()
    for code in case.extra_codes:
        assert code in codes
    if not case.extra_codes:
        assert not codes, f"unexpected diagnostics: {[d.message for d in check.diagnostics]}"


@pytest.mark.parametrize("case", params([c for c in CASES if c.fd_rtol is not None]))
def test_finite_difference_error_estimate_is_honest(case):
    """|fd - truth| stays within the safety multiple of fd's own error estimate (plus rounding)."""
    _, grads = truth(case)
    check = run(case)
    for g in check.gradients:
        err = np.abs(np.asarray(g.finite_difference, dtype=np.float64) - grads[g.wrt])
        bound = 3.0 * np.asarray(g.fd_error_estimate) + 1e-12 * np.maximum(1.0, np.abs(grads[g.wrt]))
        assert np.all(err <= bound), (g.wrt, err.tolist(), np.asarray(g.fd_error_estimate).tolist())


# ---- kinks: reported, not failed; autograd follows torch's own convention ---------------------------

@dataclass(frozen=True)
class Kink:
    func: str
    label: str
    expr: str
    at: dict
    torch_fn: Callable  # (torch, **tensors) -> scalar tensor: the same thing written in plain torch

    @property
    def id(self) -> str:
        return f"{self.func}-kink-at-{self.label}"


KINKS = [
    Kink("relu", "0", "relu(x)", {"x": 0.0}, lambda t, x: t.relu(x)),
    Kink("abs", "0", "abs(x)", {"x": 0.0}, lambda t, x: t.abs(x)),
    Kink("clamp", "lo", "clamp(x, lo, hi)", {"x": -1.0, "lo": -1.0, "hi": 1.0}, lambda t, x, lo, hi: t.clamp(x, lo, hi)),
    Kink("clamp", "hi", "clamp(x, lo, hi)", {"x": 1.0, "lo": -1.0, "hi": 1.0}, lambda t, x, lo, hi: t.clamp(x, lo, hi)),
    Kink("minimum", "a-equals-b", "minimum(a, b)", {"a": 0.5, "b": 0.5}, lambda t, a, b: t.minimum(a, b)),
    Kink("maximum", "a-equals-b", "maximum(a, b)", {"a": -2.0, "b": -2.0}, lambda t, a, b: t.maximum(a, b)),
    Kink("relu", "0-in-vector", "sum(relu(x))", {"x": [-1.0, 0.0, 2.0]}, lambda t, x: t.relu(x).sum()),
    Kink("where", "0", "where(x > 0, x, 0*x)", {"x": 0.0}, lambda t, x: t.where(x > 0, x, 0 * x)),
    Kink("norm", "zero-vector", "norm(x)", {"x": [0.0, 0.0, 0.0]}, lambda t, x: t.linalg.vector_norm(x)),
    Kink("norm", "zero-scaled", "norm(x*y)", {"x": [0.0, 0.0], "y": 2.0}, lambda t, x, y: t.linalg.vector_norm(x * y)),
    # torch's conventions for the activations: leaky_relu takes its slope at 0, hardtanh passes 0 at its bounds
    Kink("leaky_relu", "0", "leaky_relu(x, 0.2)", {"x": 0.0}, lambda t, x: t.nn.functional.leaky_relu(x, 0.2)),
    Kink("hardtanh", "1", "hardtanh(x)", {"x": 1.0}, lambda t, x: t.nn.functional.hardtanh(x)),
    Kink("hardtanh", "-1", "hardtanh(x)", {"x": -1.0}, lambda t, x: t.nn.functional.hardtanh(x)),
    # max and min over ties split the gradient evenly (torch.amax / amin), with and without a dim
    Kink("max", "tie", "max(x)", {"x": [1.0, 3.0, 3.0]}, lambda t, x: t.amax(x)),
    Kink("max", "tie-along-dim", "sum(max(x, 1))", {"x": [[1.0, 2.0, 2.0], [0.5, 0.5, 0.5]]},
         lambda t, x: t.amax(x, 1, keepdim=True).sum()),
    Kink("min", "tie", "min(x)", {"x": [-2.0, 5.0, -2.0]}, lambda t, x: t.amin(x)),
    Kink("min", "three-way-tie-along-dim", "sum(min(x, 0)*y)", {"x": [[1.0, 0.0], [1.0, 4.0], [1.0, 2.0]],
                                                              "y": [2.0, -1.0]},
         lambda t, x, y: (t.amin(x, 0, keepdim=True) * y).sum()),
]


@pytest.mark.parametrize("kink", KINKS, ids=lambda k: k.id)
def test_kink_is_reported_not_failed(kink):
    import torch

    report = check_expression(kink.expr, at=kink.at)
    (check,) = report.checks
    assert check.passed, [d.message for d in check.diagnostics]
    assert "non_differentiable" in check.codes()
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in kink.at.items()}
    out = kink.torch_fn(torch, **tensors)
    own = torch.autograd.grad(out, list(tensors.values()), allow_unused=True)
    for g, (name, t) in zip(check.gradients, zip(tensors, own)):
        assert g.wrt == name
        expected = np.zeros(np.shape(kink.at[name])) if t is None else t.numpy()
        np.testing.assert_array_equal(g.autograd, expected)
        # the symbolic column follows the same convention (functions.py says so)
        np.testing.assert_array_equal(g.symbolic, expected)


def test_minimum_of_a_variable_with_itself_is_smooth():
    """minimum(x, x) = x: torch splits 1/2 to each argument, so autograd gives 1 and no kink is claimed."""
    (check,) = check_expression("minimum(x, x)", at={"x": 0.5}).checks
    assert check.passed
    assert float(check.gradients[0].autograd) == 1.0
    assert float(check.gradients[0].symbolic) == 1.0
    assert abs(float(check.gradients[0].finite_difference) - 1.0) < 1e-9
