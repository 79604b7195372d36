"""The batches finite differences evaluate: the expression on many perturbed points at
once, one row each, in float64 or complex128 (torch_eval.py's batched layout), with the
signed distances to every kink each row saw."""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np

from gradcheck_cli.engines.torch_eval import evaluate
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS, structured

CALL_NUMBERS = 2**17  # numbers per torch call: a few MiB, which stay in cache between the
# expression's operations (one call over every row at once is 2-10x slower per number at N=1e3)


class Batch:
    """Evaluates the expression on batches of points that differ in one input.  One batch
    serves every input of a check: it holds the point, not the input being differenced.
    `shapes` (node_shapes(root, arrays)) saves working them out again where they are known."""

    def __init__(self, root, arrays, out_shape, max_numel, use_complex, shapes: dict | None = None):
        import torch

        self.torch, self.root, self.out_shape = torch, root, out_shape
        self.n_out = math.prod(out_shape)
        self.shapes = node_shapes(root, arrays) if shapes is None else shapes
        self.rank = max([a.ndim for a in arrays.values()] + [len(out_shape)] + [len(s) for s in self.shapes.values()])
        self.max_numel = max(1, max_numel)
        self.use_complex = use_complex
        self.dtype = torch.complex128 if use_complex else torch.float64
        self.inputs = {name: self.pad(a)[None] for name, a in arrays.items()}
        self.f0, self.kinks0 = self.run({})
        self.real_f0 = self.f0
        if use_complex:  # where the real function is undefined, the complex step means nothing
            real = {name: t.real for name, t in self.inputs.items()}
            with torch.no_grad():
                out = evaluate(root, real, torch, dtype=torch.float64, batched=True, shapes=self.shapes)
            self.real_f0 = out.reshape(1, -1).expand(1, self.n_out).numpy()

    @cached_property
    def elementwise(self) -> set[str]:
        """elementwise_only(root), worked out once for every input differenced."""
        return elementwise_only(self.root)

    def pad(self, a: np.ndarray):
        a = np.asarray(a)
        whole = a.dtype.kind in "biu"  # class targets and masks keep their dtype
        t = self.torch.from_numpy(np.ascontiguousarray(a, dtype=None if whole else np.float64))
        t = t.reshape((1,) * (self.rank - a.ndim) + tuple(a.shape))
        return t if whole else t.to(self.dtype)

    def run(self, replace: dict):
        """Outputs (B, n_out) and kink offsets for inputs with `replace[name]` = (B, *shape) rows."""
        inputs = dict(self.inputs)
        for name, rows in replace.items():
            t = rows if isinstance(rows, self.torch.Tensor) else self.torch.from_numpy(rows)
            inputs[name] = t.reshape((t.shape[0],) + (1,) * (self.rank + 1 - t.ndim) + tuple(t.shape[1:]))
        kinks: list = []
        with self.torch.no_grad():
            out = evaluate(self.root, inputs, self.torch, dtype=self.torch.float64, batched=True,
                           use_complex=self.use_complex, kinks=None if self.use_complex else kinks,
                           shapes=self.shapes)
        batch = max(t.shape[0] for t in inputs.values())
        out = out.reshape(out.shape[0] if out.ndim else 1, -1).expand(batch, self.n_out)
        return out.numpy(), kinks

    def points(self, name: str, x: np.ndarray, row: np.ndarray, element: np.ndarray, pert: np.ndarray,
               n_rows: int, kinks: bool = False):
        """Outputs (n_rows, n_out) at the points x + sum of pert[e] at element[e] over the
        entries e of each row (row[e], ascending; no element twice in a row), CALL_NUMBERS
        numbers per torch call; with `kinks`, also per row whether a kink was crossed, and
        the (function, position) of those crossed."""
        dtype = np.complex128 if self.use_complex else np.float64
        base = np.asarray(x, dtype=np.float64).reshape(-1).astype(dtype)
        values = np.empty((n_rows, self.n_out), dtype=dtype)
        flags = np.zeros(n_rows, dtype=bool)
        hits: list = []
        per_call = max(1, CALL_NUMBERS // self.max_numel)
        # one buffer of points for every call: each call moves its entries and puts them back
        # afterwards, instead of copying the whole point into every row again
        buffer = np.empty((min(per_call, n_rows), base.size), dtype=dtype)
        buffer[:] = base
        for r0 in range(0, n_rows, per_call):
            r1 = min(n_rows, r0 + per_call)
            a, b = np.searchsorted(row, [r0, r1])
            at = (row[a:b] - r0, element[a:b])
            buffer[at] += pert[a:b]
            values[r0:r1], found = self.run({name: buffer[:r1 - r0].reshape((r1 - r0,) + np.shape(x))})
            if kinks:
                crossed, met = self.crossed(found, r1 - r0)
                if crossed is not None:
                    flags[r0:r1] = crossed
                hits.extend(h for h in met if h not in hits)
            buffer[at] = base[element[a:b]]
        return values, flags, hits

    def crossed(self, kinks, n_rows: int) -> tuple[np.ndarray | None, list]:
        """Per row: whether any kinked function's argument changed side (or sat on the kink)."""
        rows = None
        hits = []
        for rec, base in zip(kinks, self.kinks0):
            for off, off0 in zip(rec.offsets, base.offsets):
                off, off0 = as_rows(off), as_rows(off0)
                # only offsets this row moved count: an element resting on its kink says
                # nothing about the derivative w.r.t. another element
                moved = np.broadcast_to(off != off0, np.broadcast_shapes(off.shape, off0.shape))
                flag = moved & ((np.sign(off) != np.sign(off0)) | (off0 == 0))
                flag = np.broadcast_to(flag.reshape(flag.shape[0], -1).any(axis=1), (n_rows,))
                if flag.any():
                    hits.append((rec.func, rec.pos + 1))
                rows = flag if rows is None else (rows | flag)
        return rows, hits


def elementwise_only(root: ir.Node) -> set[str]:
    """Names that reach the result only through elementwise operations (not through a
    reduction, nor a structured function such as matmul, softmax or indexing)."""
    under_reduction: set[str] = set()
    for node in ir.preorder(root):
        if (isinstance(node, ir.Call) and FUNCTIONS[node.func].kind == "reduction") or structured(node):
            under_reduction.update(ir.names_in(node))
    return set(ir.names_in(root)) - under_reduction


def node_shapes(root: ir.Node, arrays: dict) -> dict:
    """Every node's shape (structured functions need them in batched evaluation)."""
    from gradcheck_cli.expr.shapes import infer

    kinds = {k: ("int" if np.asarray(a).dtype.kind in "iu" else "bool" if np.asarray(a).dtype == bool else "float")
             for k, a in arrays.items()}
    return infer(root, {k: np.asarray(a).shape for k, a in arrays.items()}, ir.to_source(root), kinds)


def as_rows(t) -> np.ndarray:
    a = t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)
    return a.reshape((1,) if a.ndim == 0 else a.shape)
