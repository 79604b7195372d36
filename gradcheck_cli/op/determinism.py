"""Determinism: the op run twice at the same point, its forwards and three backward
calls compared within what rounding allows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradcheck_cli.op.directions import Direction
from gradcheck_cli.op.jacobian import EPS
from gradcheck_cli.op.memory import PIECE, SMALL_PIECE
from gradcheck_cli.op.runner import OpRaised, call, flat_numpy, make_tensors, unflatten, vjp
from gradcheck_cli.op.verdict import input_label
from gradcheck_cli.report import Diagnostic


@dataclass
class DeterminismOutcome:
    diagnostics: list = field(default_factory=list)
    record: dict | None = None  # {"runs": 3, "max_spread": {input: spread}, "forward_spread": spread}
    calls: int = 0
    usable: bool = True  # False: the op raised or misbehaved on its second forward; no graph is left
    # with keep_gradient: v^T J on the graph left (the second forward's) for the random
    # grad_output v = direction (fast mode's first projection and its first dense grad_output),
    # the inputs' gradients end to end in --wrt order (flat_gradient)
    direction: Direction | None = None
    gradient: np.ndarray | None = None
    vjps: Any = None  # batched.VJPMany on the graph left, batching already checked by the repeat


def flat_gradient(grads: dict, wrt: list) -> np.ndarray:
    """The inputs' flat gradients end to end, in `wrt` order (the one input's, uncopied)."""
    return np.concatenate([grads[w] for w in wrt]) if len(wrt) > 1 else grads[wrt[0]]


def rounding_allowed(g: np.ndarray, tol: dict, dtype: str) -> np.ndarray:
    """What two runs of the same backward may differ by, per element of its result g:
    atol + rtol |g| + a term of the largest |g| (reduction order), at least 16 ulps of dtype."""
    scale = float(np.max(np.abs(g))) if g.size and np.all(np.isfinite(g)) else 0.0
    allowed = np.abs(g)
    allowed *= tol["rtol"]
    np.add(tol["atol"], allowed, out=allowed)
    allowed += max(tol["scale"], 16 * EPS[dtype]) * scale
    return allowed


def determinism(spec, arrays: dict, dtype: str, device: str, outs: list, tensors: dict, tol: dict,
                seed: int, inspect_inputs=None, keep_gradient: bool = False) -> DeterminismOutcome:
    """The op run twice on the same inputs: the two forwards must agree, and so must three
    backward calls with one random grad_output v: on the first forward's graph, on the
    second's, and on the second's again (within rounding_allowed).

    Run before every other check, so that no more than the checks' usual few vectors are
    ever held: the first graph's backward frees what its forward saved, the second forward
    follows, and `outs` and `tensors` are then replaced in place by the second forward's
    (the first one's memory is released, and every later check uses the second graph).
    Raises OpRaised when the first graph's backward raises (as any check's would); a
    second forward that raises or returns something else is a failed check, and then
    `usable` is False.  `inspect_inputs(tensors)` is called on the first forward's inputs
    after its backward, before they are released (the mutation check).  `keep_gradient`:
    the outcome keeps the direction and the second graph's gradient for it (a backward call
    the later checks need not make again)."""
    from gradcheck_cli.op.runner import BadOutput, grads_numpy

    res = DeterminismOutcome()
    wrt = list(spec.wrt)
    m = sum(int(o.numel()) for o in outs)
    direction = Direction(np.random.default_rng([seed, 11]), m, uniform=True)

    def run(graph, leaves, retain=True):
        res.calls += 1
        inputs = [leaves[w] for w in wrt]
        got = grads_numpy(vjp(graph, inputs, unflatten(direction.again(), graph), retain_graph=retain), inputs)
        return {w: (np.zeros(t.numel()) if g is None else g) for w, g, t in zip(wrt, got, inputs)}

    first = run(outs, tensors, retain=False)  # the first graph's last use: autograd frees what it saved
    if inspect_inputs is not None:
        inspect_inputs(tensors)
    try:
        second_tensors = make_tensors(spec, arrays, dtype, device)
        second = call(spec, second_tensors, "forward (run again)")
        if [tuple(o.shape) for o in second] != [tuple(o.shape) for o in outs]:
            raise BadOutput(f"its outputs have other shapes than the first time: {[list(o.shape) for o in second]} "
                            f"instead of {[list(o.shape) for o in outs]}")
    except OpRaised as exc:
        res.diagnostics.append(Diagnostic("op_error", f"the op raised when run again on the same inputs "
                                                      f"({exc.phase}): {exc.message}"))
        res.usable = False
        return res
    except BadOutput as exc:
        res.diagnostics.append(Diagnostic("bad_output", f"run again on the same inputs, the op misbehaves: {exc}"))
        res.usable = False
        return res
    a, b = flat_numpy(outs, copy=False), flat_numpy(second, copy=False)
    forward_diff = value_spread(a, b)
    scale = max((float(np.max(np.abs(p), initial=0.0, where=np.isfinite(p))) for p in
                 (b[i:i + PIECE] for i in range(0, b.size, PIECE))), default=0.0)
    del a, b
    outs[:] = second  # from here on the first forward's outputs are released
    tensors.clear()
    tensors.update(second_tensors)
    del second, second_tensors
    # rounding from a reduction order: 64 ulps of float32 (or of the op's dtype, when coarser)
    if not forward_diff <= 64 * max(EPS[dtype], 2.0**-23) * max(scale, 1e-30):  # nan (one side only) included
        res.diagnostics.append(Diagnostic(
            "nondeterministic", f"the forward gives different outputs on identical inputs (spread {forward_diff:.3g})"))
    ref = run(outs, tensors)  # the second graph's: the reference
    first = {w: _differing(g, ref[w]) for w, g in first.items()}  # the first run, kept where it differs
    plain_ref = flat_gradient(ref, wrt)
    third = _repeat(res, outs, tensors, wrt, direction, ref, plain_ref, run)
    spreads = {}
    for w in wrt:
        g = ref[w]
        idx, vals = first[w]
        spread, j = _compare(g, third[w], idx, vals, tol, dtype)
        spreads[w] = spread
        if j is not None:
            k = np.searchsorted(idx, j)
            first_j = vals[k] if k < idx.size and idx[k] == j else g[j]
            shape = tuple(tensors[w].shape)
            res.diagnostics.append(Diagnostic("nondeterministic", (
                f"d/d{w}: the backward gives different results on the same inputs and grad_output (spread "
                f"{spread:.3g}; first forward, second forward, second again at {input_label(w, shape, j)}: "
                f"{first_j:.10g}, {g[j]:.10g}, {third[w][j]:.10g})"), w))
        elif spread > 0:
            res.diagnostics.append(Diagnostic("nondeterministic_within_tolerance", (
                f"d/d{w}: repeated backward runs differ by up to {spread:.3g} (within tolerance: rounding from "
                "a non-deterministic reduction order, e.g. atomic adds)"), w))
    res.record = {"runs": 3, "max_spread": spreads, "forward_spread": forward_diff}
    if keep_gradient:
        res.direction, res.gradient = direction, plain_ref
    return res


def _compare(g: np.ndarray, third: np.ndarray, idx: np.ndarray, vals: np.ndarray, tol: dict,
             dtype: str) -> tuple[float, int | None]:
    """(spread, first element out of rounding_allowed or None) of three runs: the reference
    g, the repeat `third`, and the first run (equal to g except at idx, where it is vals).
    Non-finite reference elements are left to the nonfinite check; a nan difference makes
    the spread nan (and the element fails).  A piece at a time: rounding_allowed's terms,
    the differences and their verdicts never exist at full size."""
    scale = max(float(g.max()), -float(g.min())) if g.size and bool(np.isfinite(g).all()) else 0.0
    floor = tol["atol"] + max(tol["scale"], 16 * EPS[dtype]) * scale
    spread, first_bad, nan = 0.0, None, False
    with np.errstate(invalid="ignore"):
        for a in range(0, g.size, SMALL_PIECE):  # no full-size temporaries beside the runs compared
            b = min(g.size, a + SMALL_PIECE)
            gp = g[a:b]
            diff = np.abs(third[a:b] - gp)
            lo, hi = np.searchsorted(idx, [a, b])
            if hi > lo:
                here = idx[lo:hi] - a
                diff[here] = np.maximum(diff[here], np.abs(vals[lo:hi] - gp[here]))
            diff[~np.isfinite(gp)] = 0.0  # non-finite entries: reported as nonfinite
            nan = nan or bool(np.isnan(diff).any())
            spread = max(spread, float(np.fmax.reduce(diff)))
            if first_bad is None:
                bad = np.flatnonzero(~(diff <= np.abs(gp) * tol["rtol"] + floor))
                first_bad = a + int(bad[0]) if bad.size else None
    return (float("nan") if nan else spread), first_bad


def _repeat(res: DeterminismOutcome, outs: list, tensors: dict, wrt: list, direction: Direction, ref: dict,
            plain_ref: np.ndarray, run) -> dict:
    """The second graph's backward again: as a batched call (a batch of one, as vmap over
    grad_outputs and is_grads_batched run it) where the backward runs under vmap, so the
    repeat also checks batching (res.vjps, for the later checks: batched_grad_mismatch when
    it differs).  When the batched repeat differs from the reference, a plain repeat tells a
    batching fault (the plain one agrees) from non-determinism (it does not either)."""
    from gradcheck_cli.op.batched import VJPMany

    vjps = VJPMany(outs, [tensors[w] for w in wrt])
    res.vjps = vjps
    got = vjps.batched_one(direction.again())
    if got is not None:
        res.calls += 1
        if vjps.agrees(got, plain_ref):
            vjps.settle(got, plain_ref, agreed=True)
            offsets = np.cumsum([0] + [ref[w].size for w in wrt])
            return {w: got[offsets[k]:offsets[k + 1]] for k, w in enumerate(wrt)}
    third = run(outs, tensors)
    if got is not None and vjps.agrees(flat_gradient(third, wrt), plain_ref):
        vjps.settle(got, plain_ref, agreed=False)  # deterministic, so the batched call is what differs
    return third


def _differing(a: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) where a is not ref (nan counts as differing); elsewhere a is ref."""
    idx = np.flatnonzero(a != ref)
    return idx, a[idx]


def value_spread(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b|: 0 where both are equal (the same infinity, or both nan), nan where
    one is nan and the other is not, inf where one is infinite and the other is not."""
    if a.shape != b.shape:
        return float("inf")
    worst = 0.0
    with np.errstate(invalid="ignore"):
        for start in range(0, a.size, PIECE):  # a piece at a time: no full-size temporaries
            x, y = a[start:start + PIECE], b[start:start + PIECE]
            d = np.abs(x - y)
            d[(x == y) | (np.isnan(x) & np.isnan(y))] = 0.0
            if np.isnan(d).any():
                return float("nan")
            worst = max(worst, float(d.max()))
    return worst
