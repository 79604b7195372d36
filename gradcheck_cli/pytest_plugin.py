"""The pytest plugin (entry point `pytest11`): a `gradcheck` fixture.

    def test_swish(gradcheck):
        gradcheck.assert_expression("x*sigmoid(x)", at={"x": [0.5, -1.0]})
        gradcheck.assert_op(my_swish, torch.randn(4, dtype=torch.float64))

A failing assertion's message is the rendered table, so pytest shows which element is
wrong and all three methods' numbers for it.  Importing this module is cheap: torch and
sympy load only when a helper runs.
"""

from __future__ import annotations

from typing import Any

import pytest


class GradcheckHelper:
    """The `gradcheck` fixture's value: the Python API, with optional default options.

    `gradcheck.with_options(dtype="float32")` returns a helper whose calls use those
    options unless a call gives its own.
    """

    def __init__(self, **defaults: Any):
        self.defaults = dict(defaults)

    def with_options(self, **defaults: Any) -> "GradcheckHelper":
        """A helper whose calls default to these options (a call's own options win)."""
        return GradcheckHelper(**{**self.defaults, **defaults})

    def _merged(self, options: dict) -> dict:
        return {**self.defaults, **options}

    def check_expression(self, expr: str, at: Any = None, **options: Any):
        """gradcheck_cli.check_expression: the Report, whatever the verdict."""
        import gradcheck_cli

        return gradcheck_cli.check_expression(expr, at, **self._merged(options))

    def check_op(self, fn, *tensors, **options: Any):
        """gradcheck_cli.check_op: the Report, whatever the verdict."""
        import gradcheck_cli

        return gradcheck_cli.check_op(fn, *tensors, **self._merged(options))

    def assert_expression(self, expr: str, at: Any = None, **options: Any):
        """Fail the test with the rendered table unless every gradient agrees."""
        import gradcheck_cli

        __tracebackhide__ = True  # pytest shows the test's line, not this helper's
        report = gradcheck_cli.check_expression(expr, at, **self._merged(options))
        _assert_passed(report)
        return report

    def assert_op(self, fn, *tensors, **options: Any):
        """Fail the test with the rendered table unless the op's backward is right."""
        import gradcheck_cli

        __tracebackhide__ = True
        report = gradcheck_cli.check_op(fn, *tensors, **self._merged(options))
        _assert_passed(report)
        return report


def _assert_passed(report) -> None:
    """Raise the API's AssertionError (the rendered table) from here, so the traceback
    pytest prints ends at the test's own line."""
    __tracebackhide__ = True
    from gradcheck_cli import assert_passed

    try:
        assert_passed(report)
    except AssertionError as exc:
        raise AssertionError(str(exc)) from None


@pytest.fixture
def gradcheck() -> GradcheckHelper:
    """Gradient checks for tests: check_expression / check_op return a Report;
    assert_expression / assert_op fail the test with the rendered table."""
    return GradcheckHelper()
