"""Reports for checks that did not finish: the worker died (worker_crashed), the check ran
past its timeout (timeout), or gradcheck itself failed on it (internal_error).  Each is a
failed CheckResult shaped like any other (one null gradient entry per differentiated
input), so a CI report always names the check and why, and never turns green."""

from __future__ import annotations

from gradcheck_cli.op.state import not_computed
from gradcheck_cli.report import CheckResult, Diagnostic

TRACEBACK_LINES = 12  # of an internal error's traceback, in its diagnostic


def message_for(outcome, doing: str = "running this check") -> tuple[str, str]:
    """(code, message) for a workers.Outcome that is not a result; `doing`: what the worker
    was doing for the check."""
    if outcome.kind == "crashed":
        return "worker_crashed", (f"the worker process {doing} {outcome.payload}; the check did not "
                                  "finish. The other checks ran in other processes")
    if outcome.kind == "timeout":
        return "timeout", (f"the check ran past its timeout of {outcome.payload:g} s and was stopped (an infinite "
                           "loop? raise the limit with --timeout SECONDS or the spec key timeout; 0: none)")
    lines = str(outcome.payload).rstrip().splitlines()
    shown = "\n".join(lines[-TRACEBACK_LINES:])
    return "internal_error", f"gradcheck failed while running this check (please report it):\n{shown}"


def failed_check(name: str, kind: str, dtype: str, inputs: list, code: str, message: str,
                 extra: dict | None = None) -> CheckResult:
    """A failed check with one diagnostic.  `inputs`: (name, shape) of each differentiated
    input, in order."""
    gradients = tuple(not_computed(w, shape, {}) for w, shape in inputs)
    return CheckResult(name, kind, False, dtype, {}, {"torch": None, "symbolic": None}, gradients,
                       (Diagnostic(code, message),), dict(extra or {}))


def op_inputs(at: list, wrt: list | None) -> list:
    """(name, shape) of the differentiated inputs of an op check given as --at pairs; the
    shapes read without drawing the values ([] when a value cannot be read: the worker
    would have said so)."""
    from gradcheck_cli.errors import UserInputError
    from gradcheck_cli.values import shape_of

    shapes = {}
    for name, raw in at:
        try:
            shapes[name] = shape_of(name, raw)
        except UserInputError:
            shapes[name] = ()
    chosen = list(wrt) if wrt else list(shapes)
    return [(w, shapes.get(w, ())) for w in chosen]
