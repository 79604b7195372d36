"""gradcheck: tells you whether gradients are right.

    import gradcheck_cli
    report = gradcheck_cli.check_expression("sigmoid(w*x+b)", at={"w": 2.0, "b": 1.0, "x": 6.7},
                                            wrt=["w", "b"], loss="bce", target=0.0)
    report.passed, report.to_dict()

Heavy modules (torch, sympy) load on first use, so importing this package is cheap.
"""

from __future__ import annotations

from gradcheck_cli.versions import GRADCHECK_VERSION as __version__

__all__ = ["check_expression", "check_op", "check_module", "assert_expression", "assert_op", "assert_module",
           "Report", "CheckResult", "GradientResult", "Diagnostic", "UserInputError", "__version__"]


def check_expression(expr, at=None, **options):
    """Gradients of `expr` by autograd, symbolic and finite differences, compared (a Report)."""
    from gradcheck_cli.checker import check_expression as run

    return run(expr, at, **options)


def check_op(fn, *tensors, **options):
    """The custom-op gate: `fn`'s backward (and forward) against references (a Report)."""
    from gradcheck_cli.op.api import check_op as run

    return run(fn, *tensors, **options)


def check_module(module, *inputs, **options):
    """An nn.Module's gradients w.r.t. its inputs and every parameter that requires grad
    (a Report); the module itself is never changed."""
    from gradcheck_cli.op.api import check_module as run

    return run(module, *inputs, **options)


def assert_expression(expr, at=None, **options):
    """Like check_expression, but raise AssertionError with the rendered table on failure."""
    report = check_expression(expr, at, **options)
    assert_passed(report)
    return report


def assert_op(fn, *tensors, **options):
    """Like check_op, but raise AssertionError with the rendered table on failure."""
    report = check_op(fn, *tensors, **options)
    assert_passed(report)
    return report


def assert_module(module, *inputs, **options):
    """Like check_module, but raise AssertionError with the rendered table on failure."""
    report = check_module(module, *inputs, **options)
    assert_passed(report)
    return report


def assert_passed(report) -> None:
    if not report.passed:
        from gradcheck_cli.render.table import render_text

        raise AssertionError("gradient check failed\n" + render_text(report))


def __getattr__(name):
    if name in ("Report", "CheckResult", "GradientResult", "Diagnostic"):
        from gradcheck_cli import report

        return getattr(report, name)
    if name == "UserInputError":
        from gradcheck_cli.errors import UserInputError

        return UserInputError
    raise AttributeError(name)
