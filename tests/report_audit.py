"""Every report the test suite produces is audited (issue 15).

conftest.py installs two hooks for the whole session:

* every `Report` built in this process (by the checkers, the op gate, `gradcheck run`,
  a test by hand) is checked at once: every diagnostic code is in the registry
  (gradcheck_cli/codes.py), every severity is failure / warning / info, and a check
  fails exactly when one of its diagnostics has severity failure;
* every JSON report made from one (`Report.to_dict`, so every `--json` of a command run
  in-process too) is validated against the published schema (tests/schema_util.py);

and cli_util.run_gradcheck validates the `--json` stdout of every command run in a
subprocess.  Problems are recorded here and fail the test that produced them (conftest's
autouse fixture), whatever the code under test did with the exception.
"""

from __future__ import annotations

import contextlib
import json

PROBLEMS: list[str] = []
PRUNE_ITEMS = 64  # long lists are cut to this many items before the schema sees them
PRUNE_ABOVE = 20_000  # numbers in a document past which it is pruned


def record(problem: str) -> None:
    PROBLEMS.append(problem)


@contextlib.contextmanager
def captured():
    """Collect the problems raised inside the block (instead of failing the test): for the
    tests that show the audit itself can fail."""
    start = len(PROBLEMS)
    found: list[str] = []
    try:
        yield found
    finally:
        found.extend(PROBLEMS[start:])
        del PROBLEMS[start:]


def audit_report(report) -> None:
    """The checks every Report must pass (cheap: no JSON is made)."""
    from gradcheck_cli.codes import SEVERITIES, known, unknown_code_message

    for check in report.checks:
        where = f"check {check.name!r}"
        for d in check.diagnostics:
            if not known(d.code):
                record(f"{where}: {unknown_code_message(d.code)}")
            if d.severity not in SEVERITIES:
                record(f"{where}: diagnostic {d.code!r} has severity {d.severity!r}, not one of {SEVERITIES}")
        failing = [d.code for d in check.diagnostics if d.severity == "failure"]
        if check.passed and failing:
            record(f"{where}: passed, yet its diagnostics {failing} have severity failure")
        if not check.passed and not failing:
            record(f"{where}: failed, yet none of its diagnostics {[d.code for d in check.diagnostics]} has "
                   "severity failure (a failure must say which diagnostic failed it)")


def _count_numbers(obj, limit: int) -> int:
    stack, seen = [obj], 0
    while stack and seen <= limit:
        item = stack.pop()
        if isinstance(item, list):
            seen += len(item)
            stack.extend(x for x in item if isinstance(x, (list, dict)))
        elif isinstance(item, dict):
            stack.extend(item.values())
    return seen


def _pruned(obj):
    if isinstance(obj, list):
        return [_pruned(x) for x in obj[:PRUNE_ITEMS]]
    if isinstance(obj, dict):
        return {k: _pruned(v) for k, v in obj.items()}
    return obj


def audit_document(doc, source: str) -> None:
    """Validate one JSON report (a dict) against the schema; record what is wrong."""
    from schema_util import _validator, semantic_errors

    big = _count_numbers(doc, PRUNE_ABOVE) > PRUNE_ABOVE
    target = _pruned(doc) if big else doc
    errors = sorted(_validator().iter_errors(target), key=lambda e: list(e.absolute_path))
    messages = [f"at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:10]]
    if not messages and not big:
        messages = semantic_errors(doc)
    if messages:
        record(f"{source}: the report does not match the schema:\n  " + "\n  ".join(messages))


def audit_json_text(text: str, source: str) -> None:
    """A command's --json stdout: one strict JSON document that matches the schema."""
    from schema_util import strict_loads

    try:
        doc = strict_loads(text)
    except ValueError as exc:
        record(f"{source}: --json stdout is not strict JSON ({exc}): {text[:300]!r}")
        return
    if isinstance(doc, dict) and "schema_version" in doc:
        audit_document(doc, source)


def install() -> None:
    """Wrap Report.__init__ and Report.to_dict (once, for the session)."""
    from gradcheck_cli.report import Report

    if getattr(Report, "_audited", False):
        return
    init, to_dict = Report.__init__, Report.to_dict

    def audited_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        audit_report(self)

    def audited_to_dict(self, *args, **kwargs):
        doc = to_dict(self, *args, **kwargs)
        try:
            json.dumps(doc, allow_nan=False)
        except (TypeError, ValueError) as exc:
            record(f"Report.to_dict() is not strict JSON: {exc}")
        else:
            audit_document(doc, "Report.to_dict()")
        return doc

    Report.__init__ = audited_init
    Report.to_dict = audited_to_dict
    Report._audited = True
