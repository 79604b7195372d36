"""JUnit XML: parsed back with ElementTree, one testcase per check, failures carry the table."""

from __future__ import annotations

import math
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from gradcheck_cli.checker import check_expression
from gradcheck_cli.errors import UserInputError
from gradcheck_cli.render import junit
from gradcheck_cli.report import CheckResult, Diagnostic, Report


@pytest.fixture(scope="module")
def mixed_report():
    ok = check_expression("x**2", {"x": 3.0}, name="square").checks[0]
    # float32 sin with zero tolerance cannot match the exact cos(0.3): a real failure.
    bad = check_expression("sin(x)", {"x": 0.3}, dtype="float32", atol=0.0, rtol=0.0, name="sin-f32").checks[0]
    noted = check_expression("x**2 + detach(x**2)", {"x": 1.0}, name="detach").checks[0]
    return Report((ok, bad, noted))


def _parse(report):
    root = ET.fromstring(junit.render(report))
    return root, root.find("testsuite")


def test_one_testcase_per_check_and_counts(mixed_report):
    root, suite = _parse(mixed_report)
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "0"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["square", "sin-f32", "detach"]
    assert all(c.get("classname") == "gradcheck.expression" for c in cases)
    assert all(float(c.get("time")) >= 0 for c in cases)


def test_failure_carries_the_rendered_table_with_the_wrong_numbers(mixed_report):
    _, suite = _parse(mixed_report)
    failed = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["sin-f32"]
    failure = failed[0].find("failure")
    assert failure.get("type") == "gradient_mismatch"  # the first failing code, not a fixed name
    assert failure.get("message").startswith("gradient_mismatch: d/dx: 1 of 1 element(s) out of tolerance")
    # the exact derivative at the point float32 holds (0.3 rounded), to the table's 10 digits
    assert f"{math.cos(float(np.float32(0.3))):.10g}" in failure.text
    assert "FAIL" in failure.text


def test_passing_check_with_diagnostics_keeps_them_in_system_out(mixed_report):
    _, suite = _parse(mixed_report)
    detach = [c for c in suite.findall("testcase") if c.get("name") == "detach"][0]
    assert detach.find("failure") is None
    assert "stop_gradient" in detach.find("system-out").text


def _handmade(name: str, *diags: Diagnostic, passed: bool = False) -> CheckResult:
    return CheckResult(name, "op", passed, "float64", {"x": np.asarray(1.0)}, {}, (), tuple(diags),
                       {"spec_file": "suite/ops.toml"})


RAISED = Diagnostic("op_error", "the op raised in backward: ValueError: boom (at ops.py:3, in backward)", None,
                    "failure", {"type": "ValueError", "message": "boom"})
NOTE = Diagnostic("symbolic_unavailable", "no --reference: symbolic is null")
WARN = Diagnostic("precision_loss", "the float32 forward is far from the exact one")

# (diagnostics of a failed check, element, type, message fragments, fragments never in the message)
JUNIT_CASES = [
    pytest.param((NOTE, Diagnostic("nondeterministic", "the backward differs between runs"), WARN), "failure",
                 "nondeterministic", ["nondeterministic: the backward differs"], ["symbolic_unavailable",
                                                                                  "precision_loss"],
                 id="first-failing-code-and-failures-only"),
    pytest.param((NOTE, RAISED), "error", "ValueError", ["op_error", "ValueError: boom"], ["symbolic_unavailable",
                                                                                             "max abs error"],
                 id="op-raised-is-an-error-with-the-exception-type"),
    pytest.param((Diagnostic("op_error", "the op raised in forward: KeyError: 'w' (at ops.py:9, in forward)"),),
                 "error", "KeyError", ["KeyError"], ["nan"], id="op-raised-type-read-from-the-message"),
    pytest.param((Diagnostic("worker_crashed", "the worker process running this check killed by signal SIGSEGV"),),
                 "error", "worker_crashed", ["SIGSEGV"], [], id="worker-crash-is-an-error"),
    pytest.param((Diagnostic("timeout", "the check ran past its timeout of 1 s"),), "error", "timeout",
                 ["timeout: the check ran past"], [], id="timeout-is-an-error"),
    pytest.param((Diagnostic("gradient_mismatch", "d/dx: 3 of 3 Jacobian entries out of tolerance", "x"),
                  Diagnostic("scale_error", "d/dx: autograd is 6x the reference", "x"), WARN), "failure",
                 "gradient_mismatch", ["gradient_mismatch: d/dx: 3 of 3", "scale_error: d/dx"], ["precision_loss"],
                 id="every-failure-in-order"),
]


@pytest.mark.parametrize("diags, element, kind, present, absent", JUNIT_CASES)
def test_failed_check_type_and_headline(diags, element, kind, present, absent):
    root, suite = _parse(Report((_handmade("c", *diags),)))
    case = suite.find("testcase")
    assert case.get("classname") == "gradcheck.op" and case.get("file") == "suite/ops.toml"
    node = case.find(element)
    other = "error" if element == "failure" else "failure"
    assert node is not None and case.find(other) is None, ET.tostring(case, encoding="unicode")[:500]
    assert node.get("type") == kind
    for fragment in present:
        assert fragment in node.get("message")
    for fragment in absent:
        assert fragment not in node.get("message")
    counts = (1, 0) if element == "failure" else (0, 1)
    assert (int(suite.get("failures")), int(suite.get("errors"))) == counts
    assert (int(root.get("failures")), int(root.get("errors")), int(root.get("tests"))) == counts + (1,)


def test_an_op_that_raised_is_a_junit_error_end_to_end(tmp_path, run_cli):
    """The real op gate: the backward raises, the testcase is <error type="RuntimeError">."""
    ops = tmp_path / "raising.py"
    ops.write_text(textwrap.dedent("""
        import torch
        class Raises(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return 2 * x
            @staticmethod
            def backward(ctx, g):
                raise RuntimeError("boom in backward")
        """), encoding="utf-8")
    code, _, _ = run_cli("op", f"{ops}:Raises", "--at", "x=randn(3)", "--junit", str(tmp_path / "r.xml"))
    assert code == 1
    case = ET.parse(tmp_path / "r.xml").getroot().find("testsuite").find("testcase")
    error = case.find("error")
    assert error is not None and case.find("failure") is None
    assert error.get("type") == "RuntimeError" and "boom in backward" in error.get("message")
    assert "out of tolerance" not in error.get("message")


def test_characters_xml_cannot_hold_do_not_break_the_file():
    report = Report((_handmade("bell\x07name", RAISED),))
    _, suite = _parse(report)  # parses: the control character was replaced
    assert suite.find("testcase").get("name") == "bell\ufffdname"


def test_write_to_an_unwritable_path_is_a_user_error(tmp_path, mixed_report):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(UserInputError, match="cannot write --junit file"):
        junit.write(mixed_report, tmp_path / "a-file" / "report.xml")


def test_write_creates_the_missing_folder(tmp_path, mixed_report):
    junit.write(mixed_report, tmp_path / "missing-dir" / "report.xml")
    assert ET.parse(tmp_path / "missing-dir" / "report.xml").getroot().tag == "testsuites"
