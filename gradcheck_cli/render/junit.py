"""JUnit XML: one testcase per check, failures carrying the rendered table.

The shape CI systems read (Jenkins, GitLab, GitHub test-report actions): a
<testsuites> root holding one <testsuite>; each <testcase> has a name, a classname
(`gradcheck.expression` / `gradcheck.op`), a time and, for `gradcheck run`, the spec
`file` it came from.  A failed check carries <failure message=... type=...> whose text
is the same table `gradcheck check` prints, so the CI page shows the wrong element with
every method's numbers.  Passing checks with diagnostics keep them in <system-out>.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path


# Characters XML 1.0 cannot hold at all (ElementTree would write them and produce a file
# no parser reads back).
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: str) -> str:
    return _INVALID_XML.sub("\ufffd", text)


def testcase(check) -> ET.Element:
    """One check's <testcase> element (built once; a streamed report reuses it)."""
    from gradcheck_cli.render.table import render_check_text

    attrs = {"classname": f"gradcheck.{check.kind}", "name": _clean(check.name),
             "time": f"{float(check.extra.get('duration_s', 0.0)):.4f}"}
    if check.extra.get("spec_file"):
        attrs["file"] = _clean(str(check.extra["spec_file"]))
    case = ET.Element("testcase", attrs)
    if not check.passed:
        failure = ET.SubElement(case, "failure", message=_clean(_summary(check)), type=_failure_type(check))
        failure.text = _clean(render_check_text(check))
    elif check.diagnostics:
        out = ET.SubElement(case, "system-out")
        out.text = _clean("\n".join(f"{d.code}: {d.message}" for d in check.diagnostics))
    return case


def render(report, suite_name: str = "gradcheck", cache: dict | None = None) -> str:
    """The report as a JUnit XML document (a string).  `cache` (id(check) -> element)
    keeps each check's element across renders of a growing report.  An interrupted run
    ends with an <error> testcase saying so, so a CI page never shows it green."""
    failures = sum(1 for c in report.checks if not c.passed)
    total_time = sum(float(c.extra.get("duration_s", 0.0)) for c in report.checks)
    errors = 0 if report.interrupted is None else 1
    tests = len(report.checks) + errors
    suite = ET.Element("testsuite", name=suite_name, tests=str(tests), failures=str(failures),
                       errors=str(errors), skipped="0", time=f"{total_time:.4f}")
    for check in report.checks:
        if cache is None:
            suite.append(testcase(check))
            continue
        entry = cache.get(id(check))
        if entry is None or entry[0] is not check:
            entry = cache[id(check)] = (check, testcase(check))
        suite.append(entry[1])
    if report.interrupted is not None:
        import signal

        name = signal.Signals(report.interrupted).name
        not_run = report.meta.get("checks_not_run")
        case = ET.SubElement(suite, "testcase", classname="gradcheck.run", name="(run interrupted)", time="0")
        error = ET.SubElement(case, "error", type="interrupted",
                              message=f"the run was interrupted by {name}" +
                                      (f"; {not_run} check(s) did not run" if not_run is not None else ""))
        error.text = "The checks above finished before the signal; the others did not run."
    root = ET.Element("testsuites", name=suite_name, tests=str(tests), failures=str(failures),
                      errors=str(errors), time=f"{total_time:.4f}")
    root.append(suite)
    ET.indent(root)
    text = '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
    root.remove(suite)
    for child in list(suite):  # the cached elements stay free to join the next render
        suite.remove(child)
    return text


def _failure_type(check) -> str:
    """GradientMismatch when a gradient is out of tolerance; else the first diagnostic
    code that explains the failure (an op that raised, a non-finite value, ...)."""
    if any(not g.passed for g in check.gradients):
        return "GradientMismatch"
    codes = [d.code for d in check.diagnostics]
    return codes[0] if codes else "CheckFailed"


def _summary(check) -> str:
    bad = [g for g in check.gradients if not g.passed]
    if bad:
        g = bad[0]
        at = f"[{', '.join(map(str, g.worst_index))}]" if g.worst_index else ""
        return (f"d/d{g.wrt}{at}: max abs error {g.max_abs_error:.3g}, max rel error {g.max_rel_error:.3g} "
                f"({g.failed_elements} element(s) out of tolerance)")
    codes = sorted({d.code for d in check.diagnostics})
    return "failed: " + ", ".join(codes) if codes else "failed"


def write(report, path: str | Path) -> None:
    """Write the JUnit XML file atomically (output.py); an unwritable path is a user
    error (exit 2)."""
    from gradcheck_cli.output import write_atomically

    write_atomically(Path(path), render(report), "--junit")
