"""The report: frozen dataclasses every renderer reads, and their JSON form.

The core returns these; it never prints.  `Report.to_dict()` is the JSON report of the
contract (schema_version 1): strict JSON, non-finite numbers as the strings
"nan", "inf", "-inf", and null for a value a method did not produce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


def jsonable(x: Any, computed: Any = None) -> Any:
    """Numbers and arrays as JSON values: floats, nested lists, and strings for non-finite
    numbers.  Where `computed` (a bool array like x) is False the entry is null."""
    if x is None:
        return None
    if isinstance(x, np.ndarray) or isinstance(x, np.generic):
        arr = np.asarray(x)
        if arr.dtype == bool:
            return arr.tolist()
        mask = None if computed is None else np.asarray(computed, dtype=bool)
        if arr.ndim == 0:
            return None if mask is not None and not mask else json_number(float(arr))
        return _numbers(arr, mask)
    if isinstance(x, float):
        return json_number(x)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def _numbers(arr: np.ndarray, mask: np.ndarray | None) -> list:
    """json_number over a whole array at once (Jacobians reach millions of entries), as nested
    lists; None where mask is False."""
    flt = arr.astype(np.float64)
    out = flt.astype(object)  # Python floats
    out[np.isnan(flt)] = "nan"
    out[flt == np.inf] = "inf"
    out[flt == -np.inf] = "-inf"
    if mask is not None:
        out[~mask] = None
    return out.tolist()


def json_number(v: float) -> Any:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


@dataclass(frozen=True)
class Diagnostic:
    """Something the user should know: a code to match on and a sentence to read."""

    code: str
    message: str
    wrt: str | None = None

    def to_dict(self) -> dict:
        out = {"code": self.code, "message": self.message}
        if self.wrt is not None:
            out["wrt"] = self.wrt
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

    def to_dict(self) -> dict:
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
        return out


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

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "kind": self.kind,
            "passed": self.passed,
            "dtype": self.dtype,
            "point": {k: jsonable(np.asarray(v) if not isinstance(v, (str, bool)) else v)
                      for k, v in self.point.items()},
            "value": {k: jsonable(v) for k, v in self.value.items()},
            "gradients": [g.to_dict() for g in self.gradients],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }
        for key, val in self.extra.items():
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

    def to_dict(self) -> dict:
        out = {"schema_version": SCHEMA_VERSION, "passed": self.passed,
               "checks": [c.to_dict() for c in self.checks]}
        if self.interrupted is not None:
            out["interrupted"] = True
        if self.meta:
            out["meta"] = jsonable(self.meta)
        return out
