"""IR -> torch values.  Autograd runs it once in the requested dtype; finite differences
run it on a batch of perturbed points (a leading batch dimension) in float64 or complex128.

In batched mode every input has shape (B, 1, ..., 1, *its shape), padded to one common
rank, so elementwise broadcasting lines up and reductions keep their dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS


class Reducer:
    """How reductions reduce: over every dimension (plain), or all but the first (batched)."""

    def __init__(self, torch, batched: bool):
        self.t = torch
        self.batched = batched

    def _dims(self, x) -> tuple:
        return tuple(range(1 if self.batched else 0, x.ndim))

    def sum(self, x):
        dims = self._dims(x)
        return x.sum(dim=dims, keepdim=self.batched) if dims else x

    def mean(self, x):
        dims = self._dims(x)
        return x.mean(dim=dims, keepdim=self.batched) if dims else x

    def prod(self, x):
        dims = self._dims(x)
        if not dims:
            return x
        if not self.batched:
            return x.prod()
        return x.reshape(x.shape[0], -1).prod(dim=1).reshape((x.shape[0],) + (1,) * (x.ndim - 1))

    def norm(self, x):
        dims = self._dims(x)
        if not dims:
            return x.abs()
        return self.t.linalg.vector_norm(x, dim=dims, keepdim=self.batched)

    def logsumexp(self, x):
        dims = self._dims(x)
        return self.t.logsumexp(x, dim=dims, keepdim=self.batched) if dims else x

    def dot(self, a, b):
        a, b = self.t.broadcast_tensors(a, b)
        if not self.batched and a.ndim:
            return self.t.dot(a.reshape(-1), b.reshape(-1))
        return self.sum(a * b)


@dataclass
class KinkRecord:
    """Signed distances to a kink, as seen by one evaluation (zero exactly at the kink)."""

    func: str
    pos: int
    offsets: list = field(default_factory=list)


def evaluate(root: ir.Node, inputs: dict, torch, *, dtype, device="cpu", batched=False,
             use_complex=False, kinks: list | None = None):
    """Evaluate the IR with torch.  `inputs` maps names to tensors (already batched and
    padded in batched mode).  When `kinks` is a list, every kinked call appends a
    KinkRecord, in the same order on every evaluation of the same IR."""
    reducer = Reducer(torch, batched)
    const_dtype = dtype if not use_complex else torch.float64
    values: dict[int, object] = {}
    for node in ir.postorder(root):
        if isinstance(node, ir.Num):
            out = torch.tensor(node.value, dtype=const_dtype, device=device)
        elif isinstance(node, ir.Const):
            import math
            out = torch.tensor(math.pi if node.name == "pi" else math.e, dtype=const_dtype, device=device)
        elif isinstance(node, ir.Name):
            out = inputs[node.name]
        elif isinstance(node, ir.Unary):
            out = -values[id(node.operand)]
        elif isinstance(node, ir.Binary):
            a, b = values[id(node.left)], values[id(node.right)]
            if node.op == "**" and isinstance(node.right, ir.Num):
                # a literal exponent stays a Python number: torch's pow(Tensor, Scalar) squares by
                # multiplying, where a tensor exponent goes through exp(b log a), whose rounding
                # near arg(a) = pi would swamp a complex step
                v = node.right.value
                b = int(v) if v.is_integer() and abs(v) < 2**31 else v
            out = _binary(node.op, a, b)
        elif isinstance(node, ir.Compare):
            a, b = values[id(node.left)], values[id(node.right)]
            if kinks is not None:
                kinks.append(KinkRecord("where", node.pos, [a - b]))
            out = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[node.op]
        else:
            out = _call(node, [values[id(a)] for a in node.args], torch, reducer, use_complex, kinks)
        values[id(node)] = out
    return values[id(root)]


def _binary(op: str, a, b):
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    return a**b


def _call(node: ir.Call, args: list, torch, reducer: Reducer, use_complex: bool, kinks):
    spec = FUNCTIONS[node.func]
    if kinks is not None and spec.kinks is not None:
        kinks.append(KinkRecord(spec.name, node.pos, list(spec.kinks(torch, *args))))
    builder = spec.complex_torch if (use_complex and spec.complex_torch) else spec.torch
    if spec.kind == "reduction":
        return builder(torch, reducer, *args)
    return builder(torch, *args)
