"""IR -> torch values.  Autograd runs it once in the requested dtype; finite differences
run it on a batch of perturbed points (a leading batch dimension) in float64 or complex128.

In batched mode every input has shape (B, 1, ..., 1, *its shape), padded to one common
rank, so elementwise broadcasting lines up and reductions keep their dimensions.
Structured functions (matmul, softmax, indexing, ...) see their operands as
(B, *shape) (torch_structured.py), using the shapes from shape inference, and their
results are padded back.

Integer and boolean inputs (class targets, masks) stay integers where a class loss takes
them as its target, and are numbers of the computation's dtype everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradcheck_cli.engines import torch_structured as L
from gradcheck_cli.expr import complex_forms as CF
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS, spec_of, structured


class Reducer:
    """How reductions reduce: over every dimension (plain), or all but the first (batched)."""

    def __init__(self, torch, batched: bool):
        self.t = torch
        self.batched = batched

    def dims(self, x) -> tuple:
        """The dimensions a reduction to a scalar reduces (all but the batch dimension)."""
        return tuple(range(1 if self.batched else 0, x.ndim))

    def sum(self, x):
        dims = self.dims(x)
        return x.sum(dim=dims, keepdim=self.batched) if dims else x

    def mean(self, x):
        dims = self.dims(x)
        return x.mean(dim=dims, keepdim=self.batched) if dims else x

    def prod(self, x):
        dims = self.dims(x)
        if not dims:
            return x
        if not self.batched:
            return x.prod()
        return x.reshape(x.shape[0], -1).prod(dim=1).reshape((x.shape[0],) + (1,) * (x.ndim - 1))

    def norm(self, x):
        return CF.norm(self.t, x, self.dims(x), self.batched)

    def logsumexp(self, x):
        return CF.logsumexp(self.t, x, self.dims(x), self.batched)

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


@dataclass
class Layout:
    """What structured functions need to move between the padded and the (B, *shape) layouts."""

    shapes: dict | None  # id(node) -> shape (shape inference); needed in batched mode only
    batched: bool
    rank: int  # the padded rank of batched values, without the batch dimension


def class_targets(root: ir.Node) -> set:
    """ids of the variables a class loss takes as its target: they keep their integer dtype."""
    return {id(n.args[1]) for n in ir.preorder(root)
            if isinstance(n, ir.Call) and FUNCTIONS[n.func].class_target and isinstance(n.args[1], ir.Name)}


def evaluate(root: ir.Node, inputs: dict, torch, *, dtype, device="cpu", batched=False,
             use_complex=False, kinks: list | None = None, shapes: dict | None = None):
    """Evaluate the IR with torch.  `inputs` maps names to tensors (already batched and
    padded in batched mode).  When `kinks` is a list, every kinked call appends a
    KinkRecord, in the same order on every evaluation of the same IR.  Batched structured
    functions need `shapes` (id(node) -> shape, from shape inference)."""
    reducer = Reducer(torch, batched)
    const_dtype = dtype if not use_complex else torch.float64
    rank = max((t.ndim for t in inputs.values()), default=1) - 1 if batched else 0
    layout = Layout(shapes, batched, rank)
    keep_int = class_targets(root)
    values: dict[int, object] = {}
    for node in ir.postorder(root):
        if isinstance(node, ir.Num):
            out = torch.tensor(node.value, dtype=const_dtype, device=device)
        elif isinstance(node, ir.Const):
            import math
            out = torch.tensor(math.pi if node.name == "pi" else math.e, dtype=const_dtype, device=device)
        elif isinstance(node, ir.Name):
            out = inputs[node.name]
            if not (out.is_floating_point() or out.is_complex()) and id(node) not in keep_int:
                out = out.to(const_dtype)
        elif isinstance(node, ir.Unary):
            out = -values[id(node.operand)]
        elif structured(node):
            out = _structured(node, [values[id(c)] for c in ir.children(node)], torch, layout, kinks)
        elif isinstance(node, ir.Binary):
            a, b = values[id(node.left)], values[id(node.right)]
            if node.op == "**" and isinstance(node.right, ir.Num):
                # a literal exponent stays a Python number: torch's pow(Tensor, Scalar) squares by
                # multiplying, where a tensor exponent goes through exp(b log a), whose rounding
                # near arg(a) = pi would swamp a complex step
                v = node.right.value
                b = int(v) if v.is_integer() and abs(v) < 2**31 else v
            if batched and node.op == "**" and isinstance(b, int) and b == 2:
                out = a * a  # the same correctly rounded square, twice as fast as pow (complex: 4x)
            else:
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
    params = spec.bound(node)
    if kinks is not None and spec.kinks is not None:
        kinks.append(KinkRecord(spec.name, node.pos, list(spec.kinks(torch, *args, **params))))
    builder = spec.complex_torch if (use_complex and spec.complex_torch) else spec.torch
    if spec.kind == "reduction":
        return builder(torch, reducer, *args)
    return builder(torch, *args, **params)


def _structured(node, args: list, torch, layout: Layout, kinks):
    """A structured function: operands to (B, *shape), the function, the result padded back."""
    if layout.batched and layout.shapes is None:
        raise ValueError("batched evaluation of structured functions needs the shapes of every node")

    children = ir.children(node)
    shapes = [layout.shapes[id(c)] if layout.batched else tuple(a.shape) for c, a in zip(children, args)]
    cores = [L.to_core(a, s, layout.batched) for a, s in zip(args, shapes)]
    if isinstance(node, ir.Index):
        out = L.index(cores[0], node.items)
    else:
        spec = spec_of(node)
        params = spec.bound(node)
        if spec.axis:
            out = L.reduce(spec.axis, cores[0], params.get("dim"))
            offsets = L.axis_kinks(spec.axis, cores[0], params.get("dim"))
            if kinks is not None and offsets:
                kinks.append(KinkRecord(spec.name, node.pos, list(offsets)))
        else:
            out = spec.torch(torch, L, *cores, **params)
    out_shape = layout.shapes[id(node)] if layout.batched else tuple(out.shape[1:])
    return L.from_core(out, out_shape, layout.rank, layout.batched)
