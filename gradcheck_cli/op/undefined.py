"""Undefined grad_outputs (torch.autograd.gradcheck's check_undefined_grad bug class).

When a loss uses only some outputs of a multi-output op, autograd hands the op's backward
an undefined gradient (None, or zeros where ctx materializes them) for the others.  A
backward written for the all-defined case crashes there (`None * x`), or returns garbage.
Checked: every output's gradient undefined at once (the gradients must be None or zero),
and, for several outputs, each output's gradient undefined in turn with random
grad_outputs for the others (the result must be v^T J with that output's part of v at 0,
where a reference Jacobian exists).
"""

from __future__ import annotations

import numpy as np

from gradcheck_cli.op.runner import describe_exception, engine_grad, grads_numpy, unflatten, user_failures
from gradcheck_cli.report import Diagnostic

MAX_OUTPUTS = 8  # outputs undefined one at a time (more are sampled)


def undefined_checks(outs: list, inputs: list, wrt: list, expect, jac_ok: dict, layout,
                     rng: np.random.Generator, tol: dict) -> tuple[list, int]:
    """(diagnostics, backward calls)."""
    import torch

    live = [k for k, o in enumerate(outs) if o.requires_grad]
    if not live:
        return [], 0
    undefine = torch._C._functions.UndefinedGrad()
    diags: list = []
    calls = 0
    # 1. every grad_output undefined
    try:
        got = _grad([undefine(outs[k]) for k in live], inputs, [torch.ones_like(outs[k]) for k in live])
        calls += 1
    except user_failures() as exc:
        return [_crash(exc, "every output's gradient is undefined (None)")], 1
    for w, g in zip(wrt, got):
        if g is not None and np.any(g != 0):
            j = int(np.flatnonzero(g != 0)[0])
            diags.append(Diagnostic("undefined_grad", (
                f"d/d{w}: with every grad_output undefined (None: the op's outputs unused by the loss) the backward "
                f"returns {g[j]:.6g} at element {j}; it must return None or zeros"), w))
    # 2. several outputs: each one undefined in turn, the others random
    if len(live) < 2:
        return diags, calls
    sizes = [o.numel() for o in outs]
    offsets = np.cumsum([0] + sizes)
    for k in sorted(rng.choice(live, size=min(len(live), MAX_OUTPUTS), replace=False)):
        v = rng.standard_normal(int(offsets[-1]))
        v[offsets[k]:offsets[k + 1]] = 0.0
        vecs = unflatten(v, outs)
        try:
            got = _grad([undefine(outs[i]) if i == k else outs[i] for i in live], inputs, [vecs[i] for i in live])
            calls += 1
        except user_failures() as exc:
            diags.append(_crash(exc, f"output {k}'s gradient is undefined (None) and the others' are not"))
            return diags, calls + 1
        for w, g in zip(wrt, got):
            expected, allowed = expect(w, v, g if g is not None else np.zeros(1))
            if expected is None or not jac_ok.get(w, False):
                continue
            g = np.zeros_like(expected) if g is None else g
            bad = ~(np.abs(g - expected) <= allowed) & np.isfinite(expected)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                diags.append(Diagnostic("undefined_grad", (
                    f"d/d{w}: with output {k}'s gradient undefined (None) and random grad_outputs for the others, the "
                    f"backward gives {g[j]:.10g} at element {j} where the Jacobian gives {expected[j]:.10g}: an "
                    "undefined gradient must count as zero"), w))
                return diags, calls
    return diags, calls


def _grad(outs: list, inputs: list, grad_outputs: list) -> list:
    return grads_numpy(engine_grad(outs, inputs, grad_outputs), inputs)


def _crash(exc: BaseException, when: str) -> Diagnostic:
    return Diagnostic("undefined_grad", (
        f"the backward raises when {when}, as it is whenever a loss uses only some of the op's outputs: "
        f"{describe_exception(exc)}. Handle None grad_outputs (or leave ctx.set_materialize_grads on)"))
