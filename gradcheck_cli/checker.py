"""`check_expression`: an expression's gradients by autograd, symbolic and finite
differences, compared.  parse -> values -> engines -> compare -> CheckResult (report.py),
which render/ draws."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from gradcheck_cli import check_notes as notes
from gradcheck_cli import compare as cmp
from gradcheck_cli.budget import OutOfTime, time_budget
from gradcheck_cli.devices import require as require_device
from gradcheck_cli.dtypes import rounded, torch_version
from gradcheck_cli.errors import UserInputError
from gradcheck_cli.expr import ir, parse
from gradcheck_cli.expr import shapes as shape_inference
from gradcheck_cli.expr.functions import CONSTANTS, FUNCTIONS, KINK_CONVENTIONS
from gradcheck_cli.check_notes import TARGET
from gradcheck_cli.loss_notes import bce_clamped
from gradcheck_cli.report import CheckResult, Diagnostic, GradientResult, Report
from gradcheck_cli.shared import SharedOptions, dedupe, validate_seed, validate_shared, worst_of_points
from gradcheck_cli.tolerances import FD_SCHEMES
from gradcheck_cli.values import Value, parse_value, parse_values

LOSSES = ("none", "bce", "bce_logits", "mse")
SYMBOLIC_BUDGET_S = 20.0  # seconds of SymPy work before the symbolic column gives up
# What SymPy (and its printers: lambdify cannot print zoo, x/0) may raise on an expression
# it cannot handle: the symbolic column becomes null with a diagnostic, never a traceback.
SYMPY_FAILURES = (RecursionError, ValueError, TypeError, AttributeError, KeyError, NameError, ArithmeticError,
                  NotImplementedError)
MAX_HESSIAN_SIZE = 400
LIST_UP_TO = 1000  # float arrays from Python callers up to this size are read as lists (their text in messages)


@dataclass(frozen=True)
class Options(SharedOptions):
    """Everything `gradcheck check` can be told, validated."""

    formula: bool = False
    symbolic_budget: float | None = SYMBOLIC_BUDGET_S

    def validate(self) -> "Options":
        validate_shared(self, cmp.DTYPES, FD_SCHEMES)
        return self


@dataclass
class Prepared:
    """A parsed expression with its values: everything that does not change between points."""

    source: str
    name: str
    root: ir.Node
    values: dict  # name -> Value
    wrt: list
    loss: str
    target: Value | None
    node_shapes: dict
    var_shapes: dict
    calls: set
    model: Any = None  # the SymPy model, built once
    symbolic_error: str | None = None


def _items(at: Any) -> list[tuple[str, Any]]:
    if at is None:
        return []
    if isinstance(at, dict):
        return list(at.items())
    return list(at)


def max_numel_of(prep) -> int:
    """The largest node of a prepared expression (elements): its finite-difference batches' cap."""
    return max(math.prod(s) for s in prep.node_shapes.values())


