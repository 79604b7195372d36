"""The report: frozen dataclasses every renderer reads, and their JSON form.

The core returns these; it never prints.  `Report.to_dict()` is the JSON report of the
contract (schema_version 1): strict JSON, non-finite numbers as the strings
"nan", "inf", "-inf", and null for a value a method did not produce.  It scales
(jsonform.py): Jacobians past 262,144 entries are lists of their nonzero entries, inputs
and outputs past 65,536 elements are summarized, and `to_dict("summary")` leaves every
array out.  Every report records the versions it was made with (`tool`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from gradcheck_cli import codes, jsonform
from gradcheck_cli.jsonvalues import json_number, jsonable  # noqa: F401  (re-exported: renderers and op use them)
from gradcheck_cli.versions import SCHEMA_VERSION, tool_versions

DETAILS = ("full", "summary")  # --json-detail


@dataclass(frozen=True)
class Diagnostic:
    """Something the user should know: a code to match on (codes.py lists them all), a
    sentence to read, and its severity in this report: `failure` (it failed the check),
    `warning` (worth a look) or `info` (what the tool did).  Left out, the severity is
    the code's default in codes.py.  `exception`: {"type", "message"} of what an op
    raised, when the diagnostic is about that."""

    code: str
    message: str
    wrt: str | None = None
    severity: str | None = None
    exception: dict | None = None

    def __post_init__(self):
        if self.severity is None:
            object.__setattr__(self, "severity", codes.default_severity(self.code))

    def to_dict(self) -> dict:
        out = {"code": self.code, "severity": self.severity, "message": self.message}
        if self.wrt is not None:
            out["wrt"] = self.wrt
        if self.exception is not None:
            out["exception"] = dict(self.exception)
        return out


@dataclass(frozen=True, eq=False)
class GradientResult:
    """One variable's derivatives by each method, and the verdict on them."""

    wrt: str
    shape: tuple  # output_shape + input_shape
    input_shape: tuple
    output_shape: tuple
    autograd: np.ndarray
    symbolic: np.ndarray | None
    finite_difference: np.ndarray | None
    fd_error_estimate: np.ndarray | None
    fd_computed: np.ndarray | None  # False where finite differences were not computed (sampled)
    max_abs_error: float
    max_rel_error: float
    reference: str  # what the errors are measured against: 'symbolic' or 'finite_difference'
    worst_index: tuple | None
    passed: bool
    tolerance: dict
    errors: dict = field(default_factory=dict)  # reference -> {max_abs_error, max_rel_error}
    formula: str | None = None
    failed_elements: int = 0
    # flat indices (into the stored arrays) of out-of-tolerance elements, worst first (at most
    # FAILING_KEPT); None where the producer did not say (renderers then know only the worst)
    failing: np.ndarray | None = None

    def to_dict(self, detail: str = "full") -> dict:
        if detail == "summary":
            return jsonform.summary_form(self)
        if jsonform.uses_entries(self):
            out = jsonform.entry_form(self)
        else:
            out = {
                "wrt": self.wrt,
                "shape": list(self.shape),
                "autograd": jsonable(self.autograd),
                "symbolic": jsonable(self.symbolic),
                "finite_difference": jsonable(self.finite_difference, self.fd_computed),
                "max_abs_error": json_number(self.max_abs_error),
                "max_rel_error": json_number(self.max_rel_error),
                "passed": self.passed,
                "reference": self.reference,
                "worst_index": None if self.worst_index is None else list(self.worst_index),
                "fd_error_estimate": jsonable(self.fd_error_estimate, self.fd_computed),
                "tolerance": jsonable(self.tolerance),
                "errors": jsonable(self.errors),
                "failed_elements": self.failed_elements,
                "input_shape": list(self.input_shape),
                "output_shape": list(self.output_shape),
            }
        if self.formula is not None:
            out["formula"] = self.formula
        out.update(jsonable(getattr(self, "details", None) or {}))
        worst = jsonform.worst_object(self)
        if worst is not None:
            out["worst"] = worst
        return out


FAILING_KEPT = 1000


def failing_order(failed: np.ndarray, badness: np.ndarray) -> np.ndarray:
    """Flat indices of the failed elements, worst (largest badness) first, at most
    FAILING_KEPT: what GradientResult.failing holds."""
    flat = np.flatnonzero(np.asarray(failed).reshape(-1))
    if flat.size == 0:
        return flat
    score = np.nan_to_num(np.asarray(badness, dtype=np.float64).reshape(-1)[flat], nan=np.inf)
    return flat[np.argsort(-score, kind="stable")][:FAILING_KEPT]


@dataclass(frozen=True, eq=False)
class CheckResult:
    """One check: an expression or an op at one point (the worst, with --points)."""

    name: str
    kind: str  # 'expression' | 'op'
    passed: bool
    dtype: str
    point: dict
    value: dict
    gradients: tuple
    diagnostics: tuple = ()
    extra: dict = field(default_factory=dict)

    def to_dict(self, detail: str = "full") -> dict:
        limit = jsonform.ECHO_LIMIT if detail == "full" else jsonform.SUMMARY_ECHO_LIMIT
        out = {
            "name": self.name,
            "kind": self.kind,
            "passed": self.passed,
            "dtype": self.dtype,
            "point": {k: (v if isinstance(v, (str, bool)) else jsonform.echo(np.asarray(v), limit))
                      for k, v in self.point.items()},
            "value": {k: jsonform.echo(v, limit) for k, v in self.value.items()},
            "gradients": [g.to_dict(detail) for g in self.gradients],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }
        for key, val in self.extra.items():
            if key == "hessian" and detail == "summary" and isinstance(val, dict):
                out[key] = jsonform.hessian_summary(val)
            elif key == "target":
                out[key] = jsonform.echo(val, limit)
            else:
                out[key] = jsonable(val)
        return out

    def codes(self) -> set[str]:
        return {d.code for d in self.diagnostics}


@dataclass(frozen=True, eq=False)
class Report:
    """Everything one command found."""

    checks: tuple
    meta: dict = field(default_factory=dict)
    interrupted: int | None = None  # the signal (SIGINT 2, SIGTERM 15) that stopped the run early

    @property
    def passed(self) -> bool:
        return self.interrupted is None and all(c.passed for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 every check ran and passed; 1 a check failed; 128 + the signal when the run was
        interrupted (130 for SIGINT, 143 for SIGTERM), whatever the checks that ran found."""
        if self.interrupted is not None:
            return 128 + self.interrupted
        return 0 if self.passed else 1

    def to_dict(self, detail: str = "full") -> dict:
        """The JSON report; `detail` "summary" leaves out every array (verdicts, worst
        entries, errors and diagnostics only)."""
        if detail not in DETAILS:
            raise ValueError(f"detail must be one of {DETAILS}, got {detail!r}")
        out = {"schema_version": SCHEMA_VERSION, "passed": self.passed,
               "checks": [c.to_dict(detail) for c in self.checks]}
        if detail != "full":
            out["detail"] = detail
        if self.interrupted is not None:
            out["interrupted"] = True
        if self.meta:
            out["meta"] = jsonable(self.meta)
        out["tool"] = dict(tool_versions())
        return out
