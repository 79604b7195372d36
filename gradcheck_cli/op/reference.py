"""`--reference EXPR`: the op's expected forward, in the inputs' names, with its exact
derivatives from the symbolic engine.

Several outputs take several expressions separated by ';' (one per output, in order).
The expression language is the project's own grammar (no eval); values and Jacobians
come from gradcheck_cli.engines.symbolic in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gradcheck_cli.budget import OutOfTime, time_budget
from gradcheck_cli.errors import UserInputError

SYMBOLIC_BUDGET_S = 60.0
MAX_SYMBOLIC_ENTRIES = 16_000_000


@dataclass
class Reference:
    """Parsed reference expressions, one per output."""

    text: str
    sources: list
    roots: list
    used: list  # names each expression uses, in order of appearance
    shapes: dict  # every input's shape
    models: list = field(default_factory=list)
    error: str | None = None  # why symbolic derivatives are unavailable

    def _build(self) -> None:
        if self.models or self.error:
            return
        from gradcheck_cli.engines import symbolic
        from gradcheck_cli.expr import shapes as shape_inference

        try:
            with time_budget(SYMBOLIC_BUDGET_S):
                for src, root, used in zip(self.sources, self.roots, self.used):
                    var_shapes = {n: self.shapes[n] for n in used}
                    node_shapes = shape_inference.infer(root, var_shapes, src)
                    self.models.append(symbolic.build(root, node_shapes, var_shapes))
        except OutOfTime:
            self.error = f"SymPy did not finish building the reference within {SYMBOLIC_BUDGET_S:g} s"
        except (RecursionError, ValueError, TypeError, AttributeError, ZeroDivisionError) as exc:
            self.error = f"SymPy could not represent the reference ({type(exc).__name__}: {exc})"
        if self.error:
            self.models = []

    def values(self, arrays: dict) -> list | None:
        """The expected outputs (float64) at the point, one array per expression."""
        from gradcheck_cli.engines import symbolic

        self._build()
        if not self.models:
            return None
        with np.errstate(all="ignore"):
            return [symbolic.Evaluator(model, {n: arrays[n] for n in used}).value()
                    for model, used in zip(self.models, self.used)]

    def jacobians(self, arrays: dict, wrt: list, out_shapes: list) -> dict | None:
        """Exact Jacobians, (m, n_w) per wrt input with the outputs' rows concatenated;
        None (with `error` set) when SymPy cannot or the matrices would be too large."""
        from gradcheck_cli.engines import symbolic

        self._build()
        if not self.models:
            return None
        m = sum(math.prod(s) for s in out_shapes)
        for w in wrt:
            if m * math.prod(self.shapes[w]) > MAX_SYMBOLIC_ENTRIES:
                self.error = (f"the exact Jacobian w.r.t. {w!r} would have more than {MAX_SYMBOLIC_ENTRIES:,} "
                              "entries")
                return None
        out = {w: np.zeros((m, math.prod(self.shapes[w]))) for w in wrt}
        start = 0
        try:
            with time_budget(SYMBOLIC_BUDGET_S), np.errstate(all="ignore"):
                for model, used, shape in zip(self.models, self.used, out_shapes):
                    mine = [w for w in wrt if w in used]
                    n_out = math.prod(shape)
                    if mine:
                        grads = symbolic.Evaluator(model, {n: arrays[n] for n in used}).gradients(mine)
                        for w in mine:
                            jac = np.broadcast_to(grads[w], tuple(model.top_shape) + tuple(self.shapes[w]))
                            out[w][start:start + n_out] = _rows(jac, model.top_shape, shape, self.shapes[w])
                    start += n_out
        except OutOfTime:
            self.error = f"SymPy did not finish the reference's derivatives within {SYMBOLIC_BUDGET_S:g} s"
            return None
        except (RecursionError, ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:
            self.error = f"SymPy could not differentiate the reference ({type(exc).__name__}: {exc})"
            return None
        return out


def _rows(jac: np.ndarray, ref_shape: tuple, out_shape: tuple, in_shape: tuple) -> np.ndarray:
    """The reference's Jacobian as (n_out, n_in) rows for an output of `out_shape`: a
    reference of a broadcastable shape is broadcast, as its value is."""
    n_in = math.prod(in_shape)
    if tuple(ref_shape) == tuple(out_shape):
        return jac.reshape(math.prod(out_shape), n_in)
    full = np.broadcast_to(jac.reshape(tuple(ref_shape) + (n_in,)), tuple(out_shape) + (n_in,))
    return full.reshape(math.prod(out_shape), n_in)


def parse_reference(text: str, shapes: dict) -> Reference:
    """Parse `--reference`; names must be inputs.  Raises UserInputError (exit 2)."""
    from gradcheck_cli.expr import ir, parse
    from gradcheck_cli.expr import shapes as shape_inference

    sources = [part.strip() for part in text.split(";")]
    if not all(sources):
        raise UserInputError(f"--reference {text!r}: an empty expression (use ';' only between expressions)")
    roots, used = [], []
    for src in sources:
        root = parse(src)
        names = ir.names_in(root)
        unknown = [n for n in names if n not in shapes]
        if unknown:
            raise UserInputError(f"--reference {src!r} uses {', '.join(repr(u) for u in unknown)}, which "
                                 f"{'is not an input' if len(unknown) == 1 else 'are not inputs'} "
                                 f"(inputs: {', '.join(shapes) or 'none'})")
        shape_inference.infer(root, {n: shapes[n] for n in names}, src)  # shape errors are the user's
        roots.append(root)
        used.append(list(names))
    return Reference(text, sources, roots, used, dict(shapes))


def forward_verdict(got: list, expected: list, dtype: str, value_rtol: float) -> tuple[bool, str | None, dict]:
    """Whether the op's outputs match the reference elementwise; a message when not."""
    if len(got) != len(expected):
        return False, (f"the op returned {len(got)} output(s) but --reference gives {len(expected)} "
                       "expression(s) (separate one per output with ';')"), {}
    worst = {"max_abs_error": 0.0, "max_rel_error": 0.0}
    for k, (g, e) in enumerate(zip(got, expected)):
        g = np.asarray(g, dtype=np.float64)
        e = np.asarray(e, dtype=np.float64)
        if e.shape != g.shape and e.shape != ():
            return False, (f"output {k} has shape {list(g.shape)}, the reference {list(e.shape)}: the op's "
                           "output is not the shape --reference describes"), {}
        e = np.broadcast_to(e, g.shape)
        scale = float(np.max(np.abs(e[np.isfinite(e)]))) if np.any(np.isfinite(e)) else 0.0
        allowed = value_rtol * (np.abs(e) + 1e-2 * max(scale, 1.0))
        with np.errstate(all="ignore"):
            diff = np.abs(g - e)
            same = (g == e) | (np.isnan(g) & np.isnan(e))
            bad = ~same & ~(diff <= allowed)
            rel = np.where(same, 0.0, diff / np.abs(e))
        worst["max_abs_error"] = max(worst["max_abs_error"], float(np.nanmax(np.where(same, 0.0, diff)))
                                     if diff.size else 0.0)
        worst["max_rel_error"] = max(worst["max_rel_error"], float(np.nanmax(rel)) if rel.size else 0.0)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            label = ("out" if len(got) == 1 else f"out{k}") + (f"[{', '.join(map(str, idx))}]" if idx else "")
            return False, (f"the op's forward differs from --reference on {int(bad.sum())} of {g.size} element(s); "
                           f"first at {label}: op ({dtype}) {float(g[idx]):.10g}, reference {float(e[idx]):.10g} "
                           f"(allowed {float(allowed[idx]):.3g})"), worst
    return True, None, worst

