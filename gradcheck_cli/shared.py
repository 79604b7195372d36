"""What the expression checker and the op gate share, with public names: the options
both take and their validation, the loop over --points (the worst point is reported),
and diagnostic de-duplication."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradcheck_cli.devices import check_syntax as check_device_syntax
from gradcheck_cli.errors import UserInputError
from gradcheck_cli.report import CheckResult, Diagnostic
from gradcheck_cli.values import redraw

MAX_POINTS = 10_000  # --points
MAX_POINT_TRIES = 10  # draws per random point: one on a kink says nothing, so draw again


@dataclass(frozen=True)
class SharedOptions:
    """The options `check` and `op` share (validated by `validate_shared`)."""

    dtype: str = "float64"
    fd: str = "auto"
    eps: float | None = None
    atol: float | None = None
    rtol: float | None = None
    points: int = 0
    seed: int = 0
    order: int = 1
    device: str = "cpu"


def validate_shared(opts, dtypes, schemes) -> None:
    """The options `check` and `op` share, checked the same way for both."""
    if opts.dtype not in dtypes:
        raise UserInputError(f"--dtype must be one of {', '.join(dtypes)}, got {opts.dtype!r}")
    if opts.fd not in schemes:
        raise UserInputError(f"--fd must be one of {', '.join(schemes)}, got {opts.fd!r}")
    for flag, v in (("--eps", opts.eps), ("--atol", opts.atol), ("--rtol", opts.rtol)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise UserInputError(f"{flag} must be a finite number >= 0, got {v!r}")
    if opts.eps is not None and opts.eps <= 0:
        raise UserInputError("--eps must be > 0")
    if opts.order not in (1, 2):
        raise UserInputError(f"--order must be 1 or 2, got {opts.order!r}")
    validate_seed(opts.seed)
    if not (0 <= opts.points <= MAX_POINTS):
        raise UserInputError(f"--points must be between 0 and {MAX_POINTS}, got {opts.points}")
    check_device_syntax(opts.device)  # cpu, cuda or cuda:N; whether torch has it: devices.require


def validate_seed(seed) -> None:
    """--seed seeds numpy's SeedSequence, which takes whole numbers >= 0 only (the same
    range spec files accept): anything else is the user's input, exit 2, not a traceback."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not (0 <= seed <= 2**63 - 1):
        raise UserInputError(f"--seed must be a whole number between 0 and {2**63 - 1}, got {seed!r}")


def worst_of_points(check_point, values: dict, seed: int, points: int, *, fixed=(), progress=None) -> CheckResult:
    """`check_point` at the given values, then at `points` seeded random redraws (names in
    `fixed` keep their values); the worst result, with `points_checked`, when points > 0.
    Shared by expression and op checks."""
    worst = check_point({k: v.array for k, v in values.items()})
    if not points:
        return worst
    rng = np.random.default_rng([seed, 2])
    for i in range(points):
        result = None
        for _ in range(MAX_POINT_TRIES):  # a random point on a kink says nothing: draw again
            drawn = {k: (v.array if k in fixed else redraw(v, rng)) for k, v in values.items()}
            result = check_point(drawn)
            if "non_differentiable" not in result.codes():
                break
        if severity(result) > severity(worst):
            worst = result
        if progress:
            progress(i + 1, points)
    return CheckResult(worst.name, worst.kind, worst.passed, worst.dtype, worst.point, worst.value,
                       worst.gradients, worst.diagnostics, {**worst.extra, "points_checked": points + 1})


def severity(check: CheckResult) -> tuple:
    """Order points by how bad they are: failures first, then the largest error ratio."""
    worst = max((g.max_rel_error if math.isfinite(g.max_rel_error) else math.inf for g in check.gradients),
                default=0.0)
    return (not check.passed, worst)


def dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    """The diagnostics in order, each (code, message, wrt) once."""
    seen, out = set(), []
    for d in diags:
        key = (d.code, d.message, d.wrt)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out
