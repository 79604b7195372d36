"""Exact derivatives with SymPy, evaluated in float64 with numpy.

The expression becomes a SymPy expression per element: variables are symbols that
stand for "the element of x at this position", and every reduction over a tensor
(sum, mean, prod, logsumexp, norm, dot, the losses) becomes a scalar symbol r_k with
its summand.  SymPy differentiates each summand once; numpy evaluates the formulas
over all elements at once; reverse accumulation through the reductions chains them.
So the SymPy work does not grow with the number of elements.

Small problems can also be expanded element by element (expanded.py), which is
what Hessians use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from gradcheck_cli.engines import sympy_functions as fns
from gradcheck_cli.engines.sympy_base import literal, numpy_lambdify, numpy_safe, power, real_constant  # noqa: F401
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS

CSE_MIN_OPS = 60  # formulas with more operations than this are compiled with cse
MAX_EXACT_ELEMENTS = 1000  # forward values are computed exactly (mpmath) up to this many elements


@dataclass
class Reduction:
    symbol: sp.Symbol
    summand: sp.Expr
    reducer: str  # 'sum' | 'mean' | 'prod' | 'logsumexp'
    shape: tuple  # broadcast shape of the summand


@dataclass
class Model:
    """The expression as a per-element SymPy expression plus its reductions (inner first)."""

    top: sp.Expr
    top_shape: tuple
    variables: dict  # name -> Symbol
    shapes: dict  # name -> shape
    reductions: list = field(default_factory=list)
    _compiled: dict = field(default_factory=dict)
    _derivatives: dict = field(default_factory=dict)

    @property
    def symbols(self) -> list:
        return list(self.variables.values()) + [r.symbol for r in self.reductions]

    def derivative(self, expr: sp.Expr, sym: sp.Symbol) -> sp.Expr:
        """d expr / d sym, computed once per pair."""
        key = (expr, sym)
        if key not in self._derivatives:
            shared = ("diff", expr, sym)  # shared across models, as compiled formulas are
            if shared not in _COMPILED:
                remember(shared, sp.diff(expr, sym))
            self._derivatives[key] = _COMPILED[shared]
        return self._derivatives[key]

    def compile(self, expr: sp.Expr):
        """lambdify once per formula; evaluating it is vectorized over every element.
        Compiled formulas are shared by every model with the same symbols (the same
        expression checked again, at another point or with --points), up to COMPILED_MAX;
        SymPy expressions are their own keys (structural equality, hashed once)."""
        fn = self._compiled.get(expr)
        if fn is None:
            shared = (tuple(self.symbols), expr)
            fn = _COMPILED.get(shared)
            if fn is None:
                # common-subexpression elimination pays off on large formulas only (its first
                # use also costs an import that a small check would notice)
                fn = numpy_lambdify(self.symbols, numpy_safe(expr), cse=sp.count_ops(expr) > CSE_MIN_OPS)
                remember(shared, fn)
            if len(self._compiled) < 10_000:
                self._compiled[expr] = fn
        return fn


COMPILED_MAX = 2048  # compiled formulas kept for the process (a check's formulas are a handful)
_COMPILED: dict = {}


def remember(key, value) -> None:
    """Keep a compiled formula for the process, dropping the oldest past COMPILED_MAX."""
    if len(_COMPILED) >= COMPILED_MAX:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = value


def build(root: ir.Node, node_shapes: dict, var_shapes: dict):
    """Translate the IR into a Model (no SymPy differentiation happens here); an expression
    with structured functions (matmul, softmax, indexing, ...) becomes the element-expanded
    TensorModel instead, or raises tensor_model.OverBudget (a ValueError) past its budget."""
    from gradcheck_cli.engines import tensor_model

    if tensor_model.is_structured(root):
        tensor_model.check_budget(root, node_shapes, var_shapes)
        return tensor_model.TensorModel(root, node_shapes, var_shapes)
    variables = {name: sp.Symbol(name, real=True) for name in var_shapes}
    reductions: list[Reduction] = []
    out: dict[int, sp.Expr] = {}
    for node in ir.postorder(root):
        if isinstance(node, ir.Num):
            e = literal(node)
        elif isinstance(node, ir.Const):
            e = sp.pi if node.name == "pi" else sp.E
        elif isinstance(node, ir.Name):
            e = variables[node.name]
        elif isinstance(node, ir.Unary):
            e = -out[id(node.operand)]
        elif isinstance(node, ir.Binary):
            a, b = out[id(node.left)], out[id(node.right)]
            e = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                 "**": lambda: power(a, b)}[node.op]()
        elif isinstance(node, ir.Compare):
            a, b = out[id(node.left)], out[id(node.right)]
            e = {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge}[node.op](a, b)
        else:
            spec = FUNCTIONS[node.func]
            args = [out[id(a)] for a in node.args]
            e = spec.sympy(sp, fns, *args, **spec.bound(node))
            if spec.kind == "reduction":
                shape = ()
                for a in node.args:
                    shape = _broadcast_shape(shape, node_shapes[id(a)])
                if shape == ():  # a reduction over one element is its summand
                    r = e
                else:
                    r = sp.Symbol(f"{ir.to_source(node)}" if spec.post is None else
                                  f"sum({ir.to_source(node.args[0])}**2)", real=True)
                    reductions.append(Reduction(r, e, spec.reducer, shape))
                e = spec.post(sp, r) if spec.post else r
        if isinstance(node, (ir.Binary, ir.Call)):
            e = real_constant(e)
        out[id(node)] = e
    return Model(out[id(root)], node_shapes[id(root)], variables, dict(var_shapes), reductions)


def _broadcast_shape(a: tuple, b: tuple) -> tuple:
    return tuple(np.broadcast_shapes(a, b))


class Evaluator:
    """Numbers for a Model at one point: values, gradients, Jacobians, all in float64.
    Given a TensorModel (build() of a structured expression), it gives that model's own
    evaluator, with the same `.value()` and `.gradients(wrt)`."""

    def __new__(cls, model, arrays: dict):
        if not isinstance(model, Model):
            return model.at(arrays)
        return super().__new__(cls)

    def __init__(self, model: Model, arrays: dict):
        self.model = model
        self.args = [np.asarray(arrays[name], dtype=np.float64) for name in model.variables]
        n_vars = len(self.args)
        self.args += [np.asarray(np.nan)] * len(model.reductions)
        with np.errstate(all="ignore"):
            for k, red in enumerate(model.reductions):  # inner reductions come first
                summand = self._eval(red.summand, red.shape)
                self.args[n_vars + k] = np.asarray(_reduce(red.reducer, summand))
        self._summands: dict[int, np.ndarray] = {}

    def _eval(self, expr: sp.Expr, shape: tuple) -> np.ndarray:
        with np.errstate(all="ignore"):
            value = self.model.compile(expr)(*self.args)
        return np.broadcast_to(np.asarray(value, dtype=np.float64), shape)

    def value(self) -> np.ndarray:
        """The forward value: exact (mpmath, 40 digits, rounded once to float64) for small
        problems without reductions, else the float64 evaluation of the exact formula."""
        approx = np.array(self._eval(self.model.top, self.model.top_shape))
        # mpmath computes huge values exactly (exp(exp(exp(exp(3)))) takes minutes): refine
        # only values that float64 can hold
        if np.all(np.isfinite(approx)) and np.all(np.abs(approx) < 1e300):
            exact = self._exact_value()
            if exact is not None:
                return exact
        return approx

    def _exact_value(self) -> np.ndarray | None:
        model = self.model
        n_vars = len(model.variables)
        if model.reductions or sum(a.size for a in self.args[:n_vars]) > MAX_EXACT_ELEMENTS:
            return None
        import mpmath

        try:
            key = ("mpmath", tuple(model.variables.values()), model.top)
            fn = _COMPILED.get(key)
            if fn is None:
                fn = sp.lambdify(list(model.variables.values()), numpy_safe(model.top),
                                 modules=[fns.MPMATH_FUNCTIONS, "mpmath"])
                remember(key, fn)
            with mpmath.workdps(40), np.errstate(all="ignore"):  # nan is an answer here, not a warning
                one = lambda *xs: float(fn(*[mpmath.mpf(float(x)) for x in xs]))  # noqa: E731
                value = np.vectorize(one, otypes=[np.float64])(*self.args[:n_vars])
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, NameError, AttributeError, KeyError):
            return None  # e.g. log of a negative number: mpmath goes complex; float64 says nan
        return np.array(np.broadcast_to(value, model.top_shape))

    def _summand(self, k: int) -> np.ndarray:
        if k not in self._summands:
            red = self.model.reductions[k]
            self._summands[k] = self._eval(red.summand, red.shape)
        return self._summands[k]

    def _weights(self, k: int) -> np.ndarray:
        """d r_k / d summand, per element."""
        red = self.model.reductions[k]
        summand = self._summand(k)
        r = self.args[len(self.model.variables) + k]
        with np.errstate(all="ignore"):
            if red.reducer == "sum":
                return np.ones(red.shape)
            if red.reducer == "mean":
                return np.full(red.shape, 1.0 / max(1, summand.size))
            if red.reducer == "logsumexp":
                return np.exp(summand - r)
            return _exclusive_products(summand)

    def backprop(self, seeds: dict, wrt: list[str]) -> dict:
        """Gradients of sum_k seeds[k] * r_k w.r.t. the variables in `wrt`."""
        model = self.model
        adjoint = np.zeros(len(model.reductions))
        for k, s in seeds.items():
            adjoint[k] += s
        grads = {w: np.zeros(model.shapes[w]) for w in wrt}
        red_index = {red.symbol: k for k, red in enumerate(model.reductions)}
        for k in range(len(model.reductions) - 1, -1, -1):
            if adjoint[k] == 0:
                continue
            red = model.reductions[k]
            weighted = adjoint[k] * self._weights(k)
            for sym in red.summand.free_symbols:
                if sym in red_index or sym.name in grads:
                    local = self._eval(model.derivative(red.summand, sym), red.shape)
                    with np.errstate(all="ignore"):
                        contribution = weighted * local
                    if sym in red_index:
                        adjoint[red_index[sym]] += np.sum(contribution)
                    else:
                        grads[sym.name] += _sum_to_shape(contribution, model.shapes[sym.name])
        return grads

    def gradients(self, wrt: list[str]) -> dict:
        """Gradient (scalar result) or Jacobian (tensor result) for each name in `wrt`,
        shaped out_shape + in_shape like the autograd engine's."""
        model = self.model
        red_index = {red.symbol: k for k, red in enumerate(model.reductions)}
        top_syms = model.top.free_symbols
        out_shape = model.top_shape
        n_out = math.prod(out_shape)
        jac = {w: np.zeros((n_out, math.prod(model.shapes[w]))) for w in wrt}
        for w in wrt:
            sym = model.variables[w]
            if sym in top_syms:  # direct dependence: output element o sees one element of w
                local = self._eval(model.derivative(model.top, sym), out_shape).reshape(-1)
                idx = np.broadcast_to(np.arange(math.prod(model.shapes[w])).reshape(model.shapes[w]),
                                      out_shape).reshape(-1)
                np.add.at(jac[w], (np.arange(n_out), idx), local)
        for sym in top_syms:
            if sym not in red_index:
                continue
            coeff = self._eval(model.derivative(model.top, sym), out_shape).reshape(-1)
            through = self.backprop({red_index[sym]: 1.0}, wrt)
            for w in wrt:
                with np.errstate(all="ignore"):
                    jac[w] += np.outer(coeff, through[w].reshape(-1))
        return {w: jac[w].reshape(out_shape + tuple(model.shapes[w])) for w in wrt}