def prepare(expr: str, at: Any = None, *, wrt: Iterable[str] | None = None, loss: str = "none",
            target: Any = None, seed: int = 0, name: str | None = None) -> Prepared:
    """Parse the expression, read the values and settle what to differentiate."""
    if loss not in LOSSES:
        raise UserInputError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    validate_seed(seed)
    user_root = parse(expr)
    items = [(k, _external(v)) for k, v in _items(at)]
    for k, _ in items:
        if k in CONSTANTS:
            raise UserInputError(f"{k!r} is a constant and cannot be given a value")
        if k in FUNCTIONS:
            raise UserInputError(f"{k!r} is a function name and cannot be given a value")
    values = parse_values(items, seed)
    root, target_value = user_root, None
    if loss != "none":
        if target is None:
            raise UserInputError(f"--loss {loss} needs --target VALUE")
        if TARGET in ir.names_in(user_root) or TARGET in values:
            raise UserInputError(f"the name {TARGET!r} is taken by the loss target; rename the variable")
        target_value = parse_value(TARGET, _external(target), np.random.default_rng([seed, 1]))
        values = {**values, TARGET: target_value}
        root = ir.Call(loss, (user_root, ir.Name(TARGET, 0)), 0)
    elif target is not None:
        raise UserInputError("--target needs --loss (bce, bce_logits or mse)")
    names = ir.names_in(root)
    if not names:
        raise UserInputError("the expression has no variables: there is nothing to differentiate")
    missing = [n for n in names if n not in values]
    if missing:
        raise UserInputError("no value for " + ", ".join(repr(m) for m in missing) +
                             f" (give {'it' if len(missing) == 1 else 'them'} with --at NAME=VALUE)")
    unused = [n for n in values if n not in names]
    if unused:
        raise UserInputError("value given for " + ", ".join(repr(u) for u in unused) +
                             f", which the expression {expr!r} does not use")
    default = [n for n in names if n != TARGET and values[n].differentiable]
    chosen = list(default if wrt is None else wrt)
    if not chosen:
        raise UserInputError("--wrt names no variable" if wrt is not None else
                             "every variable holds integers or booleans (int(...), bool(...), randint(...)), "
                             "which are never differentiated: there is nothing to differentiate")
    for w in chosen:
        if w not in names:
            raise UserInputError(f"--wrt {w!r}: the expression has no variable {w!r} "
                                 f"(its variables: {', '.join(names)})")
        if not values[w].differentiable:
            raise UserInputError(f"--wrt {w!r}: {w!r} holds {values[w].kind}s ({values[w].text}): class indices, "
                                 "indices and masks are never differentiated; leave it out of --wrt")
    if len(set(chosen)) != len(chosen):
        raise UserInputError("--wrt names a variable twice")
    var_shapes = {n: tuple(values[n].array.shape) for n in names}
    kinds = {n: values[n].kind for n in names}
    node_shapes = shape_inference.infer(root, var_shapes, expr, kinds)
    shape_inference.check_class_targets(root, {n: values[n].array for n in names}, kinds, node_shapes, expr)
    ordered = {n: v for n, v in values.items() if n in names}  # the user's order, for the report
    return Prepared(expr, name or expr, root, ordered, chosen, loss, target_value,
                    node_shapes, var_shapes, ir.calls_in(root))


def _external(v: Any) -> Any:
    """Accept numpy arrays and torch tensors from Python callers: floating ones as lists,
    integer and boolean ones as numpy arrays, which keep their kind (class targets, masks)."""
    if hasattr(v, "detach") and hasattr(v, "tolist"):
        t = v.detach().cpu()
        if not (t.is_floating_point() or t.is_complex()):
            return t.numpy()
        v = t.double().numpy() if t.is_floating_point() else t.double().tolist()
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "biu":
            return v
        if v.dtype.kind == "f" and v.size > LIST_UP_TO and np.all(np.isfinite(v)):
            return v.astype(np.float64)  # as it is: a million numbers re-read as text would take seconds
        return v.astype(np.float64).tolist()
    if isinstance(v, np.generic):
        return float(v)
    return v


def _symbolic_model(prep: Prepared, budget: float | None):
    if prep.model is None and prep.symbolic_error is None:
        from gradcheck_cli.engines import symbolic

        from gradcheck_cli.engines.tensor_model import OverBudget

        try:
            with time_budget(budget):
                prep.model = symbolic.build(prep.root, prep.node_shapes, prep.var_shapes)
        except OverBudget as exc:
            prep.symbolic_error = str(exc)
        except OutOfTime:
            prep.symbolic_error = f"SymPy did not finish building the expression within {budget:g} s"
        except SYMPY_FAILURES as exc:
            prep.symbolic_error = f"SymPy could not represent the expression ({type(exc).__name__}: {exc})"
    return prep.model


def _rounded(arrays: dict, dtype: str) -> dict:
    """The point as the dtype represents it; integer and boolean values stay as they are."""
    whole = {k: v for k, v in arrays.items() if np.asarray(v).dtype.kind in "biu"}
    if not whole or dtype == "float64":
        return rounded(arrays, dtype)
    return {**rounded({k: v for k, v in arrays.items() if k not in whole}, dtype), **whole}


