"""The pytest plugin, run by pytest's own `pytester` on user test files.

The plugin is found through its `pytest11` entry point (nothing in the user's files
loads it), and a failing assertion's message is the rendered table: the test checks
that pytest's output holds the wrong element's numbers, derived by hand.
"""

from __future__ import annotations

import math
from pathlib import Path


pytest_plugins = ["pytester"]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


SAMPLES = Path(__file__).resolve().parent.parent / "samples"
# the user's op module: the sample ops, a buggy swish and a right one, side by side
BUGGY_OP = "\n".join((SAMPLES / f).read_text(encoding="utf-8")
                     for f in ("specs_failing/ops/buggy_swish.py", "ops/swish.py"))

USER_TESTS = '''
import torch

from myops import BuggySwish, Swish


def test_expression_passes(gradcheck):
    report = gradcheck.assert_expression("x*sigmoid(x)", at={"x": [0.5, -1.0]})
    assert report.passed


def test_check_returns_a_report_without_raising(gradcheck):
    report = gradcheck.check_expression("sin(x)", at={"x": 0.3}, dtype="float32", atol=0.0, rtol=0.0)
    assert not report.passed


def test_good_op_passes(gradcheck):
    gradcheck.assert_op(Swish.apply, torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64))


def test_buggy_op(gradcheck):
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5], dtype=torch.float64)
    gradcheck.assert_op(BuggySwish.apply, x)


def test_with_options(gradcheck):
    strict = gradcheck.with_options(dtype="float32", atol=0.0, rtol=0.0)
    assert not strict.check_expression("sin(x)", at={"x": 0.3}).passed
    assert strict.check_expression("sin(x)", at={"x": 0.3}, dtype="float64", atol=1e-9).passed
'''


def test_user_suite_only_the_buggy_op_fails_with_the_worst_elements_values(pytester):
    """The user's tests run in a fresh pytest process (torch cannot be imported twice in
    one, which pytester's in-process runs would do).  The worst element is x = -2
    (index 0): the buggy backward gives sigmoid(-2), the truth is
    sigmoid(-2)*(1 - 2*(1 - sigmoid(-2))), of the other sign."""
    pytester.makepyfile(myops=BUGGY_OP, test_user=USER_TESTS)
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    outcome.assert_outcomes(passed=4, failed=1)
    outcome.stdout.fnmatch_lines(["*FAILED test_user.py::test_buggy_op*"])
    text = outcome.stdout.str()
    s = sigmoid(-2.0)
    wrong, right = s, s * (1 - 2.0 * (1 - s))
    assert "gradient check failed" in text
    assert f"{wrong:.10g}" in text, text
    assert f"{right:.10g}" in text, text
    failing_rows = [line for line in text.splitlines() if "FAIL" in line and f"{wrong:.10g}" in line]
    assert failing_rows, "the row of the wrong element is marked FAIL"
    assert f"{right:.10g}" in failing_rows[0]  # on the same row: autograd and the truth side by side
    # the traceback ends at the user's line, not inside gradcheck
    assert "gradcheck.assert_op(BuggySwish.apply, x)" in text
    assert "pytest_plugin.py" not in text


def test_fixture_is_listed_with_its_docstring(pytester):
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["gradcheck*", "*check_expression*"])
