"""The structured functions in torch, on tensors laid out as (batch, *shape).

Autograd evaluates one point (batch 1); finite differences evaluate many perturbed
points at once (torch_eval.py pads every value to (B, 1, ..., 1, *shape)).  A structured
function receives its operands as (B, *shape) -- B may be 1 for an operand that no row
perturbs -- so every dim a user writes is shifted by one, and returns (B, *result shape).
The torch calls are the ones a user would write (torch.matmul, torch.softmax,
F.cross_entropy, ...), so autograd checks torch's own backward formulas.
"""

from __future__ import annotations

from gradcheck_cli.expr import complex_forms


def _t():
    import torch

    return torch


def to_core(t, shape: tuple, batched: bool):
    """(B, *shape) from a padded batched value, or (1, *shape) from a plain one."""
    return t.reshape((t.shape[0] if batched else 1,) + tuple(shape))


def from_core(c, shape: tuple, rank: int, batched: bool):
    """Back to the padded batched layout (B, 1, ..., 1, *shape), or the plain shape."""
    if not batched:
        return c.reshape(tuple(shape))
    return c.reshape((c.shape[0],) + (1,) * (rank - len(shape)) + tuple(shape))


def dim_of(x, dim: int, extra: int = 0) -> int:
    """The core dim of a user's dim over x's logical dims (+ `extra` for stack's new one)."""
    rank = x.ndim - 1 + extra
    return dim % rank + 1


def same_batch(xs):
    """Operands expanded to one batch size (cat and stack do not broadcast)."""
    b = max(x.shape[0] for x in xs)
    return [x.expand((b,) + tuple(x.shape[1:])) for x in xs]


def matmul(a, b):
    """torch.matmul's rules per batch row: vectors are promoted, then the added dims dropped."""
    va, vb = a.ndim == 2, b.ndim == 2  # 1-d operands
    a2 = a.unsqueeze(1) if va else a
    b2 = b.unsqueeze(-1) if vb else b
    # align the logical batch dims right after the row dim, so torch broadcasts them, not B
    rank = max(a2.ndim, b2.ndim)
    a2 = a2.reshape((a2.shape[0],) + (1,) * (rank - a2.ndim) + tuple(a2.shape[1:]))
    b2 = b2.reshape((b2.shape[0],) + (1,) * (rank - b2.ndim) + tuple(b2.shape[1:]))
    out = _t().matmul(a2, b2)
    if vb:
        out = out.squeeze(-1)
    if va:
        out = out.squeeze(-2 if not vb else -1)
    return out


def transpose(x, dim0: int = -2, dim1: int = -1):
    if x.ndim < 3 and (dim0, dim1) == (-2, -1):
        return x
    return x.transpose(dim_of(x, dim0), dim_of(x, dim1))


def outer(a, b):
    return a.unsqueeze(2) * b.unsqueeze(1)


def reduce(name: str, x, dim: int | None = None):
    """A reduction over dim (kept, size 1) or over every logical dim (to a scalar)."""
    torch = _t()
    if dim is None:
        flat = x.reshape(x.shape[0], -1)
        return reduce(name, flat, 0).reshape(x.shape[0])
    d = dim_of(x, dim)
    if name in ("logsumexp", "norm"):  # real, or the analytic forms complex steps need
        return getattr(complex_forms, name)(torch, x, (d,), True)
    if name in ("sum", "mean", "prod"):
        return getattr(torch, name)(x, dim=d, keepdim=True)
    if name in ("amax", "amin"):
        return getattr(torch, name)(x, dim=d, keepdim=True)
    if name == "var":
        return torch.var(x, dim=d, keepdim=True)
    if name == "std":
        return torch.std(x, dim=d, keepdim=True)
    raise ValueError(f"unknown reduction {name!r}")


def axis_kinks(name: str, x, dim: int | None = None) -> tuple:
    """Signed offsets that are zero exactly at a reduction's kinks: the element that attains
    the max (or min) is 0, a tie makes another one 0 (so a finite-difference stencil that
    changes which element wins is seen crossing); norm's kink is a zero slice."""
    if name not in ("amax", "amin", "norm"):
        return ()
    flat = dim is None
    y = x.reshape(x.shape[0], -1) if flat else x
    d = 1 if flat else dim_of(x, dim)
    if name == "norm":
        return (y.abs().amax(dim=d),)
    best = y.amax(dim=d, keepdim=True) if name == "amax" else y.amin(dim=d, keepdim=True)
    return (y - best,)


def softmax(x, dim: int = -1):
    return _t().softmax(x, dim_of(x, dim))


def log_softmax(x, dim: int = -1):
    return _t().log_softmax(x, dim_of(x, dim))


def _class_loss(fn, z, y):
    """torch's loss per batch row, mean over the samples: z is (B, C) or (B, N, C); y holds
    class indices (B', ) / (B', N) or probabilities shaped like z."""
    probabilities = y.ndim == z.ndim
    z, y = same_batch([z, y]) if probabilities else (z, y.expand((z.shape[0],) + tuple(y.shape[1:])))
    if z.ndim == 2:  # unbatched logits (C,): torch takes (C,) and () per row as (B, C) and (B,)
        return fn(z, y, reduction="none")
    # (B, N, C) -> torch's K-dimensional form (B, C, N): class dim second
    zk = z.transpose(1, 2)
    yk = y.transpose(1, 2) if probabilities else y
    return fn(zk, yk, reduction="none").mean(dim=1)


def cross_entropy(z, y):
    return _class_loss(_t().nn.functional.cross_entropy, z, y)


def nll(lp, y):
    return _class_loss(_t().nn.functional.nll_loss, lp, y)


def index(x, items: tuple):
    from gradcheck_cli.expr.ir import Slice

    key = tuple(slice(i.start, i.stop, i.step) if isinstance(i, Slice) else i for i in items)
    return x[(slice(None),) + key]


def reshape(x, sizes: tuple):
    return x.reshape((x.shape[0],) + tuple(sizes))


def cat(xs, dim: int = 0):
    xs = same_batch(list(xs))
    return _t().cat(xs, dim=dim_of(xs[0], dim))


def stack(xs, dim: int = 0):
    xs = same_batch(list(xs))
    return _t().stack(xs, dim=dim_of(xs[0], dim, extra=1))
