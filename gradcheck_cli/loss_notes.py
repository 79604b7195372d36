"""bce_clamped: bce(p, y) clamps p to [1e-7, 1-1e-7] (the seed notebook's definition), so
where p lies outside that range its gradient is exactly 0 and every method agrees on
the 0: the check passes without a word, although the user almost always forgot a
sigmoid (p is a logit) or has a saturated sigmoid that bce_logits would handle.  This
says so (a warning: the gradients are right for the expression as written)."""

from __future__ import annotations

import numpy as np

from gradcheck_cli.check_notes import float64_value, sigmoid_logit
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import BCE_EPS
from gradcheck_cli.report import Diagnostic


def bce_clamped(root: ir.Node, arrays: dict) -> list[Diagnostic]:
    """A bce_clamped warning for each bce(p, y) call whose clamp is active at the point."""
    out = []
    for node in ir.preorder(root):
        if not (isinstance(node, ir.Call) and node.func == "bce"):
            continue
        p = float64_value(node.args[0], arrays)
        if p is None:
            continue
        with np.errstate(invalid="ignore"):
            clamped = (p < BCE_EPS) | (p > 1 - BCE_EPS)
        if not np.any(clamped):
            continue
        inner = node.args[0]
        shown = ", ".join(f"{v:.6g}" for v in np.asarray(p)[clamped].reshape(-1)[:3])
        where = (f"{int(np.sum(clamped))} of {np.size(p)} elements of p lie outside it (p = {shown})"
                 if np.size(p) > 1 else f"p = {shown} lies outside it")
        logit = sigmoid_logit(inner)
        if logit is not None:
            advice = (f"the sigmoid saturates there; bce_logits({logit}, {ir.to_source(node.args[1])}) takes the "
                      "logit and keeps the gradient (--loss bce_logits on the logit)")
        else:
            advice = (f"did you mean sigmoid({ir.to_source(inner)}) (bce takes a probability) or "
                      f"bce_logits({ir.to_source(inner)}, {ir.to_source(node.args[1])}) (for a logit)?")
        out.append(Diagnostic("bce_clamped", (
            f"bce clamps p to [{BCE_EPS:g}, 1-{BCE_EPS:g}] and {where}: the gradient through p is exactly 0 there, "
            f"so every method agrees on 0; {advice}"), None, "warning"))
    return out
