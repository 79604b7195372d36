"""JUnit XML: one testcase per check, failures carrying the rendered table.

The shape CI systems read (Jenkins, GitLab, GitHub test-report actions): a
<testsuites> root holding one <testsuite>; each <testcase> has a name, a classname
(`gradcheck.expression` / `gradcheck.op`), a time and, for `gradcheck run`, the spec
`file` it came from.  A failed check carries <failure message=... type=...>: its type is
the first diagnostic that failed it (gradient_mismatch, nondeterministic, ...), its
message the failures only (never the warnings), and its text the same table `gradcheck
check` prints, so the CI page shows the wrong element with every method's numbers.  A
check that could not run to its end (the op raised, the worker crashed, a timeout) is an
<error> whose type is the exception's (RuntimeError) or the code (timeout).  Passing
checks with diagnostics keep them in <system-out>.
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
        crash = crash_of(check)
        if crash is not None:
            kind, message = crash
            element = ET.SubElement(case, "error", message=_clean(message), type=_clean(kind))
        else:
            element = ET.SubElement(case, "failure", message=_clean(headline(check)), type=failure_type(check))
        element.text = _clean(render_check_text(check))
    elif check.diagnostics:
        out = ET.SubElement(case, "system-out")
        out.text = _clean("\n".join(f"{d.code}: {d.message}" for d in check.diagnostics))
    return case


def render(report, suite_name: str = "gradcheck", cache: dict | None = None) -> str:
    """The report as a JUnit XML document (a string).  `cache` (id(check) -> element)
    keeps each check's element across renders of a growing report.  An interrupted run
    ends with an <error> testcase saying so, so a CI page never shows it green."""
    crashed = sum(1 for c in report.checks if not c.passed and crash_of(c) is not None)
    failures = sum(1 for c in report.checks if not c.passed) - crashed
    total_time = sum(float(c.extra.get("duration_s", 0.0)) for c in report.checks)
    errors = crashed + (0 if report.interrupted is None else 1)
    tests = len(report.checks) + (0 if report.interrupted is None else 1)
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


def failing_diagnostics(check) -> list:
    """The diagnostics that failed the check, in order."""
    return [d for d in check.diagnostics if d.severity == "failure"]


def failure_type(check) -> str:
    """The first code that failed the check (CheckFailed when none says)."""
    failing = failing_diagnostics(check)
    if failing:
        return failing[0].code
    return "gradient_mismatch" if any(not g.passed for g in check.gradients) else "CheckFailed"


_RAISED = re.compile(r"raised[^:]*: ([A-Za-z_][\w.]*): ")


def crash_of(check) -> tuple[str, str] | None:
    """(type, message) when the first failure means the check could not run to its end:
    an op that raised (its exception's type) or a worker that crashed or timed out (the
    code); None for a check that ran and found a wrong answer."""
    from gradcheck_cli.codes import is_crash

    failing = failing_diagnostics(check)
    if not failing:
        return None
    first = failing[0]
    if first.exception is not None:
        return first.exception.get("type") or first.code, f"{first.code}: {first.message}"
    if not is_crash(first.code):
        return None
    raised = _RAISED.search(first.message)
    return (raised.group(1) if raised else first.code), f"{first.code}: {first.message}"


def headline(check) -> str:
    """The failure message: each failing diagnostic's code and first sentence, and the
    gradients out of tolerance with their counts (never warnings or notes)."""
    parts = []
    for d in failing_diagnostics(check):
        text = d.message if len(d.message) <= 300 else d.message[:300] + " ..."
        parts.append(f"{d.code}: {text}")
    if not parts:
        for g in check.gradients:
            if not g.passed and g.autograd is not None:
                parts.append(f"d/d{g.wrt}: {g.failed_elements} element(s) out of tolerance "
                             f"(max rel error {g.max_rel_error:.3g})")
    return "; ".join(parts) if parts else "failed"


def write(report, path: str | Path) -> None:
    """Write the JUnit XML file atomically (output.py); an unwritable path is a user
    error (exit 2)."""
    from gradcheck_cli.output import write_atomically

    write_atomically(Path(path), render(report), "--junit")