def check_at(prep: Prepared, arrays: dict, opts: Options) -> CheckResult:
    """All three methods at one point, compared."""
    from gradcheck_cli.engines import autograd, fd_batch, fd_screen, finite_diff, symbolic

    started = time.perf_counter()
    diags: list[Diagnostic] = []
    ref_arrays = _rounded(arrays, opts.dtype)
    out_shape = prep.node_shapes[id(prep.root)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # double backward only for a Hessian that will be compared (_hessian's size limit)
        order = opts.order if _hessian_size(prep) <= MAX_HESSIAN_SIZE else 1
        auto = autograd.run(prep.root, arrays, prep.wrt, opts.dtype, device=opts.device, order=order)
        sym_value = sym_value_ref = None
        sym_grads: dict = {}
        formulas: dict = {}
        model = _symbolic_model(prep, opts.symbolic_budget)
        symbolic_error = prep.symbolic_error
        if model is not None:
            try:
                with time_budget(opts.symbolic_budget):
                    exact = symbolic.Evaluator(model, arrays)
                    sym_value = exact.value()
                    at_ref = exact if ref_arrays is arrays else symbolic.Evaluator(model, ref_arrays)
                    sym_value_ref = at_ref.value()
                    sym_grads = at_ref.gradients(prep.wrt)
                    if opts.formula:
                        formulas = _formulas(prep, model)
            except OutOfTime:
                symbolic_error = f"SymPy did not finish within {opts.symbolic_budget:g} s"
            except SYMPY_FAILURES as exc:
                symbolic_error = f"SymPy could not differentiate the expression ({type(exc).__name__}: {exc})"
            if symbolic_error:
                sym_value = sym_value_ref = None
                sym_grads = {}
        if symbolic_error:
            diags.append(Diagnostic("symbolic_unavailable", symbolic_error + "; symbolic is null, the verdict "
                                    "rests on finite differences"))
        scheme, why = finite_diff.resolve_scheme(opts.fd, prep.root, ref_arrays, prep.node_shapes)
        if why:
            diags.append(Diagnostic("fd_fallback", why))
        max_numel = max_numel_of(prep)
        tol = cmp.tolerance(opts.dtype, opts.atol, opts.rtol)
        # one batch (the point, f0, its kinks) for every variable differenced
        batch = fd_batch.Batch(prep.root, ref_arrays, out_shape, max_numel, scheme == "complex",
                               shapes=prep.node_shapes)  # shapes inferred once, in prepare
        fd_results = {w: fd_screen.jacobian_for_check(
            prep.root, ref_arrays, w, out_shape, requested=opts.fd, scheme=scheme, eps=opts.eps, max_numel=max_numel,
            seed=opts.seed, tol=tol, autograd=None if "detach" in prep.calls else auto.gradients[w], batch=batch)
            for w in prep.wrt}
    for warning in caught:
        diags.append(Diagnostic("warning", f"{warning.category.__name__}: {warning.message}"))
    gradients = []
    for w in prep.wrt:
        g, extra = _gradient(prep, w, auto.gradients[w], sym_grads.get(w), fd_results[w], out_shape, tol,
                             formulas.get(w))
        gradients.append(g)
        diags.extend(extra)
    diags.extend(notes.kink_diagnostics(prep, fd_results, auto.gradients, out_shape))
    diags.extend(notes.sampling_diagnostics(prep, fd_results))
    diags.extend(notes.value_diagnostics(prep, auto.value, sym_value, arrays, opts) + bce_clamped(prep.root, ref_arrays))
    diags.extend(notes.rounding_diagnostics(arrays, ref_arrays, opts.dtype))
    for w in auto.unused:
        diags.append(Diagnostic("no_dependence", f"autograd's graph does not reach {w!r} "
                                "(unused, or only inside detach()): its gradient is 0", w))
    extra = {"expression": ir.to_source(prep.root) if prep.loss != "none" else prep.source,
             "fd_scheme": _scheme_label(scheme, fd_results), "torch_version": torch_version(), "conventions": KINK_CONVENTIONS}
    if prep.loss != "none":
        extra["loss"] = prep.loss
        extra["target"] = prep.target.array
    if opts.order == 2:
        extra["hessian"], hess_ok, hess_diags = _hessian(prep, arrays, ref_arrays, auto, tol, opts, scheme)
        diags.extend(hess_diags)
    else:
        hess_ok = True
    extra["duration_s"] = round(time.perf_counter() - started, 4)
    value_finite = bool(np.all(np.isfinite(auto.value)))  # a gradient of an undefined value means nothing
    passed = all(g.passed for g in gradients) and hess_ok and value_finite
    value = {"torch": auto.value, "symbolic": sym_value}
    if ref_arrays is not arrays and sym_value_ref is not None:
        value["symbolic_at_dtype_point"] = sym_value_ref
    point = {k: arrays[k] for k in prep.values if k != TARGET}
    return CheckResult(prep.name, "expression", passed, opts.dtype, point, value, tuple(gradients),
                       tuple(dedupe(diags)), extra)


def _scheme_label(scheme: str, fd_results: dict) -> str:
    """The scheme, or what --fd auto's screen (fd_screen.py) used: 'central' alone, or
    'central+richardson' where some elements needed richardson."""
    labels = {fd.scheme for fd in fd_results.values()}
    return labels.pop() if len(labels) == 1 else "central+richardson" if scheme == "richardson" else scheme


def _formulas(prep: Prepared, model) -> dict:
    """--formula: per-element formulas, or index notation for structured expressions."""
    from gradcheck_cli.engines import formula_text, symbolic

    if isinstance(model, symbolic.Model):
        return symbolic.formulas(model, prep.wrt)
    try:
        return formula_text.formulas(prep.root, prep.node_shapes, prep.var_shapes, prep.wrt)
    except Exception as exc:  # a display aid: the check's numbers stand without it
        return {w: f"(no formula: {type(exc).__name__}: {exc})" for w in prep.wrt}


def _gradient(prep, w, auto, sym, fd, out_shape, tol, formula) -> tuple[GradientResult, list]:
    in_shape = prep.var_shapes[w]
    shape = tuple(out_shape) + tuple(in_shape)
    fd_jac = fd.jacobian.reshape(shape)
    fd_err = fd.error.reshape(shape)
    lo = hi = None
    if fd.kink_mask is not None and fd.kink_mask.any() and fd.forward_slope is not None:
        f_sl, b_sl = fd.forward_slope.reshape(shape), fd.backward_slope.reshape(shape)
        mask = fd.kink_mask.reshape(shape)
        lo = np.where(mask, np.minimum(f_sl, b_sl), np.nan)
        hi = np.where(mask, np.maximum(f_sl, b_sl), np.nan)
    result = cmp.compare(w, auto, sym, fd_jac, fd_err, tol, kink_lo=lo, kink_hi=hi,
                         stop_gradient="detach" in prep.calls, has_where="where" in prep.calls, input_ndim=len(in_shape))
    computed = None if fd.sampled is None else ~np.isnan(fd_jac)
    g = GradientResult(
        wrt=w, shape=shape, input_shape=tuple(in_shape), output_shape=tuple(out_shape), autograd=auto,
        symbolic=sym, finite_difference=fd_jac, fd_error_estimate=fd_err, fd_computed=computed,
        max_abs_error=cmp.max_error(result.abs_err), max_rel_error=cmp.max_error(result.rel_err),
        reference=result.reference, worst_index=result.worst, passed=result.passed,
        tolerance={"atol": tol["atol"], "rtol": tol["rtol"], "fd_safety": cmp.FD_SAFETY},
        errors=result.errors, formula=formula, failed_elements=int((~result.ok).sum()), failing=result.failing)
    return g, result.diagnostics


def _hessian_size(prep) -> int:
    """The Hessian's side: every element of every wrt variable."""
    return sum(math.prod(prep.var_shapes[w]) for w in prep.wrt)


def _hessian(prep, arrays, ref_arrays, auto, tol, opts, scheme):
    """Hessian by double backward, exact SymPy (small problems) and finite differences of
    the exact gradient, rows and columns in wrt order."""
    from gradcheck_cli.engines import expanded

    diags = []
    n = _hessian_size(prep)
    if prep.node_shapes[id(prep.root)] != () or (n <= MAX_HESSIAN_SIZE and auto.hessian is None):
        diags.append(Diagnostic("hessian_unavailable", "--order 2 needs a scalar result (wrap it in sum(...))"))
        return None, True, diags
    if n > MAX_HESSIAN_SIZE:
        diags.append(Diagnostic("hessian_unavailable", f"the Hessian would be {n}x{n}; the limit is "
                                f"{MAX_HESSIAN_SIZE} variables' elements"))
        return None, True, diags
    sym_h = None
    try:
        with time_budget(opts.symbolic_budget):
            sym_h = expanded.hessian(prep.root, prep.var_shapes, ref_arrays, prep.wrt)
    except (OutOfTime, *SYMPY_FAILURES) as exc:
        diags.append(Diagnostic("symbolic_unavailable", f"symbolic Hessian unavailable ({type(exc).__name__})"))
    if sym_h is None and not diags:
        diags.append(Diagnostic("symbolic_unavailable", "the symbolic Hessian expands every element and is "
                                f"limited to {expanded.MAX_EXPANDED_ELEMENTS} elements in all; symbolic is null"))
    fd_h = _fd_hessian(prep, ref_arrays, opts)
    result = cmp.compare("hessian", auto.hessian, sym_h, fd_h, np.abs(fd_h) * 1e-6 + 1e-8, tol,
                         mismatch="hessian_mismatch")
    diags.extend(result.diagnostics)
    labels = [w if prep.var_shapes[w] == () else f"{w}[{', '.join(map(str, idx))}]"
              for w in prep.wrt for idx in np.ndindex(*prep.var_shapes[w])]
    return {"autograd": auto.hessian, "symbolic": sym_h, "finite_difference": fd_h, "passed": result.passed,
            "max_abs_error": cmp.max_error(result.abs_err), "wrt": prep.wrt, "labels": labels}, result.passed, diags


def _fd_hessian(prep, ref_arrays, opts) -> np.ndarray:
    """Central differences of the float64 autograd gradient (the first derivatives are
    themselves checked above), symmetrized."""
    from gradcheck_cli.engines import autograd

    sizes = [math.prod(prep.var_shapes[w]) for w in prep.wrt]
    n = sum(sizes)
    hess = np.zeros((n, n))
    col = 0
    for w, size in zip(prep.wrt, sizes):
        base = np.asarray(ref_arrays[w], dtype=np.float64)
        for j in range(size):
            h = (np.finfo(float).eps ** (1 / 3)) * max(1.0, abs(base.reshape(-1)[j]))
            grads = []
            for sign in (1, -1):
                moved = base.copy().reshape(-1)
                moved[j] += sign * h
                point = {**ref_arrays, w: moved.reshape(base.shape)}
                g = autograd.run(prep.root, point, prep.wrt, "float64").gradients
                grads.append(np.concatenate([g[v].reshape(-1) for v in prep.wrt]))
            hess[:, col] = (grads[0] - grads[1]) / (2 * h)
            col += 1
    return (hess + hess.T) / 2


def check_expression(expr: str, at: Any = None, *, wrt: Iterable[str] | None = None, loss: str = "none",
                     target: Any = None, dtype: str = "float64", fd: str = "auto", eps: float | None = None,
                     atol: float | None = None, rtol: float | None = None, points: int = 0, seed: int = 0,
                     order: int = 1, formula: bool = False, name: str | None = None, device: str = "cpu",
                     progress=None, symbolic_budget: float | None = SYMBOLIC_BUDGET_S,
                     on_ready=None) -> Report:
    """Check an expression's gradients three ways; returns a Report (never raises on a
    wrong gradient; raises UserInputError on input that cannot be used)."""
    opts = Options(dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points, seed=seed, order=order,
                   formula=formula, device=device, symbolic_budget=symbolic_budget).validate()
    prep = prepare(expr, at, wrt=wrt, loss=loss, target=target, seed=seed, name=name)
    if on_ready is not None:  # the input is valid; the engines are about to run
        on_ready()
    return Report((run_prepared(prep, opts, progress),))


def run_prepared(prep: Prepared, opts: Options, progress=None) -> CheckResult:
    """The given point, then --points random ones; the worst is reported."""
    require_device(opts.device)  # exit 2, not a traceback, for a device torch does not have
    return worst_of_points(lambda arrays: check_at(prep, arrays, opts), prep.values, opts.seed, opts.points,
                           fixed=(TARGET,), progress=progress)

