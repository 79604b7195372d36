"""Element-by-element expansion: the whole expression as one SymPy scalar in per-element
symbols, for small problems (the exact Hessian, --order 2)."""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from gradcheck_cli.engines import sympy_functions as fns
from gradcheck_cli.engines.symbolic import literal, numpy_lambdify, numpy_safe, power
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS

MAX_EXPANDED_ELEMENTS = 64


def expand_scalar(root: ir.Node, var_shapes: dict) -> tuple[sp.Expr, dict]:
    """The whole expression as one SymPy scalar in per-element symbols x_0, x_1, ...
    (only for scalar results and few elements).  Returns (expr, {name: [symbols]})."""
    elements = {name: np.array([sp.Symbol(f"{name}_{i}" if shape else name, real=True)
                                for i in range(math.prod(shape))], dtype=object).reshape(shape)
                for name, shape in var_shapes.items()}
    out: dict[int, np.ndarray] = {}
    vec = {}
    for node in ir.postorder(root):
        if isinstance(node, ir.Num):
            e = np.array(literal(node), dtype=object)
        elif isinstance(node, ir.Const):
            e = np.array(sp.pi if node.name == "pi" else sp.E, dtype=object)
        elif isinstance(node, ir.Name):
            e = elements[node.name]
        elif isinstance(node, ir.Unary):
            e = -out[id(node.operand)]
        elif isinstance(node, ir.Binary):
            a, b = out[id(node.left)], out[id(node.right)]
            e = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
                 "**": _vectorize(vec, power)}[node.op](a, b)
        elif isinstance(node, ir.Compare):
            fn = {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge}[node.op]
            e = _vectorize(vec, fn)(out[id(node.left)], out[id(node.right)])
        else:
            spec = FUNCTIONS[node.func]
            args = [out[id(a)] for a in node.args]
            summand = _vectorize(vec, lambda *xs, s=spec: s.sympy(sp, fns, *xs))(*args)
            if spec.kind == "reduction":
                items = list(np.asarray(summand, dtype=object).reshape(-1))
                if spec.reducer == "sum":
                    r = sp.Add(*items)
                elif spec.reducer == "mean":
                    r = sp.Add(*items) / len(items)
                elif spec.reducer == "prod":
                    r = sp.Mul(*items)
                else:
                    r = sp.log(sp.Add(*[sp.exp(i) for i in items]))
                e = np.array(spec.post(sp, r) if spec.post else r, dtype=object)
            else:
                e = summand
        out[id(node)] = np.asarray(e, dtype=object)
    result = out[id(root)]
    return result.reshape(()).item() if result.size == 1 else result, \
        {name: list(arr.reshape(-1)) for name, arr in elements.items()}


def _vectorize(cache: dict, fn):
    key = id(fn)
    if key not in cache:
        cache[key] = np.vectorize(fn, otypes=[object])
    return cache[key]


def hessian(root: ir.Node, var_shapes: dict, arrays: dict, wrt: list[str]) -> np.ndarray | None:
    """The exact Hessian over the flattened `wrt` variables, or None when there are too many elements."""
    total = sum(math.prod(var_shapes[w]) for w in wrt)
    if sum(math.prod(s) for s in var_shapes.values()) > MAX_EXPANDED_ELEMENTS or total == 0:
        return None
    expr, elems = expand_scalar(root, var_shapes)
    flat_wrt = [s for w in wrt for s in elems[w]]
    all_syms = [s for name in var_shapes for s in elems[name]]
    values = np.concatenate([np.asarray(arrays[name], dtype=np.float64).reshape(-1) for name in var_shapes])
    first = [sp.diff(expr, s) for s in flat_wrt]
    upper = [(i, j) for i in range(total) for j in range(i, total)]
    entries = [numpy_safe(sp.diff(first[i], flat_wrt[j])) for i, j in upper]
    fn = numpy_lambdify(all_syms, entries, cse=True)  # one compile for every entry
    with np.errstate(all="ignore"):
        numbers = [float(np.asarray(v, dtype=np.float64)) for v in fn(*values)]
    hess = np.zeros((total, total))
    for (i, j), v in zip(upper, numbers):
        hess[i, j] = hess[j, i] = v
    return hess
