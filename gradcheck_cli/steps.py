"""`gradcheck steps`: finite-difference error against step size, the V-shaped curve.

For each variable, one Jacobian entry is differenced at relative steps H from 1e-16 to
1 (four per decade), exactly as `--eps H` would step it (h = H * max(1, |x|)), and
compared with the exact derivative (SymPy, evaluated in float64).  Long steps show
truncation error (slope 2 for central, 1 for forward, 6 for richardson on a log-log
chart); short ones show rounding error growing as 1/h.  The best step is where the two
meet; the step `check` would choose at this point is marked beside it.

Which entry: the result's derivative with respect to the variable's element where it
is largest in magnitude (for a scalar result and a scalar variable, simply d/dx).
The largest entry is the one a wrong step distorts most in absolute terms, and it is
never an exact zero that would make every step look perfect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.report import jsonable

STEP_SCHEMES = ("central", "forward", "richardson", "complex")
DECADES = (-16, 0)  # log10 of the smallest and largest relative step
PER_DECADE = 4
MAX_JACOBIAN = 1_000_000  # exact Jacobian entries computed to find the largest one
SYMBOLIC_BUDGET_S = 60.0


@dataclass(frozen=True)
class Curve:
    """One variable's error-against-step curve."""

    wrt: str
    element: tuple  # index of the differenced element of the variable (() for a scalar)
    output: tuple  # index of the result element (() for a scalar result)
    x: float  # the element's value
    exact: float  # the exact derivative (or the reference's, see StepsResult.reference)
    relative_steps: np.ndarray  # H
    steps: np.ndarray  # h = H * max(1, |x|), as x + h represents it (NaN where it vanished)
    finite_difference: np.ndarray
    error: np.ndarray  # |finite_difference - exact|
    default_step: float  # h that `check` chooses here for this scheme
    default_fd: float
    default_error_estimate: float

    @property
    def label(self) -> str:
        """d(result)/d(name[element]), as the chart's legend says it."""
        out = f"[{', '.join(map(str, self.output))}]" if self.output else ""
        elem = f"[{', '.join(map(str, self.element))}]" if self.element else ""
        return f"d result{out} / d {self.wrt}{elem}"

    @property
    def best(self) -> int | None:
        """Index of the best step (None when no step gave a number): the smallest error
        after a running median over half a decade each side, so that a step where the
        rounding happened to cancel exactly does not pass for the best one."""
        finite = np.isfinite(self.error)
        if not finite.any():
            return None
        half = max(1, PER_DECADE // 2)
        smooth = np.full(self.error.shape, np.inf)
        for i in np.flatnonzero(finite):
            window = self.error[max(0, i - half): i + half + 1]
            smooth[i] = np.median(window[np.isfinite(window)])
        return int(np.argmin(smooth))

    @property
    def default_relative(self) -> float:
        return self.default_step / max(1.0, abs(self.x))

    @property
    def default_error(self) -> float:
        return abs(self.default_fd - self.exact)

    def to_dict(self) -> dict:
        best = self.best
        return {
            "wrt": self.wrt, "element": list(self.element), "output": list(self.output), "x": jsonable(self.x),
            "exact_derivative": jsonable(self.exact),
            "points": [{"step": jsonable(float(H)), "h": jsonable(float(h)), "finite_difference": jsonable(float(f)),
                        "error": jsonable(float(e))}
                       for H, h, f, e in zip(self.relative_steps, self.steps, self.finite_difference, self.error)],
            "best": None if best is None else {
                "step": float(self.relative_steps[best]), "h": jsonable(float(self.steps[best])),
                "error": jsonable(float(self.error[best]))},
            "default": {"step": jsonable(self.default_relative), "h": jsonable(self.default_step),
                        "finite_difference": jsonable(self.default_fd), "error": jsonable(self.default_error),
                        "error_estimate": jsonable(self.default_error_estimate)},
        }


@dataclass(frozen=True)
class StepsResult:
    """Every variable's curve, and what produced them."""

    expression: str
    scheme: str
    point: dict  # name -> array
    reference: str  # "symbolic", or the finite-difference scheme used when SymPy could not
    curves: tuple
    notes: tuple = ()
    decades: tuple = DECADES  # log10 of the smallest and largest relative step, for the charts

    def to_dict(self) -> dict:
        """The JSON document of `gradcheck steps --json` (strict JSON: non-finite numbers as strings)."""
        # schema_version as in every command's JSON (the contract); the rest is this chart's own shape
        return {"schema_version": 1, "command": "steps", "expression": self.expression, "fd_scheme": self.scheme,
                "step_rule": "h = step * max(1, |x|), as --eps",
                "reference": self.reference, "point": {k: jsonable(np.asarray(v)) for k, v in self.point.items()},
                "curves": [c.to_dict() for c in self.curves], "notes": list(self.notes)}


def relative_grid() -> np.ndarray:
    """The relative steps H of every curve: PER_DECADE per decade over DECADES."""
    lo, hi = DECADES
    return 10.0 ** np.linspace(lo, hi, (hi - lo) * PER_DECADE + 1)


def step_curves(expr: str, at: Any = None, *, wrt: Iterable[str] | None = None, loss: str = "none",
                target: Any = None, fd: str = "central", seed: int = 0, on_ready=None) -> StepsResult:
    """Finite-difference error against step size for each variable (see the module doc).
    Raises UserInputError on input that cannot be used, as `check` does; `on_ready()` is
    called once the input is valid, before the engines run (as check_expression's)."""
    from gradcheck_cli.checker import TARGET, max_numel_of, prepare
    from gradcheck_cli.engines import fd_batch, finite_diff

    if fd not in STEP_SCHEMES:
        raise UserInputError(f"--fd for steps must be one of {', '.join(STEP_SCHEMES)} (one scheme per chart), "
                             f"got {fd!r}")
    prep = prepare(expr, at, wrt=wrt, loss=loss, target=target, seed=seed)
    if fd == "complex":
        blockers = finite_diff.non_analytic_calls(prep.root)
        if blockers:
            raise UserInputError(f"--fd complex needs a real-analytic expression, and {', '.join(blockers)} is not; "
                                 "use central, forward or richardson")
    if on_ready is not None:
        on_ready()
    arrays = {k: v.array for k, v in prep.values.items()}
    out_shape = tuple(prep.node_shapes[id(prep.root)])
    exact, reference, notes = _exact_jacobians(prep, arrays, out_shape)
    grid = relative_grid()
    max_numel = max_numel_of(prep)
    batch = fd_batch.Batch(prep.root, arrays, out_shape, max_numel, fd == "complex", shapes=prep.node_shapes)
    curves = []
    for w in prep.wrt:
        jac = np.asarray(exact[w], dtype=np.float64).reshape(math.prod(out_shape), -1)
        o, j = _largest_entry(jac, w)
        x = np.asarray(arrays[w], dtype=np.float64)
        x0 = float(x.reshape(-1)[j])
        h = grid * max(1.0, abs(x0))
        fd_values = finite_diff.derivative_at_steps(prep.root, arrays, w, j, o, out_shape, scheme=fd, steps=h)
        taken = h if fd == "complex" else (x0 + h) - x0
        taken = np.where(taken > 0, taken, np.nan)
        with np.errstate(all="ignore"):
            error = np.abs(fd_values - jac[o, j])
        # the step check would take for this element (differencing it alone gives the same numbers)
        chosen = finite_diff.jacobian(prep.root, arrays, w, out_shape, scheme=fd, max_numel=max_numel,
                                      elements=np.array([j]), batch=batch)
        curves.append(Curve(
            w, _unravel(j, x.shape), _unravel(o, out_shape), x0, float(jac[o, j]), grid, taken, fd_values, error,
            float(chosen.entry_steps[o, j]), float(chosen.jacobian[o, j]), float(chosen.error[o, j])))
    notes += _explanations(prep, curves)
    expression = expr if loss == "none" else f"{loss}({expr}, {TARGET})"
    point = {k: arrays[k] for k in prep.values if k != TARGET}
    return StepsResult(expression, fd, point, reference, tuple(curves), tuple(notes))


def _explanations(prep, curves) -> list[str]:
    """Why a curve has no V at all: no step gets near the exact derivative."""
    from gradcheck_cli.engines import finite_diff

    out = []
    if "detach" in prep.calls:
        out.append("detach(): the exact derivative treats its argument as a constant, as autograd does, while "
                   "finite differences see through it, so the error cannot vanish at any step")
    far = [c.wrt for c in curves if c.best is not None
           and c.error[c.best] > 1e-4 * max(abs(c.exact), np.finfo(np.float64).tiny)]
    kinked = [f for f in finite_diff.non_analytic_calls(prep.root) if f != "comparison"]
    if far and kinked:
        out.append(f"no step comes near the exact derivative for {', '.join(far)}: {', '.join(kinked)} may have "
                   "a kink at or near this point (gradcheck check reports it as non_differentiable)")
    return out


def _unravel(flat: int, shape: tuple) -> tuple:
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def _largest_entry(jac: np.ndarray, name: str) -> tuple[int, int]:
    """(output, element) of the largest finite |derivative|."""
    mag = np.where(np.isfinite(jac), np.abs(jac), -1.0)
    if mag.size == 0 or mag.max() < 0:
        raise UserInputError(f"the derivative with respect to {name!r} is not finite at this point, so no step "
                             "can be right; choose a point where the expression is differentiable")
    o, j = np.unravel_index(int(np.argmax(mag)), jac.shape)
    return int(o), int(j)


def _exact_jacobians(prep, arrays: dict, out_shape: tuple) -> tuple[dict, str, list]:
    """The exact Jacobians (SymPy, evaluated in float64); when SymPy cannot, the most
    accurate finite differences, said so in a note."""
    from gradcheck_cli.budget import OutOfTime, time_budget
    from gradcheck_cli.checker import max_numel_of
    from gradcheck_cli.engines import fd_batch, finite_diff, symbolic

    n_out = math.prod(out_shape)
    for w in prep.wrt:
        if n_out * math.prod(prep.var_shapes[w]) > MAX_JACOBIAN:
            raise UserInputError(f"the Jacobian of the result with respect to {w!r} has more than {MAX_JACOBIAN:,} "
                                 "entries; chart a smaller value or reduce the result with sum(...)")
    try:
        with time_budget(SYMBOLIC_BUDGET_S):
            model = symbolic.build(prep.root, prep.node_shapes, prep.var_shapes)
            return symbolic.Evaluator(model, arrays).gradients(prep.wrt), "symbolic", []
    except (OutOfTime, RecursionError, ValueError, TypeError, AttributeError, ZeroDivisionError,
            OverflowError) as exc:
        why = "it ran out of time" if isinstance(exc, OutOfTime) else f"{type(exc).__name__}: {exc}"
    # a kink at the point: not complex
    scheme, _ = finite_diff.resolve_scheme("auto", prep.root, arrays, prep.node_shapes)
    max_numel = max_numel_of(prep)
    batch = fd_batch.Batch(prep.root, arrays, out_shape, max_numel, scheme == "complex", shapes=prep.node_shapes)
    jacs = {w: finite_diff.jacobian(prep.root, arrays, w, out_shape, scheme=scheme, max_numel=max_numel,
                                    batch=batch).jacobian for w in prep.wrt}
    note = (f"SymPy could not differentiate the expression ({why}); errors are measured against {scheme} "
            "finite differences instead, so the curve's floor is that reference's own error")
    return jacs, scheme, [note]
