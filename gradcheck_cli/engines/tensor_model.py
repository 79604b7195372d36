"""The exact symbolic model of expressions with structured functions (matmul, reductions
over a dim, softmax, the class losses, indexing, reshape, cat, stack).

Every element of every node is a SymPy expression in the elements of its operands
(sympy_tensor.py); each one that is not a plain symbol or number becomes a named
intermediate t_k with its own small formula.  SymPy differentiates each formula with
respect to each symbol it uses (the exact local derivatives); numpy evaluates the
formulas and their local derivatives in float64, and reverse accumulation chains them,
for every output element at once -- as the per-element model (symbolic.py) chains its
exact summand derivatives through reductions.  Nothing here knows torch.

The SymPy work grows with the number of element operations, so the model has a budget
(MAX_ELEMENT_OPS, estimated from the shapes before anything is built); beyond it the
symbolic column is null and the diagnostic says how to shrink the check.  Every example
of the README's "from the notebook to real models" page builds and evaluates in well
under a second.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from gradcheck_cli.engines.sympy_base import numpy_lambdify, numpy_safe
from gradcheck_cli.engines.sympy_tensor import TensorOps, element_symbols, expand
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS, structured

MAX_ELEMENT_OPS = 6_000  # element operations in the expanded formulas (8x8 @ 8x8 is 512; see element_ops)
MAX_JACOBIAN_ENTRIES = 2_000_000  # output elements x symbols the reverse accumulation carries


class OverBudget(ValueError):
    """The element-expanded model would exceed its budget; the message says how to shrink it."""


def element_ops(root: ir.Node, node_shapes: dict) -> int:
    """An estimate of the element operations the expanded formulas hold: a matmul's
    multiply-adds, three per element for reductions and normalizations, one per element
    (and operand) for the rest."""
    total = 0
    for node in ir.postorder(root):
        n = math.prod(node_shapes[id(node)])
        ins = [math.prod(node_shapes[id(c)]) for c in ir.children(node)]
        if isinstance(node, ir.Binary) and node.op == "@":
            left = node_shapes[id(node.left)]
            total += n * (left[-1] if left else 1)
        elif isinstance(node, ir.Call) and (structured(node) or FUNCTIONS[node.func].kind == "reduction"):
            total += 3 * sum(ins) + n
        elif not isinstance(node, (ir.Name, ir.Num, ir.Const)):
            total += n * max(1, len(ins))
    return total


def check_budget(root: ir.Node, node_shapes: dict, var_shapes: dict) -> None:
    """Raise OverBudget when the expanded model would be too large to build quickly."""
    ops = element_ops(root, node_shapes)
    n_out = math.prod(node_shapes[id(root)])
    if ops <= MAX_ELEMENT_OPS and n_out * (ops + sum(math.prod(s) for s in var_shapes.values())) <= \
            MAX_JACOBIAN_ENTRIES:
        return
    sizes = ", ".join(f"{name} {list(shape)}" for name, shape in var_shapes.items())
    raise OverBudget(
        f"the exact model of matmul, softmax, reductions over a dim and indexing expands every element, and this "
        f"check would take about {ops:,} element operations (budget {MAX_ELEMENT_OPS:,})"
        + (f" for each of {n_out:,} output elements" if ops <= MAX_ELEMENT_OPS else "") + f" ({sizes}). "
        "Shrink the check to see the symbolic column: the same expression with smaller tensors (a few rows and "
        "columns) checks the same formulas" + (", or reduce the result to a scalar (sum(...), mean(...))"
                                               if n_out > 1 else "")
        + "; autograd and finite differences still check this size")


class TensorModel:
    """The element-expanded model: named intermediates and their exact local derivatives."""

    def __init__(self, root: ir.Node, node_shapes: dict, var_shapes: dict):
        self.top_shape = tuple(node_shapes[id(root)])
        self.shapes = dict(var_shapes)
        self.variables = {name: element_symbols(k, shape) for k, (name, shape) in enumerate(var_shapes.items())}
        self.defs: list = []  # (symbol, formula) in evaluation order
        self.formula: dict = {}  # symbol -> formula
        self.outputs = expand(root, self.variables, TensorOps(self.define), self._settle)
        self.arguments = [s for arr in self.variables.values() for s in arr.reshape(-1)]
        self.slot = {s: k for k, s in enumerate(self.arguments + [s for s, _ in self.defs])}
        self._templates: dict = {}
        self._forward = None
        self._backward: dict = {}

    def define(self, e):
        """A named intermediate for a compound formula (symbols and numbers stay as they are)."""
        if not isinstance(e, sp.Expr) or e.is_Atom:
            return e
        sym = sp.Symbol(f"__t{len(self.defs)}", real=True)
        self.defs.append((sym, e))
        self.formula[sym] = e
        return sym

    def _settle(self, a: np.ndarray) -> np.ndarray:
        out = np.empty(a.shape, dtype=object)
        for idx in np.ndindex(*a.shape):
            out[idx] = self.define(a[idx])
        return out

    def forward(self):
        """The compiled formulas: every intermediate's value from the variables' elements."""
        if self._forward is None:
            defs = [(s, numpy_safe(f)) for s, f in self.defs]
            self._forward = numpy_lambdify(self.arguments, [s for s, _ in self.defs] or [sp.S.Zero],
                                           cse=lambda exprs: (defs, exprs), order="none")
        return self._forward

    def backward(self, wrt: tuple):
        """The local derivatives that lead to the wrt elements: per intermediate, a list of
        (slot of the symbol it uses, constant / slot / index of a compiled formula), and the
        compiled formulas."""
        if wrt not in self._backward:
            live = {s for w in wrt for s in self.variables[w].reshape(-1)}
            for sym, f in self.defs:
                if f.free_symbols & live:
                    live.add(sym)
            steps, formulas = [], []
            for sym, f in self.defs:
                uses = []
                for v in (sorted(f.free_symbols & live, key=self.slot.get) if sym in live else ()):
                    d = self.partial(sym, v)
                    if d == 0:
                        continue
                    if d.is_Number:
                        uses.append((self.slot[v], "const", float(d)))
                    elif d in self.slot:
                        uses.append((self.slot[v], "slot", self.slot[d]))
                    else:
                        uses.append((self.slot[v], "formula", len(formulas)))
                        formulas.append(numpy_safe(d))
                steps.append(uses)
            symbols = self.arguments + [s for s, _ in self.defs]
            fn = numpy_lambdify(symbols, formulas, order="none") if formulas else None
            self._backward[wrt] = (steps, fn)
        return self._backward[wrt]

    def partial(self, sym, v) -> sp.Expr:
        """d formula(sym) / d v, exact (the formula itself renamed to sym where it reappears)."""
        f = self.formula[sym]
        terms = [a for a in f.args if v in a.free_symbols] if f.is_Add else [f]
        d = sp.Add(*[_diff(t, v, self._templates) for t in terms])
        return d.xreplace({f: sym}) if d.has(f) else d

    def at(self, arrays: dict) -> "TensorEvaluator":
        return TensorEvaluator(self, arrays)


class TensorEvaluator:
    """Numbers for a TensorModel at one point, in float64."""

    def __init__(self, model: TensorModel, arrays: dict):
        self.model = model
        args = [np.asarray(arrays[name], dtype=np.float64).reshape(-1) for name in model.variables]
        args = np.concatenate(args) if args else np.zeros(0)
        with np.errstate(all="ignore"):
            inner = model.forward()(*[np.float64(a) for a in args]) if model.defs else []
        self.slots = np.concatenate([args, np.asarray(inner, dtype=np.float64).reshape(-1)])

    def _of(self, e) -> float:
        return float(self.slots[self.model.slot[e]]) if e in self.model.slot else float(e)

    def value(self) -> np.ndarray:
        out = [self._of(e) for e in self.model.outputs.reshape(-1)]
        return np.array(out, dtype=np.float64).reshape(self.model.top_shape)

    def gradients(self, wrt: list[str]) -> dict:
        """d result / d each name in wrt, shaped out_shape + in_shape: reverse accumulation of
        the exact local derivatives, every output element at once."""
        model = self.model
        steps, fn = model.backward(tuple(wrt))
        with np.errstate(all="ignore"):
            local = [float(v) for v in np.asarray(fn(*[np.float64(s) for s in self.slots]), dtype=object)] \
                if fn else []
            n_out = math.prod(model.top_shape)
            adjoint = np.zeros((len(self.slots), n_out))
            for o, e in enumerate(model.outputs.reshape(-1)):
                if e in model.slot:
                    adjoint[model.slot[e], o] += 1.0
            n_args = len(model.arguments)
            for k in range(len(steps) - 1, -1, -1):
                row = adjoint[n_args + k]
                if not steps[k] or not row.any():
                    continue
                for target, kind, what in steps[k]:
                    d = what if kind == "const" else self.slots[what] if kind == "slot" else local[what]
                    adjoint[target] += row * d
        out = {}
        for w in wrt:
            idx = [model.slot[s] for s in model.variables[w].reshape(-1)]
            out[w] = adjoint[idx].T.reshape(model.top_shape + tuple(model.shapes[w]))
        return out


_DUMMIES = [sp.Symbol(f"__d{i}", real=True) for i in range(8)]


def _diff(term: sp.Expr, v: sp.Symbol, templates: dict) -> sp.Expr:
    """d term / d v by SymPy, with the two shapes matmul and sums produce most answered
    directly: v itself (1), and a product in which v is a factor exactly once (the other
    factors).  Other terms are differentiated once per shape: tanh(t5) and tanh(t9) are
    both tanh(d0), whose derivative SymPy computes once and the names are put back."""
    if term == v:
        return sp.S.One
    if term.is_Mul and v in term.args:
        rest = list(term.args)
        rest.remove(v)
        if not any(v in r.free_symbols for r in rest):
            return sp.Mul(*rest)
    syms = sorted(term.free_symbols, key=lambda s: s.name)
    if len(syms) > len(_DUMMIES):
        return sp.diff(term, v)
    canon = term.xreplace(dict(zip(syms, _DUMMIES)))
    key = (canon, syms.index(v))
    if key not in templates:
        templates[key] = sp.diff(canon, _DUMMIES[key[1]])
    return templates[key].xreplace(dict(zip(_DUMMIES, syms)))


def is_structured(root: ir.Node) -> bool:
    """Whether the expression needs this model (any structured function in it)."""
    return any(structured(n) for n in ir.preorder(root))
