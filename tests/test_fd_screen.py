"""--fd auto through reductions (engines/fd_screen.py): every element screened with a short
stencil, the full scheme only where the verdict could turn on it.

Truths are mpmath at 50 digits at the float64 points (hand-derived derivatives, each
checked against mpmath's own numerical derivative), and the full scheme's own numbers
(finite_diff.jacobian) where the screen promises to hand an element over to it.  Work is
counted in rows evaluated, never timed (benchmarks/bench_expr.py times it).
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest

from gradcheck_cli.checker import check_expression
from gradcheck_cli.engines import fd_screen, finite_diff
from gradcheck_cli.expr import parse

DPS = 50
TOL = {"atol": 1e-9, "rtol": 1e-7}  # float64's defaults
TARGET = 1e-13  # the complex step's target (tests/test_finite_diff.py)


def _sig(v):
    return 1 / (1 + mp.exp(-v))


def _var_grad(xs):
    m = mp.fsum(xs) / len(xs)
    return [2 * (v - m) / len(xs) for v in xs]


def _lse_grad(xs):
    total = mp.fsum(mp.exp(v) for v in xs)
    return [mp.exp(v) / total for v in xs]


def _norm_grad(xs):
    r = mp.sqrt(mp.fsum(v**2 for v in xs))
    return [v / r for v in xs]


# name: (expression, f as mpmath over the list, its gradient by hand)
CASES = {
    "variance": ("mean((x - mean(x))**2)", lambda xs: mp.fsum((v - mp.fsum(xs) / len(xs)) ** 2 for v in xs) / len(xs),
                 _var_grad),
    "swish-sum": ("sum(x*sigmoid(x))", lambda xs: mp.fsum(v * _sig(v) for v in xs),
                  lambda xs: [_sig(v) + v * _sig(v) * (1 - _sig(v)) for v in xs]),
    "exp-sin-log": ("sum(exp(sin(x))*log(1+x**2))", lambda xs: mp.fsum(mp.exp(mp.sin(v)) * mp.log(1 + v**2) for v in xs),
                    lambda xs: [mp.exp(mp.sin(v)) * (mp.cos(v) * mp.log(1 + v**2) + 2 * v / (1 + v**2)) for v in xs]),
    "root-sum-squares": ("sum(x**2)**0.5", lambda xs: mp.sqrt(mp.fsum(v**2 for v in xs)), _norm_grad),
    "norm": ("norm(x)", lambda xs: mp.sqrt(mp.fsum(v**2 for v in xs)), _norm_grad),
    "logsumexp": ("logsumexp(x)", lambda xs: mp.log(mp.fsum(mp.exp(v) for v in xs)), _lse_grad),
}


def _points(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n) * (1 + seed)


def _truth(case: str, x: np.ndarray) -> np.ndarray:
    with mp.workdps(DPS):
        return np.array([float(g) for g in CASES[case][2]([mp.mpf(float(v)) for v in x])])


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_gradients_match_mpmath_numerical_derivatives(case):
    _, f, df = CASES[case]
    xs = [mp.mpf(float(v)) for v in _points(5, 0)]
    with mp.workdps(DPS):
        grad = df(xs)
        for j in range(len(xs)):
            moved = lambda t, j=j: f(xs[:j] + [t] + xs[j + 1:])  # noqa: E731
            assert abs(mp.diff(moved, xs[j]) - grad[j]) <= mp.mpf(10) ** -30 * max(1, abs(grad[j]))


def _screen(expr: str, x: np.ndarray, scheme="complex", tol=TOL, autograd=None, out_shape=()) -> finite_diff.FDResult:
    return fd_screen.screened_jacobian(parse(expr), {"x": x}, "x", out_shape, scheme=scheme,
                                       max_numel=x.size, seed=0, tol=tol, autograd=autograd)


class RowCounter:
    """Counts the rows (perturbed points) every batched evaluation is given."""

    def __init__(self, monkeypatch):
        self.rows = 0
        original = finite_diff.Batch.run

        def run(batch, replace):
            self.rows += sum(int(t.shape[0]) for t in replace.values())
            return original(batch, replace)

        monkeypatch.setattr(finite_diff.Batch, "run", run)


# ---- accuracy and honest error estimates ---------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_screened_complex_step_against_mpmath(case, seed):
    """Every entry within the complex step's target of the exact derivative (scaled by how
    far the entry sits below the gradient's typical size: near a zero of the derivative
    the terms that cancel there keep their rounding), and every error estimate at least
    the true error, without being absurdly loose."""
    x = _points(500, seed)
    truth = _truth(case, x)
    fd = _screen(CASES[case][0], x)
    assert fd.scheme == "complex" and fd.sampled is None
    est, bound = fd.jacobian[0], fd.error[0]
    actual = np.abs(est - truth)
    scale = np.maximum(np.abs(truth), np.median(np.abs(truth)))
    assert np.all(actual <= TARGET * scale), np.max(actual / scale)
    under = ~(bound >= actual)
    assert not under.any(), (x[under], bound[under], actual[under])
    loose = (bound > 1e4 * actual) & (bound > 10 * TARGET * scale)  # a lucky exact hit makes any ratio huge
    assert not loose.any(), (x[loose], bound[loose], actual[loose])


def test_error_estimates_are_typically_tight():
    """The median ratio estimate / true error over every case stays within three orders of magnitude."""
    ratios = []
    for case in CASES:
        x = _points(300, 5)
        fd = _screen(CASES[case][0], x)
        actual = np.abs(fd.jacobian[0] - _truth(case, x))
        keep = actual > 0
        ratios.extend(fd.error[0][keep] / actual[keep])
    assert 1 <= np.median(ratios) <= 1e3, np.median(ratios)


def test_the_screen_gives_the_full_schemes_values():
    """The screen's estimate is the full complex scheme's own (h = 1e-20 max(1, |x|)): only
    the error estimate is measured differently."""
    x = _points(400, 0)
    screened = _screen("sum(exp(sin(x))*log(1+x**2))", x)
    full = finite_diff.jacobian(parse("sum(exp(sin(x))*log(1+x**2))"), {"x": x}, "x", (), scheme="complex",
                                max_numel=x.size)
    np.testing.assert_array_equal(screened.jacobian, full.jacobian)


def test_a_jacobian_through_a_reduction():
    """x - mean(x): every output depends on every input; the exact Jacobian is I - 1/N."""
    x = _points(1100, 3)
    fd = _screen("x - mean(x)", x, out_shape=(1100,))
    exact = np.eye(1100) - 1 / 1100
    np.testing.assert_allclose(fd.jacobian, exact, rtol=0, atol=1e-15)
    assert np.all(fd.error >= np.abs(fd.jacobian - exact))


# ---- what goes to the full scheme --------------------------------------------------------------------------

def test_about_one_row_per_element(monkeypatch):
    """About 1 + 4/GROUP complex rows per element (the full scheme evaluates 10), and
    nothing refined when autograd agrees."""
    x = _points(1024, 0)
    counter = RowCounter(monkeypatch)
    fd = _screen("mean((x - mean(x))**2)", x, autograd=_truth("variance", x).reshape(1, -1))
    # (the unperturbed point is no row; derivatives of unlike sizes, the variance's near the
    # mean, take a few more groups than N / GROUP)
    assert x.size * (1 + 4 / fd_screen.GROUP) <= counter.rows <= 1.35 * x.size
    assert fd.scheme == "complex"


def test_disagreeing_with_autograd_sends_the_element_to_the_full_scheme():
    """Where autograd differs from the screen by more than SHARE of the tolerance, the
    element's numbers are the full scheme's; everywhere else the screen's stand."""
    x = _points(600, 1)
    truth = _truth("swish-sum", x)
    wrong = truth.copy()
    bad = [3, 17, 400]
    wrong[bad] *= 1 + 1e-6
    screened = _screen("sum(x*sigmoid(x))", x, autograd=wrong.reshape(1, -1))
    plain = _screen("sum(x*sigmoid(x))", x)
    full = finite_diff.jacobian(parse("sum(x*sigmoid(x))"), {"x": x}, "x", (), scheme="complex", max_numel=x.size,
                                elements=np.array(bad))
    np.testing.assert_array_equal(screened.error[:, bad], full.error[:, bad])
    keep = np.setdiff1d(np.arange(x.size), bad)
    np.testing.assert_array_equal(screened.error[:, keep], plain.error[:, keep])


