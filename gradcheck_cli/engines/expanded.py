"""Element-by-element expansion: the whole expression as one SymPy scalar in per-element
symbols, for small problems (the exact Hessian, --order 2)."""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from gradcheck_cli.engines.sympy_base import numpy_lambdify, numpy_safe
from gradcheck_cli.engines.sympy_tensor import TensorOps, element_symbols, expand
from gradcheck_cli.expr import ir

MAX_EXPANDED_ELEMENTS = 64


def expand_scalar(root: ir.Node, var_shapes: dict) -> tuple[sp.Expr, dict]:
    """The whole expression as one SymPy scalar in per-element symbols (only for scalar
    results and few elements; structured functions included).  Returns (expr, {name: [symbols]})."""
    elements = {name: element_symbols(k, shape) for k, (name, shape) in enumerate(var_shapes.items())}
    result = expand(root, elements, TensorOps())
    return result.reshape(()).item() if result.size == 1 else result, \
        {name: list(arr.reshape(-1)) for name, arr in elements.items()}


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
