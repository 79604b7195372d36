"""Result shapes of the structured functions (matmul, reductions over a dim, softmax, the
class losses, indexing, reshape, cat, stack), following torch's rules.

Each rule takes the operands' shapes and kinds ('float', 'int', 'bool'; None where not
known) and the call's literal parameters, and returns the result's shape or raises
ShapeProblem saying why there is none, naming the shapes.  shapes.py adds the column
and the caret.  Nothing here imports torch.
"""

from __future__ import annotations

import math


class ShapeProblem(Exception):
    """Operands whose shapes do not fit the function; the message names them."""

    def __init__(self, message: str, item: int | None = None):
        super().__init__(message)
        self.message = message
        self.item = item  # for indexing: which item is at fault (its column is shown)


def show(shape) -> str:
    return str(list(shape))


def axis(dim: int, rank: int, shape, what: str = "dim") -> int:
    """dim as an index in 0..rank-1 (negative dims count from the end), or ShapeProblem."""
    if rank == 0:
        raise ShapeProblem(f"a {what} needs a tensor, but this operand is a scalar (shape [])")
    if not -rank <= dim < rank:
        raise ShapeProblem(f"{what} {dim} is out of range for shape {show(shape)} "
                           f"(use 0..{rank - 1}, or -{rank}..-1 from the end)")
    return dim % rank


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


def matmul(shapes, kinds) -> tuple:
    a, b = (tuple(s) for s in shapes)
    if not a or not b:
        raise ShapeProblem(f"'@' needs tensors with at least one dimension, got shapes {show(a)} and {show(b)}")
    inner_a = a[-1]
    inner_b = b[0] if len(b) == 1 else b[-2]
    if inner_a != inner_b:
        raise ShapeProblem(f"shapes {show(a)} and {show(b)} do not fit for '@': {show(a)} has {inner_a} "
                           f"column{'s' if inner_a != 1 else ''} but {show(b)} has {inner_b} "
                           f"row{'s' if inner_b != 1 else ''}")
    batch = broadcast(a[:-2], b[:-2])
    if batch is None:
        raise ShapeProblem(f"shapes {show(a)} and {show(b)} do not fit for '@': the batch dimensions "
                           f"{show(a[:-2])} and {show(b[:-2])} do not broadcast")
    return batch + (a[-2:-1] if len(a) >= 2 else ()) + (b[-1:] if len(b) >= 2 else ())


def transpose(shapes, kinds, dim0: int = -2, dim1: int = -1) -> tuple:
    (x,) = (tuple(s) for s in shapes)
    if len(x) < 2 and (dim0, dim1) == (-2, -1):
        return x  # 0-d and 1-d: transpose is the identity, as x.T is in torch
    d0, d1 = axis(dim0, len(x), x, "dim0"), axis(dim1, len(x), x, "dim1")
    out = list(x)
    out[d0], out[d1] = out[d1], out[d0]
    return tuple(out)


def outer(shapes, kinds) -> tuple:
    a, b = (tuple(s) for s in shapes)
    if len(a) != 1 or len(b) != 1:
        raise ShapeProblem(f"outer(a, b) needs two vectors (1-d), got shapes {show(a)} and {show(b)}")
    return a + b


def reduce(shapes, kinds, dim: int | None = None) -> tuple:
    """A reduction: to a scalar without a dim; with one, the dim kept with size 1 (keepdim)."""
    (x,) = (tuple(s) for s in shapes)
    if dim is None:
        return ()
    d = axis(dim, len(x), x)
    return x[:d] + (1,) + x[d + 1:]


def variance(shapes, kinds, dim: int | None = None) -> tuple:
    """var / std: torch's correction=1 divides by n - 1, so n must be at least 2."""
    out = reduce(shapes, kinds, dim)
    x = tuple(shapes[0])
    n = math.prod(x) if dim is None else x[axis(dim, len(x), x)]
    if n < 2:
        raise ShapeProblem(f"var and std divide by n - 1 (torch's unbiased default) and need at least 2 elements "
                           f"{'in all' if dim is None else f'along dim {dim}'}; shape {show(x)} has {n}")
    return out


def along(shapes, kinds, dim: int = -1) -> tuple:
    """softmax, log_softmax: the same shape, normalized along dim."""
    (x,) = (tuple(s) for s in shapes)
    axis(dim, len(x), x)
    return x