def test_a_tolerance_finer_than_the_screen_refines_every_element():
    x = _points(400, 2)
    screened = _screen("sum(x*sigmoid(x))", x, tol={"atol": 0.0, "rtol": 0.0})
    full = finite_diff.jacobian(parse("sum(x*sigmoid(x))"), {"x": x}, "x", (), scheme="complex", max_numel=x.size,
                                elements=np.arange(x.size))
    np.testing.assert_array_equal(screened.jacobian, full.jacobian)
    np.testing.assert_array_equal(screened.error, full.error)


def test_elements_with_a_tiny_value_go_to_the_full_scheme():
    """|x| < 1e-12 gives the complex step a second candidate step: the full scheme chooses."""
    x = _points(400, 0)
    x[7] = 3e-300
    fd = _screen("sum(log(x**2 + 1e-300))", x)
    full = finite_diff.jacobian(parse("sum(log(x**2 + 1e-300))"), {"x": x}, "x", (), scheme="complex",
                                max_numel=x.size, elements=np.array([7]))
    assert fd.jacobian[0, 7] == full.jacobian[0, 7] and fd.error[0, 7] == full.error[0, 7]


# ---- kinked expressions: central differences first ------------------------------------------------------

def test_a_kink_in_a_reduction_is_found_and_handed_over(monkeypatch):
    """sum(abs(x)*x) with an element at 0: the screen's stencil crosses the kink, and the
    full scheme reports it (mask and one-sided slopes); the rest keep central differences."""
    x = _points(600, 0)
    x[5] = 0.0
    fd = _screen("sum(abs(x)*x)", x, scheme="richardson", tol={"atol": 1e-5, "rtol": 1e-4})
    assert fd.scheme in ("central", "central+richardson")
    truth = 2 * np.abs(x)
    ok = np.arange(x.size) != 5
    assert np.all(np.abs(fd.jacobian[0, ok] - truth[ok]) <= fd.error[0, ok])
    assert np.all(np.abs(fd.jacobian[0, ok] - truth[ok]) <= 1e-8 * np.maximum(1, truth[ok]))
    full = finite_diff.jacobian(parse("sum(abs(x)*x)"), {"x": x}, "x", (), scheme="richardson",
                                max_numel=x.size, elements=np.array([5]))
    assert fd.jacobian[0, 5] == full.jacobian[0, 5]
    assert fd.kink_mask[0, 5] == full.kink_mask[0, 5]


