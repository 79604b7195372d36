"""The diagnostics of an expression check beyond the comparison itself: kinks met by finite
differences, sampled columns, the forward value's precision (and its likely cause), and
inputs the dtype rounded."""

from __future__ import annotations

import math

import numpy as np

from gradcheck_cli import compare as cmp
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import KINK_CONVENTIONS
from gradcheck_cli.report import Diagnostic
from gradcheck_cli.tolerances import DTYPE_EPS

TARGET = "target"  # the loss target's name (--loss/--target)


def kink_diagnostics(prep, fd_results, auto_grads, out_shape) -> list[Diagnostic]:
    out = []
    for w, fd in fd_results.items():
        if not fd.kinks or fd.kink_mask is None or not fd.kink_mask.any():
            continue
        funcs = ", ".join(f"{f} (column {c})" for f, c in fd.kinks)
        detail = ""
        if fd.forward_slope is not None:
            shape = tuple(out_shape) + tuple(prep.var_shapes[w])
            mask = fd.kink_mask.reshape(shape)
            idx = tuple(int(i) for i in np.argwhere(mask)[0])
            left = fd.backward_slope.reshape(shape)[idx]
            right = fd.forward_slope.reshape(shape)[idx]
            at = f"[{', '.join(map(str, idx))}]" if idx else ""
            detail = (f"; one-sided slopes of d/d{w}{at}: left {left:.6g}, right {right:.6g}, "
                      f"autograd {auto_grads[w][idx]:.6g}")
        out.append(Diagnostic("non_differentiable", (
            f"{funcs}: a kink at or within a finite-difference step of this point{detail}. Any value between the "
            f"one-sided slopes is a valid (sub)gradient, so this is reported, not failed; {KINK_CONVENTIONS}"), w))
    return out

def sampling_diagnostics(prep, fd_results) -> list[Diagnostic]:
    out = []
    for w, fd in fd_results.items():
        if fd.sampled is not None:
            n = math.prod(prep.var_shapes[w])
            out.append(Diagnostic("fd_sampled", (
                f"finite differences were computed for {fd.sampled.size} of {n} elements of {w!r} "
                "(a seeded sample, to bound the cost); the others are null and compared with symbolic only"), w))
    return out

def value_diagnostics(prep, torch_value, sym_value, arrays, opts) -> list[Diagnostic]:
    out = []
    if not np.all(np.isfinite(torch_value)):
        out.append(Diagnostic("nonfinite", f"the forward value in {opts.dtype} is not finite "
                                           f"({cmp.fmt_values(torch_value[~np.isfinite(torch_value)])})"))
    if sym_value is None or not np.all(np.isfinite(sym_value)) or not np.all(np.isfinite(torch_value)):
        return out
    with np.errstate(all="ignore"):
        rel = np.abs(torch_value - sym_value) / np.maximum(np.abs(sym_value), 1e-300)
    worst = float(np.max(rel)) if rel.size else 0.0
    limit = cmp.TOLERANCES[opts.dtype]["value_rtol"]
    if worst <= limit:
        return out
    idx = np.unravel_index(int(np.argmax(rel)), rel.shape)
    eps = DTYPE_EPS[opts.dtype]
    message = (f"the {opts.dtype} forward value {float(torch_value[idx]):.6g} differs from the exact "
               f"{float(sym_value[idx]):.9g} by {worst:.2%} ({worst / eps:,.0f}x {opts.dtype}'s epsilon)")
    out.append(Diagnostic("precision_loss", message + likely_cause(prep, arrays, opts.dtype)))
    return out

def rounding_diagnostics(arrays: dict, ref_arrays: dict, dtype: str) -> list[Diagnostic]:
    """Say where the dtype moved the point: references are evaluated where autograd was."""
    if ref_arrays is arrays:
        return []
    moved = []
    for name, original in arrays.items():
        rounded = ref_arrays[name]
        if name == TARGET or np.array_equal(original, rounded):
            continue
        i = int(np.argmax(np.abs(np.asarray(original) - rounded)))
        moved.append(f"{name}={np.asarray(original).reshape(-1)[i]:.10g} as "
                     f"{np.asarray(rounded).reshape(-1)[i]:.10g}")
    if not moved:
        return []
    return [Diagnostic("input_rounded", f"{dtype} represents {', '.join(moved[:4])}"
                       f"{' ...' if len(moved) > 4 else ''}; symbolic and finite differences are evaluated at "
                       "that point, so they judge the backward pass, not the rounding of the inputs "
                       "(value.symbolic is the exact value at the point as given)")]

def likely_cause(prep, arrays: dict, dtype: str) -> str:
    """Name the classic cause: bce's log(1-p) with p close to 1 (or log p with p close to 0)."""
    for node in ir.preorder(prep.root):
        if isinstance(node, ir.Call) and node.func == "bce":
            p = float64_value(node.args[0], arrays)
            if p is None:
                break
            q = float(np.max(np.minimum(p, 1 - p)))
            inner = node.args[0]
            logit = sigmoid_logit(inner)
            if logit is None:
                logit = f"logit({ir.to_source(inner)})"
            target = prep.target.text if prep.target is not None else ir.to_source(node.args[1])
            return (f". Likely cause: cancellation in log(1-p): p = {float(np.max(p)):.9g} here, so 1-p = {q:.3g} "
                    f"keeps only a few significant digits in {dtype}. The stable form is "
                    f"bce_logits({logit}, {target}), which never forms 1-p (--loss bce_logits on the logit)")
    return ". Likely cause: rounding in the low-precision forward pass amplified by cancellation"

def sigmoid_logit(node: ir.Node) -> str | None:
    """The source of a sigmoid's argument (its logit, what bce_logits takes), or None when
    the node is not a sigmoid call."""
    return ir.to_source(node.args[0]) if isinstance(node, ir.Call) and node.func == "sigmoid" else None


def float64_value(node: ir.Node, arrays: dict):
    """The sub-expression's value in float64 at the point (a numpy array), or None when it
    cannot be evaluated: for notes that explain a result, never for the result itself."""
    import torch

    from gradcheck_cli.engines.torch_eval import evaluate

    try:
        inputs = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in arrays.items()}
        return np.asarray(evaluate(node, inputs, torch, dtype=torch.float64).numpy(), dtype=np.float64)
    except Exception:  # noqa: BLE001 -- a best-effort explanation; the check itself already ran
        return None
