"""--order 2: double backward against central differences of the float64 backward, and
the backward's derivative in grad_output (forward-over-reverse's J u)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck_cli.op.jacobian import EPS, step_sizes
from gradcheck_cli.op.runner import (OpRaised, call, describe_exception, grad_numpy, make_tensors, unflatten,
                                     user_failures, vjp)
from gradcheck_cli.op.verdict import FD_SAFETY, concat_label
from gradcheck_cli.report import Diagnostic

MAX_ORDER2_ELEMENTS = 160  # flattened inputs for a full double-backward matrix; more are sampled
ORDER2_SAMPLE = 48


@dataclass
class Order2Outcome:
    passed: bool
    diagnostics: list
    hessian: dict | None


def double_backward(spec, arrays: dict, ref_arrays: dict, dtype: str, device: str, v: np.ndarray,
                    tol: dict, eps: float | None, rng: np.random.Generator, f64_ok: bool,
                    jac_u: tuple | None) -> Order2Outcome:
    """d/dx (v^T J(x)) by double backward in `dtype` against central differences of the
    float64 backward (step halving for the error estimate); and d/dv <u, v^T J> = J u.
    `jac_u` is (u_per_input dict, expected J u, allowed) from the first-order reference."""
    import torch

    wrt = list(spec.wrt)
    diags: list[Diagnostic] = []
    sizes = [int(np.prod(np.shape(arrays[w]))) for w in wrt]
    n = sum(sizes)
    sample = np.arange(n) if n <= MAX_ORDER2_ELEMENTS else np.sort(rng.choice(n, ORDER2_SAMPLE, replace=False))
    try:
        tensors = make_tensors(spec, arrays, dtype, device)
        outs = call(spec, tensors)
        inputs = [tensors[w] for w in wrt]
        vt = [t.requires_grad_(True) for t in unflatten(v, outs)]
        grads = vjp(outs, inputs, vt, create_graph=True, phase="backward (create_graph)")
        flat = torch.cat([(torch.zeros_like(x) if g is None else g).reshape(-1) for g, x in zip(grads, inputs)])
        rows = np.zeros((sample.size, n))
        reached = False  # whether autograd's graph of the backward reaches the inputs at all
        for r, i in enumerate(sample):
            if not flat.requires_grad:
                break
            second = torch.autograd.grad(flat[int(i)], inputs, retain_graph=True, allow_unused=True)
            reached = reached or any(g is not None for g in second)
            rows[r] = np.concatenate([np.zeros(s) if g is None else grad_numpy(g) for g, s in zip(second, sizes)])
        wrt_v = None
        if jac_u is not None and flat.requires_grad:
            u = torch.as_tensor(np.concatenate([jac_u[0][w] for w in wrt]), dtype=flat.dtype, device=flat.device)
            gv = torch.autograd.grad((flat * u).sum(), vt, retain_graph=True, allow_unused=True)
            wrt_v = np.concatenate([np.zeros(o.numel()) if g is None else grad_numpy(g) for g, o in zip(gv, outs)])
    except OpRaised as exc:
        return Order2Outcome(False, [Diagnostic("double_backward_error", f"double backward raised: {exc.message}")],
                             None)
    except user_failures() as exc:  # torch's own refusal (e.g. @once_differentiable) is the op's failure
        return Order2Outcome(False, [Diagnostic("double_backward_error", (
            f"the backward cannot be differentiated: {describe_exception(exc)}"))], None)
    ad_block = rows[:, sample]
    fd_block, fd_err = _fd_of_backward(spec, ref_arrays if f64_ok else arrays, "float64" if f64_ok else dtype,
                                       device, v, wrt, sizes, sample, eps)
    if fd_block is None:
        return Order2Outcome(False, [Diagnostic("double_backward_error", fd_err)], None)
    scale = np.maximum(np.max(np.abs(fd_block), axis=1, keepdims=True), np.max(np.abs(fd_block), axis=0, keepdims=True))
    allowed = tol["atol"] + tol["rtol"] * np.abs(fd_block) + tol["scale"] * scale + FD_SAFETY * fd_err
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(ad_block - fd_block) <= allowed)
    passed = not bad.any()
    if not passed:
        i, j = (int(k) for k in np.argwhere(bad)[0])
        hint = (" (a common cause: a tensor computed in forward and saved with save_for_backward is a constant "
                "to double backward, since forward runs without autograd; recompute it from the inputs inside "
                "backward)") if reached else \
            (" (the backward's result does not require grad w.r.t. the inputs: it is computed outside autograd, "
             "e.g. @once_differentiable, .detach(), .data or no_grad)")
        wrt_j, of_i = (concat_label(arrays, wrt, sizes, sample[k]) for k in (j, i))
        diags.append(Diagnostic("double_backward_mismatch", (
            f"d/d{wrt_j} of (v^T J)[{of_i}]: double backward {ad_block[i, j]:.10g} vs "
            f"finite differences of the backward {fd_block[i, j]:.10g} (allowed {allowed[i, j]:.3g}); "
            f"{int(bad.sum())} of {bad.size} entries out of tolerance{hint}")))
    if wrt_v is not None and jac_u is not None:
        expected, allowed_v = jac_u[1], jac_u[2]
        bad_v = ~(np.abs(wrt_v - expected) <= allowed_v)
        if bad_v.any():
            passed = False
            k = int(np.flatnonzero(bad_v)[0])
            diags.append(Diagnostic("double_backward_mismatch", (
                f"the derivative of the backward w.r.t. grad_output is wrong at output element {k}: "
                f"{wrt_v[k]:.10g}, expected J u = {expected[k]:.10g}")))
    if n > MAX_ORDER2_ELEMENTS:
        diags.append(Diagnostic("order2_sampled", f"double backward checked on {sample.size} of {n} input "
                                                  "elements (a seeded sample)"))
    hessian = {"autograd": ad_block, "finite_difference": fd_block, "symbolic": None, "passed": passed,
               "labels": [concat_label(arrays, wrt, sizes, i) for i in sample], "wrt": wrt, "of": "sum(v * out), v a random grad_output",
               "max_abs_error": float(np.nanmax(np.abs(ad_block - fd_block))) if ad_block.size else 0.0}
    return Order2Outcome(passed, diags, hessian)


def _fd_of_backward(spec, arrays, dtype, device, v, wrt, sizes, sample, eps):
    """Columns `sample` of d(v^T J)/dx by central differences of the backward, with step halving."""

    base = np.concatenate([np.asarray(arrays[w], dtype=np.float64).reshape(-1) for w in wrt])
    eps_dtype = EPS[dtype]
    h = step_sizes(base, "central", eps, eps_dtype)
    backward_at = _backward_at(spec, arrays, dtype, device, v, wrt, sizes)

    cols, errs = np.zeros((sample.size, sample.size)), np.zeros((sample.size, sample.size))
    try:
        g0 = backward_at(base)
        for c, j in enumerate(sample):
            vals = {}
            for d in (1, -1, 2, -2):
                p = base.copy()
                p[j] += d * h[j]
                vals[d] = backward_at(p)[sample]
            d1 = (vals[1] - vals[-1]) / (2 * h[j])
            d2 = (vals[2] - vals[-2]) / (4 * h[j])
            noise = 4 * eps_dtype * (np.abs(g0[sample]) + np.abs(vals[1])) / h[j]
            cols[:, c] = d1
            errs[:, c] = np.abs(d1 - d2) / 3 + noise
    except OpRaised as exc:
        return None, f"the op raised while differencing its backward: {exc.message}"
    return cols, errs


def forward_over_reverse_check(spec, arrays: dict, ref_arrays: dict, dtype: str, device: str, v: np.ndarray,
                               tol: dict, eps: float | None, rng: np.random.Generator, f64_ok: bool) -> list:
    """d/dt [v^T J(x + t u)] by forward AD through the backward (forward-over-reverse, what
    torch.func's jacfwd(jacrev(f)) Hessians run) against central differences of the
    backward along the same random u, with step halving.  Diagnostics: nothing when they
    agree, forward_ad_unsupported when the backward has no forward-mode formulas."""
    from gradcheck_cli.op.forward_ad import Unsupported, forward_over_reverse, unsupported_reason

    wrt = list(spec.wrt)
    sizes = [int(np.prod(np.shape(arrays[w]))) for w in wrt]
    finite = np.concatenate([np.isfinite(np.asarray(ref_arrays[w], dtype=np.float64).reshape(-1)) for w in wrt])
    u_flat = np.where(finite, rng.standard_normal(sum(sizes)), 0.0)  # a non-finite element is never stepped
    bounds = np.cumsum([0] + sizes)
    u = {w: u_flat[bounds[k]:bounds[k + 1]] for k, w in enumerate(wrt)}
    try:
        got = forward_over_reverse(spec, arrays, dtype, device, v, u)
    except Unsupported as exc:
        return [Diagnostic("forward_ad_unsupported", "forward-over-reverse not checked: " + unsupported_reason(exc))]
    except OpRaised as exc:
        return [Diagnostic("double_backward_error", f"forward-over-reverse raised: {exc.message}")]
    expected, err = _fd_of_backward_along(spec, ref_arrays if f64_ok else arrays, "float64" if f64_ok else dtype,
                                          device, v, wrt, sizes, u_flat, eps)
    if expected is None:
        return [Diagnostic("double_backward_error", err)]
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    allowed = tol["atol"] + tol["rtol"] * np.abs(expected) + tol["scale"] * scale + FD_SAFETY * err
    bad = ~(np.abs(got - expected) <= allowed)
    if not bad.any():
        return []
    k = int(np.argmax(np.where(bad, np.abs(got - expected) / np.maximum(allowed, 1e-300), -1)))
    return [Diagnostic("forward_over_reverse_mismatch", (
        f"forward-over-reverse (forward-mode AD through the backward) gives {got[k]:.10g} for d/dt of "
        f"(v^T J)[{concat_label(arrays, wrt, sizes, k)}] along a random direction, finite differences of the backward {expected[k]:.10g} "
        f"(allowed {allowed[k]:.3g}); {int(bad.sum())} of {bad.size} elements disagree: the backward's own "
        "derivatives (its forward-mode formulas, or a jvp it calls) are wrong"))]


def _fd_of_backward_along(spec, arrays, dtype, device, v, wrt, sizes, u, eps):
    """d/dt (v^T J)(x + t u) by central differences of the backward with step halving."""
    base = np.concatenate([np.asarray(arrays[w], dtype=np.float64).reshape(-1) for w in wrt])
    eps_dtype = EPS[dtype]
    norm = max(float(np.max(np.abs(u))), 1e-300) if u.size else 1.0
    finite = np.abs(base[np.isfinite(base)])
    h = float(step_sizes(np.array([float(finite.max()) if finite.size else 0.0]), "central", eps, eps_dtype)[0]) / norm
    backward_at = _backward_at(spec, arrays, dtype, device, v, wrt, sizes)

    try:
        vals = {d: backward_at(base + d * h * u) for d in (1, -1, 2, -2)}
    except OpRaised as exc:
        return None, f"the op raised while differencing its backward: {exc.message}"
    d1 = (vals[1] - vals[-1]) / (2 * h)
    d2 = (vals[2] - vals[-2]) / (4 * h)
    noise = 4 * eps_dtype * (np.abs(vals[1]) + np.abs(vals[-1])) / h
    return d1, np.abs(d1 - d2) / 3 + noise


def apply_order2(pt, outcome: Order2Outcome, v: np.ndarray, f64_ok: bool) -> None:
    """double_backward's outcome into the point's report (order2_sampled is a note), then
    forward-over-reverse with grad_output v (apply_forward_over_reverse)."""
    for d in outcome.diagnostics:
        (pt.note if d.code == "order2_sampled" else pt.fail)(d.code, d.message, d.wrt)
    if outcome.hessian is not None:
        pt.extra["hessian"] = outcome.hessian
    apply_forward_over_reverse(pt, v, f64_ok)


def apply_forward_over_reverse(pt, v: np.ndarray, f64_ok: bool) -> None:
    """forward_over_reverse_check's diagnostics into the point's report (--order 2)."""
    opts = pt.opts
    if pt.extra.get("forward_ad") == "unsupported":  # already said: the op itself has no forward-mode AD
        return
    rng = np.random.default_rng([opts.seed, 6])  # its own stream: the other checks' draws stay as they were
    for d in forward_over_reverse_check(pt.prep.spec, pt.arrays, pt.ref_arrays, opts.dtype, opts.device, v, pt.tol,
                                        opts.eps, rng, f64_ok):
        (pt.note if d.code == "forward_ad_unsupported" else pt.fail)(d.code, d.message, d.wrt)


def _backward_at(spec, arrays: dict, dtype: str, device: str, v: np.ndarray, wrt: list, sizes: list):
    """point (all wrt inputs, flat) -> v^T J there, flat: the backward as a function to difference."""
    bounds = np.cumsum([0] + sizes)

    def backward_at(point: np.ndarray) -> np.ndarray:
        moved = dict(arrays)
        for k, w in enumerate(wrt):
            moved[w] = point[bounds[k]:bounds[k + 1]].reshape(np.shape(arrays[w]))
        tensors = make_tensors(spec, moved, dtype, device)
        outs = call(spec, tensors, "forward (finite differences of the backward)")
        grads = vjp(outs, [tensors[w] for w in wrt], unflatten(v, outs), phase="backward (finite differences)")
        return np.concatenate([np.zeros(s) if g is None else grad_numpy(g) for g, s in zip(grads, sizes)])

    return backward_at