def test_kinks_report_through_the_check():
    x = _points(800, 1)
    x[11] = 0.0
    (check,) = check_expression("sum(relu(x)*x)", at={"x": x}, dtype="float32").checks
    assert check.passed, [d.message for d in check.diagnostics]
    assert "non_differentiable" in check.codes()
    assert check.extra["fd_scheme"] in ("central", "central+richardson")


def test_when_the_pilot_mostly_needs_the_full_scheme_the_rest_skip_the_screen(monkeypatch):
    """mean(relu(x)*x**2) at float64's tolerance: central differences of an O(1) mean cannot
    resolve O(1/N) derivatives, so after the pilot every element goes to richardson: the
    result is the full scheme's, and the screen cost only the pilot."""
    x = _points(3000, 0)
    root = parse("mean(relu(x)*x**2)")
    counter = RowCounter(monkeypatch)
    fd = _screen("mean(relu(x)*x**2)", x, scheme="richardson")
    screened_rows = counter.rows
    counter.rows = 0
    full = finite_diff.jacobian(root, {"x": x}, "x", (), scheme="richardson", max_numel=x.size)
    assert fd.scheme == "central+richardson"
    np.testing.assert_array_equal(fd.jacobian, full.jacobian)
    assert screened_rows <= counter.rows + fd_screen.PILOT * len(fd_screen.CENTRAL)