def formulas(model: Model, wrt: list[str]) -> dict:
    """Readable derivative formulas: d(result)/d(name), per element.  Reductions appear
    under their own source text (`mean(x)`); an adjoint through an inner reduction
    appears as sum(...) over its elements.  (Structured expressions: formula_text.py.)"""
    red_index = {red.symbol: k for k, red in enumerate(model.reductions)}
    adjoint: list[sp.Expr] = [sp.S.Zero] * len(model.reductions)
    for sym in model.top.free_symbols:
        if sym in red_index:
            adjoint[red_index[sym]] += sp.diff(model.top, sym)
    grads = {w: sp.diff(model.top, model.variables[w]) for w in wrt}
    total = sp.Function("sum")
    for k in range(len(model.reductions) - 1, -1, -1):
        red = model.reductions[k]
        if adjoint[k] == 0:
            continue
        n = math.prod(red.shape)
        weight = {"sum": sp.S.One, "mean": sp.Rational(1, n), "logsumexp": sp.exp(red.summand - red.symbol),
                  "prod": red.symbol / red.summand}[red.reducer]
        for sym in red.summand.free_symbols:
            local = adjoint[k] * weight * sp.diff(red.summand, sym)
            if sym in red_index:
                adjoint[red_index[sym]] += total(local)
            elif sym.name in grads:
                grads[sym.name] += local
    return {w: str(g) for w, g in grads.items()}


def _reduce(reducer: str, summand: np.ndarray) -> float:
    if reducer == "sum":
        return float(np.sum(summand))
    if reducer == "mean":
        return float(np.mean(summand))
    if reducer == "prod":
        return float(np.prod(summand))
    m = float(np.max(summand))
    if not math.isfinite(m):
        return m
    return m + math.log(float(np.sum(np.exp(summand - m))))


def _exclusive_products(x: np.ndarray) -> np.ndarray:
    """For each element, the product of all the others (exact with zeros present)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    before = np.concatenate(([1.0], np.cumprod(flat[:-1])))
    after = np.concatenate((np.cumprod(flat[::-1][:-1])[::-1], [1.0]))
    return (before * after).reshape(x.shape)


def _sum_to_shape(x: np.ndarray, shape: tuple) -> np.ndarray:
    """Undo broadcasting: sum over the dimensions that broadcasting added or stretched."""
    x = np.asarray(x)
    lead = x.ndim - len(shape)
    if lead:
        x = x.sum(axis=tuple(range(lead)))
    stretched = tuple(i for i, d in enumerate(shape) if d == 1 and x.shape[i] != 1)
    if stretched:
        x = x.sum(axis=stretched, keepdims=True)
    return np.broadcast_to(x, shape).copy()
