"""JUnit XML: one testcase per check, failures carrying the rendered table."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from gradcheck_cli.errors import UserInputError


def render(report, suite_name: str = "gradcheck") -> str:
    from gradcheck_cli.render.table import render_text, render_check_text

    failures = sum(1 for c in report.checks if not c.passed)
    total_time = sum(float(c.extra.get("duration_s", 0.0)) for c in report.checks)
    suite = ET.Element("testsuite", name=suite_name, tests=str(len(report.checks)), failures=str(failures),
                       errors="0", skipped="0", time=f"{total_time:.4f}")
    for check in report.checks:
        case = ET.SubElement(suite, "testcase", classname=f"gradcheck.{check.kind}", name=check.name,
                             time=f"{float(check.extra.get('duration_s', 0.0)):.4f}")
        if not check.passed:
            failure = ET.SubElement(case, "failure", message=_summary(check), type="GradientMismatch")
            failure.text = render_check_text(check)
        elif check.diagnostics:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(f"{d.code}: {d.message}" for d in check.diagnostics)
    root = ET.Element("testsuites", name=suite_name, tests=str(len(report.checks)), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _summary(check) -> str:
    bad = [g for g in check.gradients if not g.passed]
    if bad:
        g = bad[0]
        return (f"d/d{g.wrt}: max abs error {g.max_abs_error:.3g}, max rel error {g.max_rel_error:.3g} "
                f"({g.failed_elements} element(s) out of tolerance)")
    codes = sorted({d.code for d in check.diagnostics})
    return "failed: " + ", ".join(codes) if codes else "failed"


def write(report, path: str | Path) -> None:
    try:
        Path(path).write_text(render(report), encoding="utf-8")
    except OSError as exc:
        raise UserInputError(f"cannot write --junit file {str(path)!r}: {exc.strerror}") from None