# ---- where the screen does not apply ------------------------------------------------------------------------

def test_small_problems_keep_the_full_scheme():
    x = _points(30, 0)
    tol = TOL
    fd = fd_screen.jacobian_for_check(parse("sum(x*sigmoid(x))"), {"x": x}, "x", (), requested="auto",
                                      scheme="complex", eps=None, max_numel=x.size, seed=0, tol=tol)
    full = finite_diff.jacobian(parse("sum(x*sigmoid(x))"), {"x": x}, "x", (), scheme="complex", max_numel=x.size)
    np.testing.assert_array_equal(fd.error, full.error)


@pytest.mark.parametrize("requested,eps", [("complex", None), ("central", None), ("auto", 1e-6)])
def test_an_explicit_scheme_or_step_keeps_the_full_scheme(requested, eps):
    x = _points(500, 0)
    scheme = "complex" if requested in ("auto", "complex") else requested
    fd = fd_screen.jacobian_for_check(parse("sum(x*sigmoid(x))"), {"x": x}, "x", (), requested=requested,
                                      scheme=scheme, eps=eps, max_numel=x.size, seed=0, tol=TOL)
    full = finite_diff.jacobian(parse("sum(x*sigmoid(x))"), {"x": x}, "x", (), scheme=scheme, eps=eps,
                                max_numel=x.size)
    np.testing.assert_array_equal(fd.error, full.error)


# ---- end to end ----------------------------------------------------------------------------------------------

def test_the_issues_check_at_scale(monkeypatch):
    """mean((x - mean(x))**2) at N = 3000 (sampled): passes by the complex step, and the
    differenced elements match the exact gradient."""
    (check,) = check_expression("mean((x - mean(x))**2)", at={"x": "randn(3000)"}).checks
    assert check.passed and check.extra["fd_scheme"] == "complex"
    (g,) = check.gradients
    x = np.asarray(check.point["x"])
    truth = _truth("variance", x)
    have = ~np.isnan(g.finite_difference)
    assert have.sum() >= 16
    assert np.all(np.abs(g.finite_difference[have] - truth[have]) <= g.fd_error_estimate[have])


# ---- the full scheme: the same numbers, fewer rows ------------------------------------------------------

@pytest.mark.parametrize("scheme", ["central", "richardson"])
def test_elements_near_one_are_planned_with_one_candidate(monkeypatch, scheme):
    """|x| within a factor 3 of 1 has one candidate scale: its rows are the stencil and the
    probe once (richardson 6 + 8), not three copies of the stencil (18 + 8)."""
    x = np.linspace(0.5, 2.0, 300)
    counter = RowCounter(monkeypatch)
    finite_diff.jacobian(parse("sum(x*sigmoid(x))"), {"x": x}, "x", (), scheme=scheme, max_numel=x.size)
    from gradcheck_cli.engines.fd_steps import PROBE_POINTS, STENCILS

    assert counter.rows == x.size * (len(STENCILS[scheme]) + len(PROBE_POINTS) - 1)


@pytest.mark.parametrize("scheme", ["central", "richardson", "complex"])
def test_each_elements_numbers_do_not_depend_on_the_others(scheme):
    """Mixed sizes (near 1 and far from it, planned apart): every element's estimate is what
    differencing that element alone gives, and so is its error estimate, up to how the
    rounding it measures falls in a batch of another size."""
    x = np.random.default_rng(4).standard_normal(60) * np.geomspace(1e-3, 1e3, 60)
    root = parse("sum(exp(sin(x))*log(1+x**2))")
    together = finite_diff.jacobian(root, {"x": x}, "x", (), scheme=scheme, max_numel=x.size)
    for j in (0, 17, 29, 30, 44, 59):
        alone = finite_diff.jacobian(root, {"x": x}, "x", (), scheme=scheme, max_numel=x.size, elements=np.array([j]))
        assert together.jacobian[0, j] == alone.jacobian[0, j]
        assert together.error[0, j] == pytest.approx(alone.error[0, j], rel=0.05)
