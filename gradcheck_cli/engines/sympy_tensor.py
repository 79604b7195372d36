"""The expression element by element: numpy arrays of SymPy expressions, one per element.

`expand` walks the IR once and gives every node an object array shaped like its
result.  Elementwise functions apply their SymPy form to every element; structured
functions (matmul, reductions over a dim, softmax, the class losses, indexing, reshape,
cat, stack) are `TensorOps` methods, written in index notation as sums and products of
elements.  Nothing here knows torch.

`share` decides what a sub-expression used by many elements becomes (a softmax's
denominator, a row's max, a mean inside var): itself (full expansion, for exact
Hessians), or a named intermediate (tensor_model.py, for gradients of larger problems).
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from gradcheck_cli.engines import sympy_functions as fns
from gradcheck_cli.engines.sympy_base import literal, power, real_constant
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS, spec_of, structured


def obj(x) -> np.ndarray:
    """x as an object array (a single SymPy expression becomes a 0-d array)."""
    if isinstance(x, np.ndarray) and x.dtype == object:
        return x
    out = np.empty((), dtype=object)
    if isinstance(x, np.ndarray):
        return x.astype(object)
    out[()] = x
    return out


def element_symbols(k: int, shape: tuple) -> np.ndarray:
    """One real symbol per element of the k-th variable, shaped like it; generated names start
    with '__' (no user name can), so no element of one variable can be mistaken for another
    variable."""
    flat = [sp.Symbol(f"__v{k}_{i}", real=True) for i in range(math.prod(shape))]
    return np.array(flat + [None], dtype=object)[:-1].reshape(shape)


class TensorOps:
    """The structured functions on object arrays (the SymPy forms of the function table)."""

    def __init__(self, share=None):
        self.share = share or (lambda e: e)

    # -- linear algebra ---------------------------------------------------------------------
    def matmul(self, a, b):
        """torch.matmul: vectors are promoted (and the added dim dropped), batch dims broadcast."""
        va, vb = a.ndim == 1, b.ndim == 1
        A = a[None, :] if va else a
        B = b[:, None] if vb else b
        batch = tuple(np.broadcast_shapes(A.shape[:-2], B.shape[:-2]))
        A = np.broadcast_to(A, batch + A.shape[-2:])
        B = np.broadcast_to(B, batch + B.shape[-2:])
        (n, k), m = A.shape[-2:], B.shape[-1]
        out = np.empty(batch + (n, m), dtype=object)
        for bi in np.ndindex(*batch):
            for i in range(n):
                for j in range(m):
                    out[bi + (i, j)] = sp.Add(*[A[bi + (i, t)] * B[bi + (t, j)] for t in range(k)])
        if vb:
            out = out[..., 0]
        if va:
            out = out[..., 0] if vb else out[..., 0, :]
        return obj(out)

    def transpose(self, x, dim0=-2, dim1=-1):
        if x.ndim < 2 and (dim0, dim1) == (-2, -1):
            return x
        return obj(np.swapaxes(x, dim0, dim1))

    def outer(self, a, b):
        return obj(np.multiply.outer(a, b))

    # -- reductions -------------------------------------------------------------------------
    def reduce(self, name: str, x, dim=None):
        """Over every element (a 0-d result) or along dim (kept with size 1)."""
        if dim is None:
            return obj(self._reduce(name, list(x.reshape(-1))))
        d = dim % x.ndim
        moved = np.moveaxis(x, d, -1)
        out = np.empty(moved.shape[:-1], dtype=object)
        for idx in np.ndindex(*out.shape):
            out[idx] = self._reduce(name, list(moved[idx]))
        return obj(np.expand_dims(out, d))

    def _reduce(self, name: str, items: list):
        n = len(items)
        if name == "sum":
            return sp.Add(*items)
        if name == "mean":
            return sp.Add(*items) / n
        if name == "prod":
            return sp.Mul(*items)
        if name == "norm":
            return fns.norm_sqrt(sp.Add(*[i**2 for i in items]))
        if name in ("amax", "amin"):
            return items[0] if n == 1 else (fns.amax_ties if name == "amax" else fns.amin_ties)(*items)
        if name == "logsumexp":
            return self._logsumexp(items)
        mean = self.share(sp.Add(*items) / n)
        var = sp.Add(*[(i - mean) ** 2 for i in items]) / (n - 1)  # torch's correction=1
        return var if name == "var" else sp.sqrt(self.share(var))

    def _logsumexp(self, items: list):
        """max + log(sum exp(x - max)), the max held constant: the exact value and derivative,
        and no exp overflows."""
        if len(items) == 1:
            return items[0]
        m = self.share(fns.stopmax(*items))
        return m + sp.log(self.share(sp.Add(*[sp.exp(i - m) for i in items])))

    # -- normalizations and class losses -----------------------------------------------------
    def _along(self, x, dim, per_slice):
        d = dim % x.ndim
        moved = np.moveaxis(x, d, -1)
        out = np.empty(moved.shape, dtype=object)
        for idx in np.ndindex(*moved.shape[:-1]):
            out[idx] = per_slice(list(moved[idx]))
        return obj(np.moveaxis(out, -1, d))

    def softmax(self, x, dim=-1):
        def per_slice(items):
            m = self.share(fns.stopmax(*items))
            es = [self.share(sp.exp(i - m)) for i in items]
            total = self.share(sp.Add(*es))
            return [e / total for e in es]
        return self._along(x, dim, per_slice)

    def log_softmax(self, x, dim=-1):
        def per_slice(items):
            lse = self.share(self._logsumexp(items))
            return [i - lse for i in items]
        return self._along(x, dim, per_slice)

    def _rows(self, z, y, loss):
        """A class loss: `loss(row of logits, target row)` per sample, mean over the samples."""
        rows = z.reshape(-1, z.shape[-1])
        targets = y.reshape((rows.shape[0],) + (y.shape[-1:] if y.ndim == z.ndim else ()))
        losses = [loss(list(rows[i]), targets[i]) for i in range(rows.shape[0])]
        return obj(sp.Add(*losses) / len(losses))

    def cross_entropy(self, z, y):
        """Class indices (y one dim short of z): logsumexp(z_i) - z_i[y_i]; probabilities
        (y shaped like z): sum_c p_ic (logsumexp(z_i) - z_ic); the mean over samples i."""
        classes = y.ndim == z.ndim - 1

        def loss(row, target):
            lse = self.share(self._logsumexp(row))
            if classes:
                return lse - _pick(row, target)
            return sp.Add(*[p * (lse - zc) for p, zc in zip(target, row)])
        return self._rows(z, y, loss)

    def nll(self, lp, y):
        return self._rows(lp, y, lambda row, target: -_pick(row, target))

    # -- rearrangements -----------------------------------------------------------------------
    def index(self, x, items):
        key = tuple(slice(i.start, i.stop, i.step) if isinstance(i, ir.Slice) else i for i in items)
        return obj(x[key])

    def reshape(self, x, sizes):
        return obj(x.reshape(tuple(sizes)))

    def cat(self, xs, dim=0):
        return obj(np.concatenate(list(xs), axis=dim))

    def stack(self, xs, dim=0):
        return obj(np.stack(list(xs), axis=dim))


def _pick(row: list, target) -> sp.Expr:
    """row[target] for a class index that is only known when the model is evaluated."""
    return sp.Add(*[sp.Piecewise((z, sp.Eq(target, c)), (0, True)) for c, z in enumerate(row)])


def _vectorized(fn):
    return np.vectorize(fn, otypes=[object])


_BINARY = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": _vectorized(power)}
_COMPARE = {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge}


def expand(root: ir.Node, elements: dict, ops: TensorOps, settle=None) -> np.ndarray:
    """Every node's elements as SymPy expressions in the variables' `elements` (name ->
    object array); `settle(array)` may replace each node's elements (by named
    intermediates).  Returns the root's array."""
    settle = settle or (lambda a: a)
    out: dict[int, np.ndarray] = {}
    for node in ir.postorder(root):
        args = [out[id(c)] for c in ir.children(node)]
        if isinstance(node, ir.Num):
            e = obj(literal(node))
        elif isinstance(node, ir.Const):
            e = obj(sp.pi if node.name == "pi" else sp.E)
        elif isinstance(node, ir.Name):
            e = elements[node.name]
        elif isinstance(node, ir.Unary):
            e = obj(-args[0])
        elif isinstance(node, ir.Compare):
            e = obj(_vectorized(_COMPARE[node.op])(*args))
        elif structured(node):
            e = _structured(node, args, ops)
        elif isinstance(node, ir.Binary):
            e = _real(obj(_BINARY[node.op](*args)))
        else:
            e = _real(_call(node, args, ops))
        out[id(node)] = e if isinstance(node, (ir.Name, ir.Num, ir.Const, ir.Compare)) else settle(e)
    return out[id(root)]


def _structured(node, args, ops: TensorOps) -> np.ndarray:
    if isinstance(node, ir.Index):
        return ops.index(args[0], node.items)
    spec = spec_of(node)
    params = spec.bound(node)
    if spec.axis:
        return _real(ops.reduce(spec.axis, args[0], params.get("dim")))
    return _real(obj(spec.sympy(sp, ops, *args, **params)))


def _call(node: ir.Call, args, ops: TensorOps) -> np.ndarray:
    spec = FUNCTIONS[node.func]
    params = spec.bound(node)
    summand = obj(_vectorized(lambda *xs: spec.sympy(sp, fns, *xs, **params))(*args))
    if spec.kind != "reduction":
        return summand
    r = ops.reduce(spec.reducer, summand)[()]
    return obj(spec.post(sp, r) if spec.post else r)


def _real(a: np.ndarray) -> np.ndarray:
    """Constant elements that are not real numbers become nan, as torch computes them."""
    return obj(_vectorized(real_constant)(a)) if a.size else a
