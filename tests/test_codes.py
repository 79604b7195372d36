"""One registry of diagnostic codes (gradcheck_cli/codes.py), and severities that are the
truth of each report (issue 15).

The audit in tests/report_audit.py checks every report the suite makes; these tests show
it can fail, that the registry, the source and the published schema agree, and that
severity says which diagnostics failed a check, on real checks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import report_audit
from gradcheck_cli import check_expression, check_op
from gradcheck_cli.codes import CODES, SEVERITIES, default_severity, note_severity, unknown_code_message
from gradcheck_cli.report import CheckResult, Diagnostic, GradientResult, Report
from schema_util import load_schema, validate_report

PACKAGE = Path(__file__).resolve().parent.parent / "gradcheck_cli"
CALLS = {"Diagnostic", "fail", "note"}  # what creates a diagnostic with a code literal first
CODE = re.compile(r"[a-z][a-z0-9_]*")  # a code (a parse error's fail("message") has spaces)


def codes_in_source() -> dict:
    """code -> 'file:line' for every string literal given as a code where diagnostics are made:
    Diagnostic("code", ...), pt.fail("code", ...), pt.note("code", ...), and the codes
    suite/failures.py returns."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in CALLS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) and CODE.fullmatch(node.args[0].value):
                found.setdefault(node.args[0].value, f"{path.name}:{node.lineno}")
        if path.name == "failures.py":
            for node in ast.walk(tree):
                if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and node.value.elts \
                        and isinstance(node.value.elts[0], ast.Constant):
                    found.setdefault(node.value.elts[0].value, f"{path.name}:{node.lineno}")
    return found


def test_every_code_in_the_source_is_in_the_registry():
    missing = {code: where for code, where in codes_in_source().items() if code not in CODES}
    assert not missing, "\n".join(f"{where}: {unknown_code_message(code)}" for code, where in missing.items())


def test_the_source_scan_finds_the_codes_it_should():
    """The scan itself works (so the test above can fail): it sees codes from each stage."""
    found = codes_in_source()
    for code in ("gradient_mismatch", "op_error", "worker_crashed", "timeout", "precision_loss", "bce_clamped",
                 "scale_error", "nondeterministic", "input_rounded", "stop_gradient"):
        assert code in found, code


@pytest.mark.parametrize("code, entry", sorted(CODES.items()))
def test_every_registry_row_is_well_formed(code, entry):
    assert code.replace("_", "").isalnum() and code == code.lower()
    assert entry.severity in SEVERITIES
    assert entry.meaning and "\n" not in entry.meaning and len(entry.meaning) <= 120
    assert not entry.crash or entry.severity == "failure"  # only a failure can mean "could not finish"


def test_the_published_schema_lists_every_code():
    code = load_schema()["$defs"]["code"]
    assert code["enum"] == sorted(CODES)
    assert {k: v["severity"] for k, v in code["x-gradcheck-codes"].items()} == {k: v.severity for k, v in CODES.items()}


def _check(*diags, passed=False) -> CheckResult:
    return CheckResult("handmade", "expression", passed, "float64", {"x": np.asarray(1.0)},
                       {"torch": np.asarray(1.0), "symbolic": None}, (), tuple(diags))


def test_the_schema_rejects_an_unknown_code_and_a_missing_severity():
    doc = {"schema_version": 1, "passed": False, "checks": [{
        "name": "c", "kind": "expression", "passed": False, "dtype": "float64", "point": {}, "value": {},
        "gradients": [], "diagnostics": [{"code": "no_such_code", "severity": "failure", "message": "m"}]}],
        "tool": {"gradcheck": "0", "torch": None, "sympy": None, "python": "3"}}
    with pytest.raises(AssertionError, match="no_such_code"):
        validate_report(doc)
    doc["checks"][0]["diagnostics"] = [{"code": "gradient_mismatch", "message": "m"}]
    with pytest.raises(AssertionError, match="severity"):
        validate_report(doc)


def test_the_audit_fails_a_report_with_an_unregistered_code_and_says_where_to_add_it():
    with report_audit.captured() as found:
        Report((_check(Diagnostic("brand_new_code", "what happened", None, "failure")),))
    assert len(found) == 1
    assert "'brand_new_code' is not in the registry" in found[0]
    assert "add one line to CODES in gradcheck_cli/codes.py" in found[0]
    assert "'brand_new_code': Code(F, " in found[0]


