"""Shape inference over the IR, with PyTorch's broadcasting rules.

Run before any engine, so a shape mismatch is a user error with a position, not a
torch traceback.  Structured functions take their rules from the function table
(shape_rules.py); every result is bounded in size, so a giant matmul or outer product
is refused here, before anything is allocated.
"""

from __future__ import annotations

import math

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS, spec_of
from gradcheck_cli.expr.shape_rules import ShapeProblem, broadcast, index  # noqa: F401  (broadcast re-exported)


def max_elements() -> int:
    """The most elements any intermediate result may have: one value's memory bound
    (GRADCHECK_MAX_BYTES, 1 GiB of float64 by default)."""
    from gradcheck_cli.values import max_bytes

    return max(1, max_bytes() // 8)


def kind_of(node: ir.Node, kinds: dict | None) -> str | None:
    """'int' / 'bool' for a variable holding integers or booleans, 'float' otherwise; None
    when the kinds are not known (the caller did not say)."""
    if kinds is None:
        return None
    return kinds.get(node.name, "float") if isinstance(node, ir.Name) else "float"


def infer(root: ir.Node, shapes: dict[str, tuple], source: str, kinds: dict | None = None) -> dict[int, tuple]:
    """Shape of every node (keyed by id); raise UserInputError where shapes do not fit.
    `kinds` (name -> 'float' | 'int' | 'bool') tells class indices from probabilities."""
    out: dict[int, tuple] = {}
    limit = max_elements()

    def fail(message: str, node: ir.Node, pos: int | None = None) -> UserInputError:
        pos = node.pos if pos is None else pos
        return UserInputError(f"{message} at column {pos + 1}", source=source, column=pos + 1)

    for node in ir.postorder(root):
        spec = spec_of(node)
        if isinstance(node, (ir.Num, ir.Const)):
            shape = ()
        elif isinstance(node, ir.Name):
            shape = tuple(shapes[node.name])
        elif isinstance(node, ir.Unary):
            shape = out[id(node.operand)]
        elif isinstance(node, ir.Index):
            try:
                shape = index(out[id(node.operand)], node.items)
            except ShapeProblem as p:
                at = node.item_pos[p.item] if p.item is not None and p.item < len(node.item_pos) else None
                raise fail(p.message, node, at) from None
        elif spec is not None and spec.shape is not None:
            args = node.args if isinstance(node, ir.Call) else (node.left, node.right)
            arg_kinds = [kind_of(a, kinds) for a in args] if kinds is not None else None
            try:
                shape = spec.shape([out[id(a)] for a in args], arg_kinds, **spec.bound(node))
            except ShapeProblem as p:
                raise fail(p.message, node) from None
        elif isinstance(node, (ir.Binary, ir.Compare)):
            a, b = out[id(node.left)], out[id(node.right)]
            shape = broadcast(a, b)
            if shape is None:
                raise fail(f"shapes {list(a)} and {list(b)} do not broadcast for '{node.op}'", node)
        else:
            arg_shapes = [out[id(a)] for a in node.args]
            shape = ()
            for s in arg_shapes:
                shape = broadcast(shape, s)
                if shape is None:
                    raise fail(f"the arguments of {node.func}() have shapes "
                               f"{', '.join(str(list(x)) for x in arg_shapes)}, which do not broadcast", node)
            if spec.kind == "reduction":
                shape = ()
        n = math.prod(shape)
        if n > limit:
            raise fail(f"this result would have shape {list(shape)} ({n:,} elements, {n * 8 / 2**30:,.1f} GiB in "
                       f"float64); the limit is {limit:,} elements (GRADCHECK_MAX_BYTES)", node)
        out[id(node)] = shape
    return out


def check_class_targets(root: ir.Node, arrays: dict, kinds: dict, node_shapes: dict, source: str) -> None:
    """Class indices must name a class: 0 <= y < C (C = the logits' last dimension)."""
    import numpy as np

    for node in ir.preorder(root):
        if not (isinstance(node, ir.Call) and FUNCTIONS[node.func].class_target):
            continue
        target = node.args[1]
        if kind_of(target, kinds) != "int":
            continue
        classes = node_shapes[id(node.args[0])][-1]
        y = np.asarray(arrays[target.name])
        bad = y[(y < 0) | (y >= classes)]
        if bad.size:
            raise UserInputError(f"{node.func}: the target {target.name!r} holds class {int(bad.reshape(-1)[0])}, "
                                 f"but the logits have {classes} classes (0..{classes - 1}) at column "
                                 f"{target.pos + 1}", source=source, column=target.pos + 1)
