"""What one point's checks share (Point) and the small verdicts every stage records
the same way: an op that raised, a non-finite output, an input whose gradient was never
computed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradcheck_cli.codes import note_severity
from gradcheck_cli.op.registration import no_autograd_message
from gradcheck_cli.op.runner import clipped
from gradcheck_cli.op.verdict import OutputLayout, input_label
from gradcheck_cli.report import Diagnostic, GradientResult


@dataclass
class Point:
    """What one point's checks share."""

    prep: Any  # api.PreparedOp
    opts: Any  # api.OpOptions
    arrays: dict  # the point, float64
    ref_arrays: dict  # the point as the dtype represents it, float64
    tol: dict
    rng: np.random.Generator
    diags: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    failed: bool = False
    fixed: dict = field(default_factory=dict)  # input -> columns not compared (non-finite elements)
    determinism: Any = None  # determinism.DeterminismOutcome, reported after the Jacobian's diagnostics

    def fail(self, code: str, message: str, wrt: str | None = None, exception: dict | None = None) -> None:
        """A diagnostic that fails the check (severity failure)."""
        self.failed = True
        self.diags.append(Diagnostic(code, message, wrt, "failure", exception))

    def note(self, code: str, message: str, wrt: str | None = None) -> None:
        """A diagnostic that does not fail the check (its code's default severity, never failure)."""
        self.diags.append(Diagnostic(code, message, wrt, note_severity(code)))

    def count(self, kind: str, n: int = 1) -> None:
        """n more calls of the op of this kind (the report's extra.calls)."""
        calls = self.extra.setdefault("calls", {})
        calls[kind] = calls.get(kind, 0) + n


def finite_output(pt: Point, value: dict, layout: OutputLayout, second: bool = False) -> bool:
    """Whether the forward output is finite (else a failed check: no gradient means anything).
    `second`: the output of determinism's second call, the first call's having been finite."""
    flat = np.asarray(value["torch"]).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        where = f"at {layout.label(int(bad[0]))} ({flat[bad[0]]:.6g})"
        pt.fail("nonfinite", (
            f"the forward output in {pt.opts.dtype} is finite on the first call but not on a second call at the same "
            f"point, {where}: the op is not deterministic" if second else
            f"the forward output in {pt.opts.dtype} is not finite {where}; the gradient of an undefined value means "
            "nothing (pick another point)"))
    return not bad.size


def not_computed(wrt: str, in_shape: tuple, tol: dict) -> GradientResult:
    """A gradient entry for an input whose gradient could not be computed (see diagnostics)."""
    nan = float("nan")
    return GradientResult(wrt=wrt, shape=tuple(in_shape), input_shape=tuple(in_shape), output_shape=(),
                          autograd=None, symbolic=None, finite_difference=None, fd_error_estimate=None,
                          fd_computed=None, max_abs_error=nan, max_rel_error=nan, reference="none",
                          worst_index=None, passed=False, tolerance={k: v for k, v in tol.items()
                                                                     if isinstance(v, (int, float))})


def layout_of(outs: list) -> OutputLayout:
    shapes = tuple(tuple(o.shape) for o in outs)
    offsets = tuple(int(x) for x in np.cumsum([0] + [math.prod(s) for s in shapes])[:-1])
    return OutputLayout(shapes, offsets)


def report_values(flat: np.ndarray, layout: OutputLayout) -> np.ndarray:
    return np.asarray(flat).reshape(layout.report_shape)


def op_raised(pt: Point, exc) -> None:
    text = str(exc.exc)
    raised = {"type": type(exc.exc).__name__, "message": clipped(text)}
    if "leaf Variable that requires grad is being used in an in-place operation" in text:
        pt.fail("input_mutated", f"the op modifies its input in place ({exc.message}); ops must not mutate "
                                 "their inputs", exception=raised)
    elif no_autograd_message(text):
        pt.fail("autograd_not_registered", f"the op has no autograd formula ({exc.message}); register one with "
                                           "torch.library.register_autograd (or write it as a torch.autograd.Function)",
                exception=raised)
    elif "returned an invalid gradient" in text:
        pt.fail("wrong_shape" if "shape" in text else "wrong_gradient_metadata",
                f"the backward returned a gradient of the wrong shape, dtype or device: {exc.message}",
                exception=raised)
    else:
        pt.fail("op_error", f"the op raised in {exc.phase}: {exc.message}", exception=raised)


def nonfinite_inputs(pt, wrt: list) -> None:
    """Infinite or NaN input elements (a -inf mask before softmax) are never stepped, and
    their Jacobian columns are not compared: pt.fixed[w] marks them."""
    pt.fixed = {}
    for w in wrt:
        bad = ~np.isfinite(np.ravel(pt.ref_arrays[w]))
        if bad.any():
            pt.fixed[w] = bad
            pt.note("nonfinite_input", f"{int(bad.sum())} element(s) of {w!r} are infinite or NaN (first at "
                                       f"{input_label(w, np.shape(pt.ref_arrays[w]), int(np.flatnonzero(bad)[0]))}"
                                       "): they are not stepped, and their Jacobian columns are not compared", w)


def batched_disagreement(pt, vjps) -> None:
    """A backward that answers differently under vmap than in a plain call fails: jacrev,
    vmap over grad_outputs and is_grads_batched users would get wrong gradients (the
    plain calls' gradients are the ones the Jacobian checks used)."""
    if vjps.disagreement:
        pt.fail("batched_grad_mismatch", vjps.disagreement + "; the Jacobian above was checked with plain calls")