@pytest.mark.parametrize("diags, passed, problem", [
    ((Diagnostic("gradient_mismatch", "m", None, "failure"),), True, "passed, yet"),
    ((Diagnostic("precision_loss", "m"),), False, "failed, yet none"),
    ((Diagnostic("precision_loss", "m", None, "fatal"),), True, "severity 'fatal'"),
], ids=["passed-with-a-failure", "failed-without-one", "bad-severity"])
def test_the_audit_fails_severities_that_are_not_the_truth(diags, passed, problem):
    with report_audit.captured() as found:
        Report((_check(*diags, passed=passed),))
    assert any(problem in f for f in found), found


def test_the_audit_validates_every_json_report_made():
    bad = _check(Diagnostic("gradient_mismatch", "m", None, "failure"))
    grad = GradientResult("x", (), (), (), np.asarray(1.0), None, None, None, None, float("nan"), 0.0, "none", None,
                          False, {})
    with report_audit.captured() as found:
        Report((CheckResult(bad.name, bad.kind, False, "float99", bad.point, bad.value, (grad,),
                            bad.diagnostics),)).to_dict()
    assert any("does not match the schema" in f and "float99" in f for f in found), found


# ---- severity on real checks -----------------------------------------------------------------------

class Doubled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        return None  # the output depends on x: missing_gradient


class Scaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * torch.cos(x) * g


def _severities(report) -> dict:
    return {d.code: d.severity for d in report.checks[0].diagnostics}


@pytest.mark.parametrize("make, expected, passed", [
    (lambda: check_expression("sum(x*x*x)", {"x": [1.1, 2.3]}, dtype="float32", rtol=1e-12, atol=0.0),
     {"gradient_mismatch": "failure", "input_rounded": "info"}, False),
    (lambda: check_expression("relu(x)", {"x": 0.0}), {"non_differentiable": "warning"}, True),
    (lambda: check_expression("x**2 + detach(x**2)", {"x": 1.0}), {"stop_gradient": "info"}, True),
    (lambda: check_expression("exp(x)", {"x": 800.0}), {"nonfinite": "failure"}, False),
    (lambda: check_expression("sigmoid(w*x+b)", {"w": 2.0, "b": 1.0, "x": 6.7}, loss="bce", target=0.0,
                              dtype="float32"), {"precision_loss": "warning"}, True),
    (lambda: check_expression("sum(x**3)*y", {"x": [1.1, 2.3], "y": 0.7}, order=2, dtype="float32", atol=0.0,
                              rtol=1e-12), {"hessian_mismatch": "failure", "gradient_mismatch": "failure"}, False),
    (lambda: check_op(Scaled.apply, torch.tensor([0.3, 1.2], dtype=torch.float64)),
     {"gradient_mismatch": "failure", "scale_error": "failure", "symbolic_unavailable": "info"}, False),
    (lambda: check_op(Doubled.apply, torch.tensor([0.3, 1.2], dtype=torch.float64)),
     {"missing_gradient": "failure"}, False),
], ids=["float32-mismatch", "kink", "detach", "overflow", "seed-float32", "hessian", "op-scale", "op-none"])
def test_severity_says_which_diagnostics_failed_the_check(make, expected, passed):
    report = make()
    got = _severities(report)
    for code, severity in expected.items():
        assert got.get(code) == severity, got
    if passed is not None:
        assert report.passed is passed
    failing = [c for c, s in got.items() if s == "failure"]
    assert bool(failing) is (not report.passed), got


def test_a_note_never_fails_and_a_failure_always_does():
    from gradcheck_cli.op.state import Point

    pt = Point(None, None, {}, {}, {}, np.random.default_rng(0))
    pt.note("nonfinite", "reported as a note")
    assert pt.diags[-1].severity == "warning" and not pt.failed
    pt.note("symbolic_unavailable", "what the tool did")
    assert pt.diags[-1].severity == "info"
    pt.fail("reference_disagreement", "failed it")
    assert pt.diags[-1].severity == "failure" and pt.failed
    assert note_severity("gradient_mismatch") == "warning" and default_severity("gradient_mismatch") == "failure"
