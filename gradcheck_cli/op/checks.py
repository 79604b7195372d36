"""Checks on the backward beyond the Jacobian: grad_output variety (determinism.py,
mutation.py and order2.py hold the others).

grad_output variety exists because a backward can be right on the one-hot rows of the
Jacobian and still be wrong in training: it may add a term that does not scale with
grad_output (zero must give zero), ignore grad_output (two different ones give the same
answer), be non-linear in it (a random dense one disagrees with the Jacobian), or read
grad_output's memory as if it were contiguous (a transposed or strided view gives a
different answer than the same values laid out contiguously: the blind spot of
torch.autograd.gradcheck, pytorch #194719).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradcheck_cli.op.directions import Direction
from gradcheck_cli.op.memory import SMALL_PIECE
from gradcheck_cli.op.runner import OpRaised, grads_numpy, unflatten, vjp
from gradcheck_cli.op.undefined import undefined_checks
from gradcheck_cli.op.verdict import FD_SAFETY, input_label
from gradcheck_cli.report import Diagnostic

LARGE = 4_000_000  # input + output elements from which the checks trade a backward call for a vector held


@dataclass
class ReferenceJacobian:
    """One input's reference Jacobian as entries, with the allowed error per entry and a
    floor for every entry not listed (exactly 0 in the reference)."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    allowed: np.ndarray
    floor_row: np.ndarray  # (m,)
    floor_col: np.ndarray  # (n,)
    n: int
    noise: np.ndarray | None = None  # (m,) rounding of one output value (finite differences)
    steps: np.ndarray | None = None  # (n,) finite-difference steps

    def vjp(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expected v^T J and the allowed error of each element."""
        expected = np.bincount(self.cols, weights=v[self.rows] * self.values, minlength=self.n)
        av = np.abs(v)
        allowed = (np.bincount(self.cols, weights=av[self.rows] * self.allowed, minlength=self.n)
                   + float(av @ self.floor_row) + float(av.sum()) * self.floor_col)
        if self.noise is not None:  # a column never stepped (a non-finite input element) is not compared
            with np.errstate(divide="ignore", invalid="ignore"):
                fd_term = np.where(self.steps > 0, FD_SAFETY * float(av @ self.noise) / self.steps, np.inf)
            allowed = allowed + fd_term
        return expected, allowed


@dataclass
class VJPOutcome:
    passed: bool = True
    diagnostics: list = field(default_factory=list)
    calls: int = 0


def _grads(outs, inputs, vec_list, phase="backward"):
    return grads_numpy(vjp(outs, inputs, vec_list, phase=phase), inputs)


def noncontiguous_layouts(t, only: str | None = None) -> list:
    """(name, view) pairs: the same values as `t` in a transposed and in a strided layout
    (`only`: just the one of that name)."""
    import torch

    out = []
    shape = tuple(t.shape)
    if only in (None, "transposed") and _has_layout(t, "transposed"):
        buf = torch.empty(shape[:-2] + (shape[-1], shape[-2]), dtype=t.dtype, device=t.device)
        view = buf.transpose(-1, -2)
        view.copy_(t)
        out.append(("transposed", view))
    if only in (None, "strided") and _has_layout(t, "strided"):
        d = max(d for d, s in enumerate(shape) if s > 1)  # the last dimension of more than one element
        big = list(shape)
        big[d] *= 2
        buf = torch.zeros(big, dtype=t.dtype, device=t.device)
        view = buf[(slice(None),) * d + (slice(None, None, 2),)]
        view.copy_(t)
        out.append(("strided", view))
    return [(name, v) for name, v in out if not v.is_contiguous()]


def _has_layout(t, kind: str) -> bool:
    """Whether noncontiguous_layouts(t, kind) gives a view (from the shape alone)."""
    shape = tuple(t.shape)
    if kind == "transposed":
        return len(shape) >= 2 and shape[-1] > 1 and shape[-2] > 1
    return any(s > 1 for s in shape)


def vjp_checks(outs: list, inputs: list, wrt: list, expect, jac_ok: dict, m: int, tol: dict,
               rng: np.random.Generator, layout, known: tuple | None = None) -> VJPOutcome:
    """grad_output variety on the forward graph `outs` -> `inputs` (determinism, which needs
    a second forward, runs before every check: see determinism).

    `expect(w, v, g)` gives the reference v^T J for input w (None when there is no full
    reference, as in fast mode) and the allowed error per element, g being autograd's
    answer; an `expect` with the attribute uses_v = False may be given v = None where v
    would have to be drawn again, and then no one-hot grad_outputs are run here (with
    nothing to compare them with; fast mode's sampled rows are its one-hot grad_outputs).
    `known`: (d1, g1, d2, g2), two random directions and their gradients (input -> array)
    another check already computed on this graph: the two dense grad_outputs, at no call."""
    res = VJPOutcome()
    sizes = [x.numel() for x in inputs]

    def split(g_list):
        return {w: (np.zeros(n) if g is None else g) for w, g, n in zip(wrt, g_list, sizes)}

    def fail(code, message, w=None):
        res.passed = False
        res.diagnostics.append(Diagnostic(code, message, w))

    def run(v, phase="backward"):
        res.calls += 1
        return split(_grads(outs, inputs, unflatten(v, outs), phase))

    def label(w, j):
        return input_label(w, tuple(inputs[wrt.index(w)].shape), j)

    try:
        # held throughout: g1, the gradient for v1 (the later checks compare with it); v1 and
        # v2 are not held during backward calls (drawn again where a reference needs them),
        # the other gradients are reduced as soon as they come back: a 1e6-element op holds
        # a few vectors, not ten
        zero = _offending(run(np.zeros(m)), tol["atol"])
        if known is not None:
            d1, g1, d2, g2 = known
            known = None  # at 1e6 elements g1 is released below (LARGE): nothing else may hold it
        else:
            d1 = Direction(rng, m)
            g1 = run(d1.draw(rng))
            d2 = Direction(rng, m)
            g2 = run(d2.draw(rng))
        uses_v = getattr(expect, "uses_v", True)
        v1, v2 = (d1.again(), d2.again()) if uses_v else (None, None)
        for w in wrt:
            # 0 * inf is nan: where the gradient itself is not finite, nonfinite already says so
            idx, vals = zero[w]
            keep = np.isfinite(g1[w][idx])
            idx, vals = idx[keep], vals[keep]
            if idx.size:
                k = int(np.argmax(np.where(np.isnan(vals), np.inf, np.abs(vals))))
                fail("zero_grad_output", (
                    f"with grad_output = 0 the backward returns {vals[k]:.6g} for d/d{label(w, int(idx[k]))} (it "
                    "must be exactly 0: the gradient has a term that does not scale with grad_output)"), w)
        del zero
        for w in wrt:
            e1, a1 = expect(w, v1, g1[w])
            fin = np.isfinite(g1[w]) & np.isfinite(g2[w])  # non-finite entries are reported as nonfinite
            if e1 is None:
                differ = True
            else:
                e2, _ = expect(w, v2, g2[w])
                differ = bool(np.any((np.abs(e1 - e2) > a1) & fin))
                del e2
            same = bool(np.all((g1[w] == g2[w]) | ~fin))  # equal wherever both are finite
            if same and differ and np.any((g1[w] != 0) & fin):
                fail("grad_output_ignored", (
                    f"d/d{w}: two different random grad_outputs give the same gradient: the backward ignores "
                    "grad_output (it returns the local derivative without multiplying by it)"), w)
            elif e1 is not None and jac_ok.get(w, False):
                bad = ~(np.abs(g1[w] - e1) <= a1) & fin
                if bad.any():
                    j = int(np.flatnonzero(bad)[0])
                    fail("vjp_mismatch", (
                        f"d/d{w}: with a random dense grad_output the backward gives {g1[w][j]:.10g} at "
                        f"{label(w, j)} where the Jacobian gives {e1[j]:.10g}, although its one-hot rows agree: "
                        "the backward is not linear in grad_output"), w)
            del e1, a1, fin
        del g2, v2, v1
        if uses_v:
            _one_hot(res, run, expect, wrt, jac_ok, m, rng, label, fail)
        # its own generator: the draws of the checks after it stay as they were
        found, calls = undefined_checks(outs, inputs, wrt, expect, jac_ok, layout, np.random.default_rng(m), tol)
        res.calls += calls
        for d in found:
            fail(d.code, d.message, d.wrt)
    except OpRaised as exc:
        fail("op_error", f"the op raised in {exc.phase}: {exc.message}")
        return res
    # at 1e6+ elements g1 is not held through the non-contiguous backward calls (their strided
    # grad_output is twice the output's size): computed again after each, one more call
    again = (lambda: run(d1.again())) if sum(sizes) + m >= LARGE else None
    _noncontiguous(res, outs, inputs, wrt, d1, g1, expect, split, fail, label, again)
    return res


def _worst_outside(g: np.ndarray, ref: np.ndarray, allowed: np.ndarray) -> int | None:
    """The element where |g - ref| exceeds `allowed` the most (nan the worst), among those
    where ref is finite; None when none does.  A piece at a time."""
    worst, where = -1.0, None
    with np.errstate(invalid="ignore"):
        for a in range(0, g.size, SMALL_PIECE):  # no full-size temporaries at 1e6 elements
            b = a + SMALL_PIECE
            diff = np.abs(g[a:b] - ref[a:b])
            bad = ~(diff <= allowed[a:b]) & np.isfinite(ref[a:b])
            if bad.any():
                score = np.where(bad, np.nan_to_num(diff, nan=np.inf), -1.0)
                k = int(np.argmax(score))
                if score[k] > worst:
                    worst, where = float(score[k]), a + k
    return where


def _offending(g: dict, atol: float) -> dict:
    """Per input: (indices, values) of a gradient for grad_output = 0 that are not within
    atol of 0 (nan included); nothing is held for a backward that is right there."""
    out = {}
    for w, vec in g.items():
        idx = np.flatnonzero(~(np.abs(vec) <= atol))
        out[w] = (idx, vec[idx])
    return out


def _one_hot(res, run, expect, wrt, jac_ok, m, rng, label, fail) -> None:
    for o in rng.choice(m, size=min(2, m), replace=False):
        v = np.zeros(m)
        v[o] = 1.0
        g = run(v)
        for w in wrt:
            e, a = expect(w, v, g[w])
            bad = ~(np.abs(g[w] - e) <= a) if e is not None and jac_ok.get(w, False) else None
            if bad is not None and bad.any():
                j = int(np.flatnonzero(bad)[0])
                fail("one_hot_mismatch", (
                    f"a one-hot grad_output at output {int(o)} gives {g[w][j]:.10g} for {label(w, j)}, the "
                    f"Jacobian {e[j]:.10g}: the backward misroutes grad_output"), w)
            del e, a, bad
        del g, v  # nothing of this call is held through the next backward call


def _noncontiguous(res, outs, inputs, wrt, d1, g1, expect, split, fail, label, again=None) -> None:
    """The backward with v1 laid out transposed and strided must give g1.  With `again`
    (a call that computes g1 anew), g1's arrays are released during those calls and
    computed again after each."""
    from gradcheck_cli.op.runner import grads_numpy

    for kind in ("transposed", "strided"):
        if not any(_has_layout(o, kind) for o in outs):
            continue
        variants, changed = [], False
        for t in unflatten(d1.again(), outs):  # the views copy v1's values: v1 itself is not kept
            layouts = dict(noncontiguous_layouts(t, kind))
            if kind in layouts:
                variants.append(layouts[kind])
                changed = True
            else:
                variants.append(t)
            del layouts, t
        if not changed:
            continue
        res.calls += 1
        if again is not None:
            g1.clear()
        try:
            g = split(grads_numpy(vjp(outs, inputs, variants, phase=f"backward ({kind} grad_output)"), inputs))
        except OpRaised as exc:
            fail("noncontiguous_grad_output", (
                f"the backward raises when grad_output is a {kind} (non-contiguous) view, although it runs on the "
                f"same values laid out contiguously: {exc.message}"))
            g = None
        finally:
            del variants  # the strided layout is twice the output's size
        if again is not None:
            try:
                g1.update(again())
            except OpRaised as exc:
                fail("op_error", f"the op raised when its backward ran again on the same inputs: {exc.message}")
                return
        if g is None:
            continue
        v1 = d1.again() if getattr(expect, "uses_v", True) else None
        for w in wrt:
            _, allowed = expect(w, v1, g1[w])
            j = _worst_outside(g[w], g1[w], allowed)
            del allowed
            if j is not None:
                fail("noncontiguous_grad_output", (
                    f"d/d{w}: a {kind} (non-contiguous) grad_output gives {g[w][j]:.10g} at "
                    f"{label(w, j)} where the same values laid out "
                    f"contiguously give {g1[w][j]:.10g}: the backward reads grad_output's memory as if it were "
                    "contiguous (e.g. .view(-1), as_strided or raw pointers); call .contiguous() first"), w)
        del g, v1