def _class_losses(name, shapes, kinds, probabilities_allowed: bool) -> tuple:
    z, y = (tuple(s) for s in shapes)
    kind = kinds[1] if kinds else None
    if len(z) not in (1, 2):
        raise ShapeProblem(f"{name} takes logits of shape [C] or [N, C] (classes last), got {show(z)}")
    if kind == "bool":
        raise ShapeProblem(f"{name}'s target holds booleans; class indices are integers: give them with "
                           "int([...]) or randint(low, high, n)")
    classes = y == z[:-1] and kind in ("int", None)
    if classes:
        return ()
    if kind == "int":
        raise ShapeProblem(f"{name}: class indices for logits {show(z)} have shape {show(z[:-1])}, "
                           f"but the target has shape {show(y)}")
    if probabilities_allowed and y == z:
        return ()
    want = f"class indices of shape {show(z[:-1])} (int([...]) or randint(...))"
    if probabilities_allowed:
        want += f", or probabilities of shape {show(z)}"
    hint = (" (a float target of that shape looks like class indices: give it with int([...]))"
            if y == z[:-1] else "")
    raise ShapeProblem(f"{name}: logits {show(z)} and target {show(y)} do not fit: the target must be "
                       f"{want}{hint}")


def cross_entropy(shapes, kinds) -> tuple:
    return _class_losses("cross_entropy", shapes, kinds, True)


def nll(shapes, kinds) -> tuple:
    return _class_losses("nll", shapes, kinds, False)


def index(shape, items) -> tuple:
    """Basic indexing with integer literals and slices (positive steps), as torch does it."""
    shape = tuple(shape)
    if len(items) > len(shape):
        raise ShapeProblem(f"too many indices ({len(items)}) for shape {show(shape)}", len(items) - 1)
    out = []
    for k, (item, n) in enumerate(zip(items, shape)):
        if isinstance(item, int):
            if not -n <= item < n:
                raise ShapeProblem(f"index {item} is out of range for dimension {k} of shape {show(shape)} "
                                   f"(size {n}: use 0..{n - 1}, or -{n}..-1)", k)
            continue
        if item.step is not None and item.step <= 0:
            raise ShapeProblem(f"slice step {item.step} must be positive (as in torch)", k)
        size = len(range(*slice(item.start, item.stop, item.step).indices(n)))
        if size == 0:
            raise ShapeProblem(f"the slice {item.text()} selects no elements of dimension {k} "
                               f"(size {n}) of shape {show(shape)}", k)
        out.append(size)
    return tuple(out) + shape[len(items):]


def reshape(shapes, kinds, sizes: tuple) -> tuple:
    (x,) = (tuple(s) for s in shapes)
    n = math.prod(x)
    if sum(1 for s in sizes if s == -1) > 1:
        raise ShapeProblem("reshape: only one size may be -1")
    bad = [s for s in sizes if s < 1 and s != -1]
    if bad:
        raise ShapeProblem(f"reshape: sizes must be positive (or one -1), got {bad[0]}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ShapeProblem(f"cannot reshape shape {show(x)} ({n} elements) to {show(sizes)}: "
                               f"{n} is not a multiple of {known}")
        return tuple(n // known if s == -1 else s for s in sizes)
    if known != n:
        raise ShapeProblem(f"cannot reshape shape {show(x)} ({n} elements) to {show(sizes)} ({known:,} elements)")
    return tuple(sizes)


def cat(shapes, kinds, dim: int = 0) -> tuple:
    shapes = [tuple(s) for s in shapes]
    first = shapes[0]
    d = axis(dim, len(first), first)
    for s in shapes[1:]:
        if len(s) != len(first) or s[:d] + s[d + 1:] != first[:d] + first[d + 1:]:
            raise ShapeProblem(f"cat along dim {dim}: shapes {', '.join(show(x) for x in shapes)} must agree "
                               "in every other dimension")
    return first[:d] + (sum(s[d] for s in shapes),) + first[d + 1:]


def stack(shapes, kinds, dim: int = 0) -> tuple:
    shapes = [tuple(s) for s in shapes]
    first = shapes[0]
    if any(s != first for s in shapes[1:]):
        raise ShapeProblem(f"stack needs tensors of one shape, got {', '.join(show(x) for x in shapes)}")
    rank = len(first) + 1
    if not -rank <= dim < rank:
        raise ShapeProblem(f"stack: dim {dim} is out of range for the result's {rank} dimensions "
                           f"(use 0..{rank - 1}, or -{rank}..-1)")
    d = dim % rank
    return first[:d] + (len(shapes),) + first[d:]
