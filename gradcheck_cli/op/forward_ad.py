"""Forward-mode AD (a Function's `jvp`, torch ops' forward formulas), checked like the
backward: J u by forward AD along random directions u against the reference Jacobian
(finite differences, --reference) entry by entry, and against the backward (v . J u must
equal (v^T J) . u: forward and reverse mode describe one Jacobian).  A wrong jvp fails
with jvp_mismatch; an op without forward AD gets a note, not a failure (forward AD is
optional for an op, as in torch.autograd.gradcheck's check_forward_ad).

--order 2 adds forward-over-reverse: d/dt [v^T J(x + t u)] by forward AD through the
backward, against central differences of the backward along u (order2.py holds the
double-backward check beside it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from gradcheck_cli.op.runner import OpRaised, call, grad_numpy, make_tensors, unflatten, user_failures, vjp
from gradcheck_cli.op.verdict import FD_SAFETY
from gradcheck_cli.report import Diagnostic

DIRECTIONS = 1  # random tangents per point (full mode: a wrong jvp column shows along any dense u)
# what an op without forward-mode AD raises (a Function without jvp; a torch op without a formula)
_UNSUPPORTED = ("must implement the jvp function", "forward ad", "forward-mode", "forward mode")


class Unsupported(Exception):
    """The op has no forward-mode AD; the message says why (the op's own words)."""


@dataclass
class JVPOutcome:
    diagnostics: list
    calls: int = 0
    ran: bool = False


def tangents(spec, arrays: dict, dtype: str, device: str, directions: dict, phase: str = "forward-mode AD"):
    """J u: the op's outputs' tangents (one flat float64 vector) for input tangents
    `directions` (input name -> flat float64 array; inputs not named get none).

    torch loads its forward-AD decompositions (jvps of a few backward ops, scripted with
    torch.jit: ~0.2 s) on the first make_dual; an op check needs them only when the op
    calls those backward ops.  So the first try goes without them, and anything it raises
    is tried again with them loaded: only that answer counts."""
    if _decompositions_loaded():
        return _tangents(spec, arrays, dtype, device, directions, phase)
    try:
        with _decompositions_deferred():
            return _tangents(spec, arrays, dtype, device, directions, phase)
    except Unsupported as exc:  # a Function without jvp, or nothing carrying tangents: not the decompositions
        if "jvp function" in str(exc) or "carry no tangent" in str(exc):
            raise
    except OpRaised:
        pass
    _load_decompositions()
    return _tangents(spec, arrays, dtype, device, directions, phase)


def _decompositions_loaded() -> bool:
    import sys

    return "torch._decomp.decompositions_for_jvp" in sys.modules


@contextlib.contextmanager
def _decompositions_deferred():
    """make_dual without loading torch's forward-AD decompositions (put back after)."""
    import torch.autograd.forward_ad as fwad

    loader = getattr(fwad, "_maybe_load_decompositions", None)
    if loader is None:
        yield
        return
    fwad._maybe_load_decompositions = lambda: None
    try:
        yield
    finally:
        fwad._maybe_load_decompositions = loader


def _tangents(spec, arrays: dict, dtype: str, device: str, directions: dict, phase: str):
    import torch
    import torch.autograd.forward_ad as fwad

    _refuse_without_jvp(spec)
    tensors = make_tensors(spec, arrays, dtype, device, grad=False)
    try:
        with fwad.dual_level():
            for w, u in directions.items():
                t = tensors[w]
                tensors[w] = fwad.make_dual(t, torch.as_tensor(u, dtype=t.dtype, device=t.device).reshape(t.shape))
            outs = call(spec, tensors, phase)
            found = [fwad.unpack_dual(o).tangent for o in outs]
            if directions and all(t is None for t in found):  # nothing carried a tangent through the op
                raise Unsupported("its outputs carry no tangent: forward-mode AD is not implemented along its path")
            parts = [torch.zeros(o.numel(), dtype=torch.float64) if tan is None else
                     tan.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for o, tan in zip(outs, found)]
    except OpRaised as exc:
        if _unsupported(exc.exc):
            raise Unsupported(exc.message) from None
        raise
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def unsupported_message(exc: Exception) -> str:
    """The note for an op without forward-mode AD: short, since most custom Functions are."""
    return f"JVPs not checked: {unsupported_reason(exc)}"


def unsupported_reason(exc: Exception) -> str:
    """'the op has no forward-mode AD (why)', why in a few words."""
    text = str(exc)
    if "jvp function" in text:
        why = "a torch.autograd.Function without a jvp staticmethod"
    else:
        why = text.split(". ")[0][:160]
    return f"the op has no forward-mode AD ({why})"


NO_JVP = ("You must implement the jvp function for custom autograd.Function to use it with forward mode AD "
          "(the Function does not define jvp)")


def _refuse_without_jvp(spec) -> None:
    """Raise Unsupported, as torch would, for a torch.autograd.Function that does not define
    jvp, without making a dual tensor: the first one loads torch's forward-AD decompositions
    (TorchScript, ~0.3 s a process), for nothing when the Function cannot run forward AD."""
    target = getattr(spec, "target", None)
    if target is None or target.kind != "autograd_function":
        return
    import torch

    cls = getattr(target.fn, "__self__", None)
    if isinstance(cls, type) and getattr(cls, "jvp", None) is torch.autograd.Function.jvp:
        raise Unsupported(NO_JVP)


def _load_decompositions() -> None:
    """torch loads its forward-AD decompositions on the first make_dual, and that import
    warns (torch.jit.script is deprecated): load them now, quietly, so the warning is not
    reported as the op's."""
    import warnings

    import torch.autograd.forward_ad as fwad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = getattr(fwad, "_maybe_load_decompositions", None)
        if loader is not None:
            loader()


def _unsupported(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, NotImplementedError) or any(s in text for s in _UNSUPPORTED)


def jacobian_times(refs: dict, u: dict, m: int) -> tuple[np.ndarray, np.ndarray]:
    """J u from the reference Jacobians (checks.ReferenceJacobian per input) and the error
    each element may carry: (expected (m,), allowed (m,))."""
    expected, allowed = np.zeros(m), np.zeros(m)
    for w, r in refs.items():
        uw = u[w]
        au = np.abs(uw)
        expected += np.bincount(r.rows, weights=r.values * uw[r.cols], minlength=m)
        allowed += np.bincount(r.rows, weights=r.allowed * au[r.cols], minlength=m)
        allowed += r.floor_row * au.sum() + float(au @ r.floor_col)
        if r.noise is not None and r.steps is not None:  # finite differences' rounding, as in the vjp check
            with np.errstate(divide="ignore", invalid="ignore"):
                allowed += FD_SAFETY * r.noise * float(np.sum(np.where(r.steps > 0, au / r.steps, 0.0)))
    return expected, allowed


def check_full(pt, refs: dict, outs: list, tensors: dict, layout, jac_ok: dict) -> JVPOutcome:
    """Full mode: DIRECTIONS random tangents; J u by forward AD against the reference
    Jacobian entry by entry, and v . J u against the backward's (v^T J) . u."""
    spec, opts = pt.prep.spec, pt.opts
    wrt = list(spec.wrt)
    rng = np.random.default_rng([opts.seed, 5])  # its own stream: the other checks' draws stay as they were
    res = JVPOutcome([])
    m = layout.m
    for _ in range(DIRECTIONS):
        u = {w: rng.standard_normal(refs[w].n) * _stepped(pt, w, refs[w].n) for w in wrt}
        try:
            ju = tangents(spec, pt.arrays, opts.dtype, opts.device, u)
        except Unsupported as exc:
            res.diagnostics.append(Diagnostic("forward_ad_unsupported", unsupported_message(exc)))
            return res
        except OpRaised as exc:
            res.diagnostics.append(Diagnostic("op_error", f"the op raised in {exc.phase}: {exc.message}"))
            return res
        res.calls += 1
        res.ran = True
        expected, allowed = jacobian_times(refs, u, m)
        if all(jac_ok.get(w, False) for w in wrt):  # the reference is trusted only where the backward agreed
            bad = ~(np.abs(ju - expected) <= allowed) & np.isfinite(expected)
            if bad.any():
                k = int(np.argmax(np.where(bad, np.abs(ju - expected) / np.maximum(allowed, 1e-300), -1)))
                res.diagnostics.append(Diagnostic("jvp_mismatch", (
                    f"forward-mode AD (the op's jvp) gives J u = {ju[k]:.10g} at {layout.label(k)} along a random "
                    f"direction u, where the Jacobian gives {expected[k]:.10g} (allowed {allowed[k]:.3g}); "
                    f"{int(bad.sum())} of {m} elements disagree, although the backward agrees with the Jacobian")))
                return res
        _consistency(res, pt, outs, tensors, refs, u, ju, allowed, rng, layout)
        if any(d.code == "jvp_mismatch" for d in res.diagnostics):
            return res
    return res


def _stepped(pt, w: str, n: int) -> np.ndarray:
    """1 where the input element is finite (stepped by finite differences), else 0."""
    fixed = pt.fixed.get(w)
    return np.ones(n) if fixed is None else (~fixed).astype(float)


def _consistency(res, pt, outs, tensors, refs, u, ju, allowed_ju, rng, layout) -> None:
    """v . (J u) from forward AD against (v^T J) . u from one backward call (allowed_ju: J u's
    allowed error, from jacobian_times)."""
    wrt = list(pt.prep.spec.wrt)
    m = layout.m
    v = rng.standard_normal(m)
    g = vjp(outs, [tensors[w] for w in wrt], unflatten(v, outs), phase="backward (forward/reverse consistency)")
    res.calls += 1
    reverse = sum(float(np.dot(np.zeros(refs[w].n) if gw is None else grad_numpy(gw), u[w])) for w, gw in zip(wrt, g))
    forward = float(np.dot(v, ju))
    allowed = float(np.abs(v) @ allowed_ju)
    for w in wrt:
        _, a = refs[w].vjp(v)
        allowed += float(np.abs(u[w]) @ np.where(np.isfinite(a), a, 0.0))
    if not abs(forward - reverse) <= allowed:
        res.diagnostics.append(Diagnostic("jvp_mismatch", (
            f"forward and reverse mode disagree: v . (J u) = {forward:.10g} by forward-mode AD but (v^T J) . u = "
            f"{reverse:.10g} by the backward, for random u and v (allowed {allowed:.3g}): the jvp and the backward "
            "describe different Jacobians")))


def check_projection(spec, arrays: dict, dtype: str, device: str, w: str, u, v):
    """Fast mode: v . (J u) by forward AD along one projection's u (input w): a float, or
    raises Unsupported / OpRaised.  u and v may be callables that draw them (not drawn for
    a Function without jvp)."""
    _refuse_without_jvp(spec)
    ju = tangents(spec, arrays, dtype, device, {w: u() if callable(u) else u})
    return float(np.dot(v() if callable(v) else v, ju))


def forward_over_reverse(spec, arrays: dict, dtype: str, device: str, v: np.ndarray, u: dict) -> np.ndarray:
    """d/dt [v^T J(x + t u)] by forward AD through the backward (the Hessian of v . f
    times u), all wrt inputs concatenated: raises Unsupported where the backward has no
    forward-mode formulas."""
    import torch
    import torch.autograd.forward_ad as fwad

    wrt = list(spec.wrt)
    _refuse_without_jvp(spec)
    _load_decompositions()
    tensors = make_tensors(spec, arrays, dtype, device)
    try:
        with fwad.dual_level():
            duals = {w: fwad.make_dual(tensors[w], torch.as_tensor(u[w], dtype=tensors[w].dtype,
                                                                   device=tensors[w].device).reshape(tensors[w].shape))
                     for w in wrt}
            outs = call(spec, {**tensors, **duals}, "forward (forward-over-reverse)")
            grads = vjp(outs, [tensors[w] for w in wrt], unflatten(v, outs), phase="backward (forward-over-reverse)")
            parts = []
            for g, w in zip(grads, wrt):
                tan = None if g is None else fwad.unpack_dual(g).tangent
                parts.append(np.zeros(tensors[w].numel()) if tan is None else grad_numpy(tan).copy())
    except OpRaised as exc:
        if _unsupported(exc.exc):
            raise Unsupported(exc.message) from None
        raise
    except user_failures() as exc:  # torch's own refusal inside the backward
        if _unsupported(exc):
            raise Unsupported(str(exc)) from None
        raise OpRaised("forward-over-reverse", exc) from exc
    return np.concatenate(parts)


def apply_full(pt, refs: dict, outs: list, tensors: dict, layout, jac_ok: dict) -> None:
    """check_full's diagnostics and calls into the point's report."""
    if any(d.code in ("op_error", "wrong_shape") for d in pt.diags):
        return
    res = check_full(pt, refs, outs, tensors, layout, jac_ok)
    for d in res.diagnostics:
        (pt.note if d.code == "forward_ad_unsupported" else pt.fail)(d.code, d.message, d.wrt)
    pt.extra["forward_ad"] = "checked" if res.ran else "unsupported"
    pt.count("forward_ad", res.calls)


def apply_projections(pt, w: str, projections: list, s_fd: np.ndarray, allowed: np.ndarray, used: int = 1) -> None:
    """Fast mode: v . (J u) by forward AD for the first `used` projections of input w
    against their finite differences (the same allowed error as the backward's)."""
    spec, opts = pt.prep.spec, pt.opts
    if pt.extra.get("forward_ad") == "unsupported":
        return
    for k, p in enumerate(projections[:used]):
        try:
            got = check_projection(spec, pt.arrays, opts.dtype, opts.device, w, p.u[w].again, p.v.again)
        except Unsupported as exc:
            pt.note("forward_ad_unsupported", unsupported_message(exc))
            pt.extra["forward_ad"] = "unsupported"
            return
        except OpRaised as exc:
            pt.fail("op_error", f"the op raised in {exc.phase}: {exc.message}")
            return
        pt.count("forward_ad")
        pt.extra["forward_ad"] = "checked"
        if not abs(got - s_fd[k]) <= allowed[k]:
            pt.fail("jvp_mismatch", (
                f"d/d{w}: forward-mode AD (the op's jvp) gives v . (J u) = {got:.10g} for random projection #{k}, "
                f"finite differences {s_fd[k]:.10g} (allowed {allowed[k]:.3g})"), w)
            return
