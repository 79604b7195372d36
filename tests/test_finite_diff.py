"""Finite-difference accuracy against mpmath truths at 50 digits.

Every case carries its function and its hand-derived derivative in mpmath; the
derivative is itself checked against mpmath's own numerical differentiation, so a
slip in the table fails here rather than passing a wrong engine.  Points are float64
numbers; the truth is the exact derivative at exactly that float64 number.

Targets (relative error at the default step), numdifftools' level:
  complex 1e-13, richardson 1e-10, central 2e-10 (its optimum is eps**(2/3) ~ 4e-11 times
  a factor of the function), forward 2e-7.
Where the function's value is large against its derivative (tanh(6) = 1 - 1e-5, with
slope 2.5e-5), no difference of float64 values can resolve the slope to that relative
accuracy: the targets are scaled by the condition number max(1, |f| / (|f'| max(1, |x|))).
The error estimates are tested on random points, conditioned or not: each must bound the
true error and not be absurdly loose.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

from gradcheck_cli.checker import check_expression
from gradcheck_cli.engines import fd_steps, finite_diff
from gradcheck_cli.expr import parse

DPS = 50
TARGET = {"complex": 1e-13, "richardson": 1e-10, "central": 2e-10, "forward": 2e-7}
SCHEMES = tuple(TARGET)


def _sig(x):
    return 1 / (1 + mp.exp(-x))


# name: (expression, f, f', curated points, (random domain lo, hi, signed))
CASES = {
    "exp": ("exp(x)", mp.exp, mp.exp, [-3.7, -0.5, 0.3, 1.0, 2.5, 17.0, 123.4, -300.0], (1e-3, 30, True)),
    "sin": ("sin(x)", mp.sin, mp.cos, [-3.7, -0.5, 0.3, 1.0, 2.5, 17.0, 123.4, 1e4, -1e3], (1e-3, 50, True)),
    "sigmoid": ("sigmoid(x)", _sig, lambda x: _sig(x) * (1 - _sig(x)), [-3.7, -0.5, 0.3, 1.0, 2.5, 8.0, -12.0],
                (1e-3, 6, True)),
    "log": ("log(x)", mp.log, lambda x: 1 / x, [0.01, 0.3, 1.0, 2.5, 17.0, 123.4, 1e4, 1e6], (1e-3, 1e5, False)),
    "tanh": ("tanh(x)", mp.tanh, lambda x: 1 / mp.cosh(x) ** 2, [-3.7, -0.5, 0.3, 1.0, 2.5, 6.0], (1e-3, 3, True)),
    "exp-sin-log": ("exp(sin(x))*log(1+x**2)", lambda x: mp.exp(mp.sin(x)) * mp.log(1 + x**2),
                    lambda x: mp.exp(mp.sin(x)) * (mp.cos(x) * mp.log(1 + x**2) + 2 * x / (1 + x**2)),
                    [-3.7, -0.5, 0.3, 1.0, 2.5, 17.0, 123.4], (1e-3, 20, True)),
    "rational": ("(x**3-2*x+1)/(x**2+3)", lambda x: (x**3 - 2 * x + 1) / (x**2 + 3),
                 lambda x: ((3 * x**2 - 2) * (x**2 + 3) - (x**3 - 2 * x + 1) * 2 * x) / (x**2 + 3) ** 2,
                 [-3.7, -0.5, 0.3, 1.0, 2.5, 17.0, 1e4, -1e3], (1e-3, 1e3, True)),
    "tanh-sigmoid": ("tanh(sigmoid(x)*x)", lambda x: mp.tanh(_sig(x) * x),
                     lambda x: (_sig(x) + x * _sig(x) * (1 - _sig(x))) / mp.cosh(_sig(x) * x) ** 2,
                     [-3.7, -0.5, 0.3, 1.0, 2.5], (1e-3, 4, True)),
    "lorentzian": ("1/(1+x**2)", lambda x: 1 / (1 + x**2), lambda x: -2 * x / (1 + x**2) ** 2,
                   [-3.7, -0.5, 0.3, 1.0, 2.5, 17.0, 123.4, 1e4], (1e-3, 100, True)),
    "hypot": ("sqrt(1+x**2)", lambda x: mp.sqrt(1 + x**2), lambda x: x / mp.sqrt(1 + x**2),
              [-3.7, -0.5, 0.3, 1.0, 2.5, 1e4, -1e3], (1e-3, 1e3, True)),
}


def _truth(case: str, xs) -> tuple[np.ndarray, np.ndarray]:
    """(f, f') at the float64 points, from mpmath at DPS digits."""
    _, f, df, _, _ = CASES[case]
    with mp.workdps(DPS):
        return (np.array([float(f(mp.mpf(float(x)))) for x in xs]),
                np.array([float(df(mp.mpf(float(x)))) for x in xs]))


def _condition(xs, f, df) -> np.ndarray:
    """max(1, |f| / (|f'| max(1, |x|))): how much rounding of f's values costs the slope."""
    return np.maximum(1.0, np.abs(f) / (np.abs(df) * np.maximum(1.0, np.abs(xs))))


def _fd(case: str, xs, scheme: str, eps=None) -> finite_diff.FDResult:
    """All points at once: the expression is elementwise, so output i is d/dx at xs[i]."""
    xs = np.asarray(xs, dtype=np.float64)
    return finite_diff.jacobian(parse(CASES[case][0]), {"x": xs}, "x", xs.shape, scheme=scheme, eps=eps,
                                max_numel=xs.size)


def _random_points(case: str, n: int = 40, seed: int = 0) -> np.ndarray:
    lo, hi, signed = CASES[case][4]
    rng = np.random.default_rng([seed, sorted(CASES).index(case)])
    xs = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    return xs * rng.choice([-1.0, 1.0], n) if signed else xs


# ---- the table itself ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_derivatives_match_mpmath_numerical_derivatives(case):
    _, f, df, points, _ = CASES[case]
    with mp.workdps(DPS):
        for x in points[:4]:
            x = mp.mpf(x)
            assert abs(df(x) - mp.diff(f, x)) <= mp.mpf(10) ** (-30) * max(1, abs(df(x))), (case, x)


# ---- accuracy at the default step ----------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_scheme_accuracy_against_mpmath(case, scheme):
    points = np.array(CASES[case][3])
    f, df = _truth(case, points)
    fd = _fd(case, points, scheme)
    est = np.diag(fd.jacobian)
    rel = np.abs(est - df) / np.abs(df)
    allowed = TARGET[scheme] * _condition(points, f, df)
    bad = rel > allowed
    assert not bad.any(), (f"{scheme} on {CASES[case][0]}: at x={points[bad].tolist()} relative error "
                           f"{rel[bad].tolist()} > {allowed[bad].tolist()}")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_median_accuracy_is_far_better_than_the_target(scheme):
    """Across every curated point, the typical error sits well below the target."""
    rels = []
    for case in CASES:
        points = np.array(CASES[case][3])
        _, df = _truth(case, points)
        rels.extend(np.abs(np.diag(_fd(case, points, scheme).jacobian) - df) / np.abs(df))
    assert np.median(rels) <= TARGET[scheme] / 3, np.median(rels)


@pytest.mark.parametrize("case,x,scheme", [
    ("sin", 1e4, "central"), ("sin", 1e4, "richardson"), ("exp", 123.4, "richardson"),
    ("log", 1e4, "central"), ("log", 0.01, "central"), ("log", 0.01, "richardson"),
], ids=lambda v: str(v))
def test_the_step_is_chosen_per_point(case, x, scheme):
    """One relative rule cannot serve sin at 1e4 (wants an absolute step) and log at 1e4
    (wants one proportional to x): each point gets the scale its error estimate favours."""
    f, df = _truth(case, [x])
    fd = _fd(case, [x], scheme)
    assert abs(fd.jacobian[0, 0] - df[0]) <= TARGET[scheme] * abs(df[0])
    h, rule = fd.steps[0], fd_steps.step_sizes(scheme, np.array([x]), None)[0]
    if case in ("sin", "exp"):  # its scale is 1 wherever x is
        assert h < rule / 10
    if case == "log" and x > 1:  # its scale is x
        assert h == pytest.approx(rule, rel=1e-6)


# ---- error estimates -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_error_estimate_bounds_the_true_error(case, scheme):
    """At 40 random points per case (conditioned or not): the estimate is at least the
    true error, and not absurdly loose: within 1e4 of it, or within 10x of what the scheme
    promises at that point anyway."""
    xs = _random_points(case)
    f, df = _truth(case, xs)
    fd = _fd(case, xs, scheme)
    est, bound = np.diag(fd.jacobian), np.diag(fd.error)
    actual = np.abs(est - df)
    under = ~(bound >= actual)
    assert not under.any(), (f"{scheme} on {CASES[case][0]}: at x={xs[under].tolist()} the estimate "
                             f"{bound[under].tolist()} < the true error {actual[under].tolist()}")
    promised = TARGET[scheme] * _condition(xs, f, df) * np.abs(df)
    loose = (bound > 1e4 * actual) & (bound > 10 * promised)  # a lucky exact hit makes any ratio huge
    assert not loose.any(), (f"{scheme} on {CASES[case][0]}: at x={xs[loose].tolist()} the estimate "
                             f"{bound[loose].tolist()} is loose against {actual[loose].tolist()}")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_error_estimates_are_typically_tight(scheme):
    """The median ratio estimate / true error stays within three orders of magnitude."""
    ratios = []
    for case in CASES:
        xs = _random_points(case, n=20, seed=1)
        _, df = _truth(case, xs)
        fd = _fd(case, xs, scheme)
        actual = np.abs(np.diag(fd.jacobian) - df)
        keep = actual > 0  # an exact hit has no ratio
        ratios.extend(np.diag(fd.error)[keep] / actual[keep])
    assert 1 <= np.median(ratios) <= 1e3, np.median(ratios)


def test_cancellation_inside_the_expression_is_in_the_estimate():
    """log(1+x**2) near 0 rounds 1+x**2 to about 1e-16 absolute, far above f's own ulp: a
    rounding floor from f's magnitude alone would under-estimate central's error here."""
    xs = np.array([0.0025055384521589725, -0.0185, 0.004318029828865242])
    _, df = _truth("exp-sin-log", xs)
    fd = _fd("exp-sin-log", xs, "central")
    actual = np.abs(np.diag(fd.jacobian) - df)
    assert np.all(np.diag(fd.error) >= actual)
    assert np.all(actual > 1e3 * np.finfo(float).eps * np.abs(df))  # the case really is ill-conditioned


# ---- the complex step's fallback ---------------------------------------------------------------------------

@pytest.mark.parametrize("expr,at,blocker", [
    ("abs(x)", {"x": -1.5}, "abs"),
    ("relu(x)", {"x": 2.0}, "relu"),
    ("clamp(x, 0, 1)", {"x": 0.5}, "clamp"),
    ("minimum(x, y)", {"x": 1.0, "y": 2.0}, "minimum"),
    ("maximum(x, y)", {"x": 1.0, "y": 2.0}, "maximum"),
    ("where(x > 0, x**2, x)", {"x": 1.5}, "comparison"),
], ids=["abs", "relu", "clamp", "minimum", "maximum", "where"])
def test_complex_step_falls_back_to_richardson_with_a_diagnostic(expr, at, blocker):
    (check,) = check_expression(expr, at, fd="complex").checks
    assert check.extra["fd_scheme"] == "richardson"
    (diag,) = [d for d in check.diagnostics if d.code == "fd_fallback"]
    assert blocker in diag.message and "richardson" in diag.message
    assert check.passed  # away from the kinks the fallback still checks the gradient


def test_complex_fallback_in_the_json_report(run_cli, strict_json):
    code, out, _ = run_cli("check", "x*relu(x)", "--at", "x=2", "--fd", "complex", "--json")
    assert code == 0
    (check,) = strict_json(out)["checks"]
    assert check["fd_scheme"] == "richardson"
    assert [d["code"] for d in check["diagnostics"]].count("fd_fallback") == 1
    g = check["gradients"][0]
    assert g["finite_difference"] == pytest.approx(4.0, rel=1e-10)
    assert isinstance(g["fd_error_estimate"], float) and 0 < g["fd_error_estimate"] < 1e-8


# ---- --eps: relative, and applied as said ----------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["central", "forward", "richardson", "complex"])
@pytest.mark.parametrize("x", [0.1, -1.0, 100.0, -2.5e4])
def test_eps_steps_every_element_by_eps_times_max_1_abs_x(scheme, x):
    eps = 1e-4 if scheme != "complex" else 1e-30
    fd = _fd("sin", [x], scheme, eps=eps)
    h = fd.steps[0]
    nominal = eps * max(1.0, abs(x))
    # x + h must represent the step exactly, so h may move by half an ulp of x
    assert abs(h - nominal) <= np.spacing(abs(x)), (h, nominal)
    assert fd.entry_steps[0, 0] == h


@pytest.mark.parametrize("scheme,expected", [
    ("central", 3 * 10.0**2 + 1.0),              # (f(x+h) - f(x-h)) / 2h = 3x^2 + h^2, h = 1
    ("forward", 3 * 10.0**2 + 3 * 10.0 + 1.0),   # (f(x+h) - f(x)) / h = 3x^2 + 3xh + h^2
    ("complex", 3 * 10.0**2 - 1.0),              # Im (x + ih)^3 / h = 3x^2 - h^2
])
def test_eps_is_relative_end_to_end(run_cli, strict_json, scheme, expected):
    """--eps 0.1 at x = 10 steps by h = 0.1 * 10 = 1, and the cubic's difference quotients
    show exactly which h was used (h = 0.1 would give 300.01, 303.01, 299.99)."""
    code, out, _ = run_cli("check", "x**3", "--at", "x=10", "--fd", scheme, "--eps", "0.1", "--json")
    g = strict_json(out)["checks"][0]["gradients"][0]
    assert g["finite_difference"] == pytest.approx(expected, rel=1e-12)
    # the long step's truncation error is real, and the estimate owns up to it
    assert g["fd_error_estimate"] >= abs(expected - 300.0)
    assert code == 0


def test_eps_below_one_is_absolute_for_small_x(run_cli, strict_json):
    """For |x| <= 1 the relative rule is absolute: x = 0.5, --eps 0.1, h = 0.1."""
    code, out, _ = run_cli("check", "x**3", "--at", "x=0.5", "--fd", "central", "--eps", "0.1", "--json")
    g = strict_json(out)["checks"][0]["gradients"][0]
    assert g["finite_difference"] == pytest.approx(3 * 0.25 + 0.01, rel=1e-12)


def test_eps_help_says_relative(run_cli):
    code, out, _ = run_cli("check", "--help")
    assert code == 0
    assert "RELATIVE" in out and "max(1,|x|)" in out.replace(" ", "")
