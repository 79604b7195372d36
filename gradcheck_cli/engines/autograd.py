"""Gradients, Jacobians and Hessians by torch autograd, in the requested dtype."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck_cli.dtypes import torch_dtype
from gradcheck_cli.engines.torch_eval import evaluate
from gradcheck_cli.expr import ir

MAX_JACOBIAN_ENTRIES = 20_000_000
JACOBIAN_BATCH = 256  # one-hot grad_outputs per batched backward call


@dataclass(frozen=True)
class AutogradResult:
    value: np.ndarray  # forward value in dtype, as float64
    gradients: dict  # name -> float64 array of shape out_shape + in_shape
    hessian: np.ndarray | None  # (n, n) over the flattened wrt variables, or None
    unused: tuple  # wrt names the output does not depend on through autograd


def run(root: ir.Node, arrays: dict, wrt: list[str], dtype: str, *, device: str = "cpu",
        order: int = 1) -> AutogradResult:
    """Forward in `dtype`, then backward for every name in `wrt` (double backward for order 2)."""
    import torch

    tdtype = torch_dtype(dtype)
    leaves = {name: _leaf(torch, arr, tdtype, device, name in wrt) for name, arr in arrays.items()}
    out = evaluate(root, leaves, torch, dtype=tdtype, device=device)
    value = out.detach().to(device="cpu", dtype=torch.float64).numpy()
    inputs = [leaves[w] for w in wrt]
    if out.ndim == 0:
        grads = _grad(torch, out, inputs, create_graph=order == 2)
        gradients = {w: _np(torch, g) for w, g in zip(wrt, grads)}
        hessian = _hessian(torch, grads, inputs) if order == 2 else None
    else:
        gradients = _jacobian(torch, out, inputs, wrt)
        hessian = None
    unused = tuple(w for w, x in zip(wrt, inputs) if not _reaches(out, x))
    return AutogradResult(value, gradients, hessian, unused)


def _leaf(torch, arr, tdtype, device, requires_grad: bool):
    """An input tensor: integer and boolean values (class targets, masks) keep their dtype."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "biu":
        return torch.tensor(arr, device=device)
    return torch.tensor(arr, dtype=tdtype, device=device, requires_grad=requires_grad)


def _np(torch, t):
    return t.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


def _grad(torch, out, inputs, create_graph=False):
    """d out / d inputs; an input the graph does not reach gets zeros (as torch's own
    `materialize_grads` would): that is the right derivative of a constant."""
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(out, inputs, allow_unused=True, retain_graph=True, create_graph=create_graph)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _reaches(out, leaf) -> bool:
    """Whether autograd's graph of `out` contains `leaf` (False for detached or unused inputs)."""
    if not out.requires_grad:
        return False
    if out.grad_fn is None:  # the result is a leaf itself (`x`, or sum(x) of a scalar)
        return out is leaf
    stack, seen = [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if getattr(fn, "variable", None) is leaf:
            return True
        stack.extend(f for f, _ in fn.next_functions)
    return False


def _jacobian(torch, out, inputs, wrt) -> dict:
    n_out = out.numel()
    for x, w in zip(inputs, wrt):
        if n_out * x.numel() > MAX_JACOBIAN_ENTRIES:
            from gradcheck_cli.errors import UserInputError
            raise UserInputError(f"the Jacobian of this {list(out.shape)} result w.r.t. {w!r} would have "
                                 f"{n_out * x.numel():,} entries (limit {MAX_JACOBIAN_ENTRIES:,}); "
                                 "reduce it to a scalar, e.g. sum(...), or use `gradcheck op --mode fast`")
    rows = {w: np.empty((n_out,) + tuple(x.shape)) for w, x in zip(wrt, inputs)}
    if not out.requires_grad:  # nothing reaches the inputs: the Jacobian is exactly zero
        return {w: np.zeros(tuple(out.shape) + tuple(x.shape)) for w, x in zip(wrt, inputs)}
    for start in range(0, n_out, JACOBIAN_BATCH):
        stop = min(n_out, start + JACOBIAN_BATCH)
        block = _jacobian_rows(torch, out, inputs, start, stop)
        for w, g in zip(wrt, block):
            rows[w][start:stop] = g
    return {w: rows[w].reshape(tuple(out.shape) + tuple(x.shape)) for w, x in zip(wrt, inputs)}


def _jacobian_rows(torch, out, inputs, start: int, stop: int) -> list:
    """Rows start..stop of the Jacobian: one batched backward with one-hot grad_outputs
    (vmap over autograd), or one backward per row where vmap cannot go through an op."""
    n_out = out.numel()
    eye = torch.zeros((stop - start, n_out), dtype=out.dtype, device=out.device)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
    try:
        grads = torch.autograd.grad(out, inputs, eye.reshape((stop - start,) + tuple(out.shape)),
                                    retain_graph=True, allow_unused=True, is_grads_batched=True)
        return [np.zeros((stop - start,) + tuple(x.shape)) if g is None else _np(torch, g)
                for g, x in zip(grads, inputs)]
    except RuntimeError:
        flat = out.reshape(-1)
        per_row = [_grad(torch, flat[i], inputs) for i in range(start, stop)]
        return [np.stack([_np(torch, row[k]) for row in per_row]) for k in range(len(inputs))]


def _hessian(torch, grads, inputs) -> np.ndarray:
    """Rows of the Hessian by double backward, over the flattened inputs in wrt order."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    n = flat.numel()
    hess = np.zeros((n, n))
    for i in range(n):
        if not flat.requires_grad:
            break
        row = _grad(torch, flat[i], inputs)
        hess[i] = np.concatenate([_np(torch, r).reshape(-1) for r in row])
    return hess
