"""Shape inference over the IR, with PyTorch's broadcasting rules.

Run before any engine, so a shape mismatch is a user error with a position, not a
torch traceback.
"""

from __future__ import annotations

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS


def broadcast(a: tuple, b: tuple) -> tuple | None:
    """The broadcast shape of a and b, or None when they do not broadcast."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and 1 not in (da, db):
            return None
        out.append(db if da == 1 else da)
    return tuple(reversed(out))


def infer(root: ir.Node, shapes: dict[str, tuple], source: str) -> dict[int, tuple]:
    """Shape of every node (keyed by id); raise UserInputError where shapes do not fit."""
    out: dict[int, tuple] = {}

    def fail(message: str, node: ir.Node) -> UserInputError:
        return UserInputError(f"{message} at column {node.pos + 1}", source=source, column=node.pos + 1)

    for node in ir.postorder(root):
        if isinstance(node, (ir.Num, ir.Const)):
            out[id(node)] = ()
        elif isinstance(node, ir.Name):
            out[id(node)] = tuple(shapes[node.name])
        elif isinstance(node, ir.Unary):
            out[id(node)] = out[id(node.operand)]
        elif isinstance(node, (ir.Binary, ir.Compare)):
            a, b = out[id(node.left)], out[id(node.right)]
            shape = broadcast(a, b)
            if shape is None:
                raise fail(f"shapes {list(a)} and {list(b)} do not broadcast for '{node.op}'", node)
            out[id(node)] = shape
        else:
            spec = FUNCTIONS[node.func]
            arg_shapes = [out[id(a)] for a in node.args]
            shape: tuple | None = ()
            for s in arg_shapes:
                shape = broadcast(shape, s)
                if shape is None:
                    raise fail(f"the arguments of {node.func}() have shapes "
                               f"{', '.join(str(list(x)) for x in arg_shapes)}, which do not broadcast", node)
            out[id(node)] = () if spec.kind == "reduction" else shape
    return out
