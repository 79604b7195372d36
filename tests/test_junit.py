"""JUnit XML: parsed back with ElementTree, one testcase per check, failures carry the table."""

from __future__ import annotations

import math
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
    assert failure.get("type") == "GradientMismatch"
    assert failure.get("message").startswith("d/dx: max abs error")
    # the exact derivative at the point float32 holds (0.3 rounded), to the table's 10 digits
    assert f"{math.cos(float(np.float32(0.3))):.10g}" in failure.text
    assert "FAIL" in failure.text


def test_passing_check_with_diagnostics_keeps_them_in_system_out(mixed_report):
    _, suite = _parse(mixed_report)
    detach = [c for c in suite.findall("testcase") if c.get("name") == "detach"][0]
    assert detach.find("failure") is None
    assert "stop_gradient" in detach.find("system-out").text


def _handmade(name: str, code: str, passed: bool = False) -> CheckResult:
    return CheckResult(name, "op", passed, "float64", {"x": np.asarray(1.0)}, {}, (),
                       (Diagnostic(code, "the op raised RuntimeError in backward: boom"),),
                       {"spec_file": "suite/ops.toml"})


def test_failure_without_a_gradient_mismatch_is_typed_by_its_diagnostic():
    _, suite = _parse(Report((_handmade("raises", "op_raised"),)))
    case = suite.find("testcase")
    assert case.get("classname") == "gradcheck.op"
    assert case.get("file") == "suite/ops.toml"
    assert case.find("failure").get("type") == "op_raised"
    assert "op_raised" in case.find("failure").get("message")


def test_characters_xml_cannot_hold_do_not_break_the_file():
    report = Report((_handmade("bell\x07name", "op_raised"),))
    _, suite = _parse(report)  # parses: the control character was replaced
    assert suite.find("testcase").get("name") == "bell\ufffdname"


def test_write_to_an_unwritable_path_is_a_user_error(tmp_path, mixed_report):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(UserInputError, match="cannot write --junit file"):
        junit.write(mixed_report, tmp_path / "a-file" / "report.xml")


def test_write_creates_the_missing_folder(tmp_path, mixed_report):
    junit.write(mixed_report, tmp_path / "missing-dir" / "report.xml")
    assert ET.parse(tmp_path / "missing-dir" / "report.xml").getroot().tag == "testsuites"
