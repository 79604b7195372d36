"""Checks on the backward beyond the Jacobian: grad_output variety, determinism, input
mutation, and double backward (--order 2).

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

from gradcheck_cli.ops_compare import FD_SAFETY, input_label
from gradcheck_cli.ops_jacobian import EPS, Direction, step_sizes
from gradcheck_cli.ops_runner import OpRaised, call, flat_numpy, make_tensors, owner, vjp
from gradcheck_cli.report import Diagnostic

PIECE = 1 << 18  # elements handled at a time where a full-size temporary would cost memory
LARGE = 1_000_000  # input + output elements from which the checks trade a backward call for a vector held
MAX_ORDER2_ELEMENTS = 160  # flattened inputs for a full double-backward matrix; more are sampled
ORDER2_SAMPLE = 48


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
        if self.noise is not None:
            allowed = allowed + FD_SAFETY * float(av @ self.noise) / self.steps
        return expected, allowed


@dataclass
class VJPOutcome:
    passed: bool = True
    diagnostics: list = field(default_factory=list)
    calls: int = 0


def _grads(outs, inputs, vec_list, phase="backward"):
    from gradcheck_cli.ops_runner import grads_numpy

    return grads_numpy(vjp(outs, inputs, vec_list, phase=phase), inputs)


def _as_tensors(v: np.ndarray, outs: list) -> list:
    from gradcheck_cli.ops_runner import unflatten

    return unflatten(v, outs)


def noncontiguous_layouts(t, only: str | None = None) -> list:
    """(name, view) pairs: the same values as `t` in a transposed and in a strided layout
    (`only`: just the one of that name)."""
    import torch

    out = []
    shape = tuple(t.shape)
    if only in (None, "transposed") and t.ndim >= 2 and shape[-1] > 1 and shape[-2] > 1:
        buf = torch.empty(shape[:-2] + (shape[-1], shape[-2]), dtype=t.dtype, device=t.device)
        view = buf.transpose(-1, -2)
        view.copy_(t)
        out.append(("transposed", view))
    dims = [d for d, s in enumerate(shape) if s > 1]
    if only in (None, "strided") and dims:
        d = dims[-1]
        big = list(shape)
        big[d] *= 2
        buf = torch.zeros(big, dtype=t.dtype, device=t.device)
        view = buf[(slice(None),) * d + (slice(None, None, 2),)]
        view.copy_(t)
        out.append(("strided", view))
    return [(name, v) for name, v in out if not v.is_contiguous()]


def vjp_checks(outs: list, inputs: list, wrt: list, expect, jac_ok: dict, m: int, tol: dict,
               rng: np.random.Generator, layout) -> VJPOutcome:
    """grad_output variety on the forward graph `outs` -> `inputs` (determinism, which needs
    a second forward, runs before every check: see determinism).

    `expect(w, v, g)` gives the reference v^T J for input w (None when there is no full
    reference, as in fast mode) and the allowed error per element, g being autograd's
    answer; an `expect` with the attribute uses_v = False may be given v = None where v
    would have to be drawn again."""
    res = VJPOutcome()
    sizes = [x.numel() for x in inputs]

    def split(g_list):
        return {w: (np.zeros(n) if g is None else g) for w, g, n in zip(wrt, g_list, sizes)}

    def fail(code, message, w=None):
        res.passed = False
        res.diagnostics.append(Diagnostic(code, message, w))

    def run(v, phase="backward"):
        res.calls += 1
        return split(_grads(outs, inputs, _as_tensors(v, outs), phase))

    def label(w, j):
        return input_label(w, tuple(inputs[wrt.index(w)].shape), j)

    try:
        # held throughout: g1, the gradient for v1 (the later checks compare with it); v1 and
        # v2 are not held during backward calls (drawn again where a reference needs them),
        # the other gradients are reduced as soon as they come back: a 1e6-element op holds
        # a few vectors, not ten
        zero = _offending(run(np.zeros(m)), tol["atol"])
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
        _one_hot(res, run, expect, wrt, jac_ok, m, rng, label, fail)
    except OpRaised as exc:
        fail("op_error", f"the op raised in {exc.phase}: {exc.message}")
        return res
    # at 1e6+ elements g1 is not held through the non-contiguous backward calls (their strided
    # grad_output is twice the output's size): computed again after each, one more call
    again = (lambda: run(d1.again())) if sum(sizes) + m >= LARGE else None
    _noncontiguous(res, outs, inputs, wrt, d1, g1, expect, split, fail, label, again)
    return res


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
    from gradcheck_cli.ops_runner import grads_numpy

    for kind in ("transposed", "strided"):
        variants, changed = [], False
        for t in _as_tensors(d1.again(), outs):  # the views copy v1's values: v1 itself is not kept
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
            diff = g[w] - g1[w]
            np.abs(diff, out=diff)
            bad = ~(diff <= allowed) & np.isfinite(g1[w])
            del allowed
            if bad.any():
                j = int(np.argmax(np.where(bad, np.nan_to_num(diff, nan=np.inf), -1)))
                fail("noncontiguous_grad_output", (
                    f"d/d{w}: a {kind} (non-contiguous) grad_output gives {g[w][j]:.10g} at "
                    f"{label(w, j)} where the same values laid out "
                    f"contiguously give {g1[w][j]:.10g}: the backward reads grad_output's memory as if it were "
                    "contiguous (e.g. .view(-1), as_strided or raw pointers); call .contiguous() first"), w)
            del diff, bad
        del g, v1


@dataclass
class DeterminismOutcome:
    diagnostics: list = field(default_factory=list)
    record: dict | None = None  # {"runs": 3, "max_spread": {input: spread}, "forward_spread": spread}
    calls: int = 0
    usable: bool = True  # False: the op raised or misbehaved on its second forward; no graph is left


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
                seed: int, inspect_inputs=None) -> DeterminismOutcome:
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
    after its backward, before they are released (the mutation check)."""
    from gradcheck_cli.ops_runner import BadOutput, grads_numpy

    res = DeterminismOutcome()
    wrt = list(spec.wrt)
    m = sum(int(o.numel()) for o in outs)
    direction = Direction(np.random.default_rng([seed, 11]), m)

    def run(graph, leaves, retain=True):
        res.calls += 1
        inputs = [leaves[w] for w in wrt]
        got = grads_numpy(vjp(graph, inputs, _as_tensors(direction.again(), graph), retain_graph=retain), inputs)
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
    forward_diff = _spread(a, b)
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
    third = run(outs, tensors)
    spreads = {}
    for w in wrt:
        g = ref[w]
        allowed = rounding_allowed(g, tol, dtype)
        idx, vals = first[w]
        diff = np.abs(third[w] - g)
        diff[idx] = np.maximum(diff[idx], np.abs(vals - g[idx]))
        diff[~np.isfinite(g)] = 0.0  # non-finite entries: reported as nonfinite
        spread = float(np.nanmax(diff)) if diff.size else 0.0
        if np.any(np.isnan(diff)):
            spread = float("nan")
        spreads[w] = spread
        bad = ~(diff <= allowed)
        del diff, allowed
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
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
        del bad
    res.record = {"runs": 3, "max_spread": spreads, "forward_spread": forward_diff}
    return res


def _differing(a: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) where a is not ref (nan counts as differing); elsewhere a is ref."""
    idx = np.flatnonzero(a != ref)
    return idx, a[idx]


def _spread(a: np.ndarray, b: np.ndarray) -> float:
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


# ---- mutation --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pristine:
    """What input tensors held when they were made, without a copy: the float64 arrays
    make_tensors built them from, and the dtype it rounded them to."""

    arrays: dict
    dtype: str


def snapshot(tensors: dict, arrays: dict, dtype: str) -> Pristine:
    """The tensors' values now, to compare with after the op ran: a reference to the arrays
    and dtype make_tensors built them from, which costs nothing."""
    return Pristine(arrays, dtype)


def _same(now, before) -> bool:
    import torch

    return torch.equal(torch.nan_to_num(now, nan=0.5), torch.nan_to_num(before, nan=0.5)) \
        and torch.equal(torch.isnan(now), torch.isnan(before))


def _same_numpy(now: np.ndarray, before: np.ndarray) -> bool:
    """_same for float64 arrays: equal, nan where nan (and inf where the largest float was,
    as nan_to_num makes them equal there too)."""
    big = np.finfo(np.float64).max
    for start in range(0, now.size, PIECE):
        a, b = now[start:start + PIECE], before[start:start + PIECE]
        with np.errstate(invalid="ignore"):
            ok = (a == b) | (np.isnan(a) & np.isnan(b))
        if not ok.all():
            fa = np.nan_to_num(a[~ok], nan=0.5, posinf=big, neginf=-big)
            fb = np.nan_to_num(b[~ok], nan=0.5, posinf=big, neginf=-big)
            if not (np.array_equal(fa, fb) and np.array_equal(np.isnan(a[~ok]), np.isnan(b[~ok]))):
                return False
    return True


def _same_as_array(t, arr: np.ndarray, dtype: str) -> bool:
    """Whether tensor t still holds torch.tensor(arr, dtype), compared a piece at a time."""
    import torch

    from gradcheck_cli.ops_runner import torch_dtype

    td = torch_dtype(dtype)
    now = t.detach()
    if tuple(now.shape) != tuple(np.shape(arr)) or now.dtype != td:
        return False
    now, flat = now.reshape(-1), np.ravel(arr)
    own = owner(arr) if td == torch.float64 and now.device.type == "cpu" else None
    if own is not None:  # read in torch: .numpy() would give a copy-on-write clone a copy of its own
        own = own.reshape(-1)
        return all(_same(now[a:a + PIECE], own[a:a + PIECE]) for a in range(0, flat.size, PIECE))
    if td == torch.float64 and now.device.type == "cpu":  # the array itself, no conversion: numpy is quicker
        return _same_numpy(now.numpy(), flat)
    for start in range(0, flat.size, PIECE):
        stop = min(flat.size, start + PIECE)
        if not _same(now[start:stop], torch.tensor(flat[start:stop], dtype=td, device=now.device)):
            return False
    return True


def mutated(tensors: dict, before: Pristine) -> list[str]:
    """Names whose values (or shapes) changed since the snapshot."""
    return [k for k, t in tensors.items() if not _same_as_array(t, before.arrays[k], before.dtype)]


# ---- double backward -------------------------------------------------------------------------

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
    labels = [input_label(w, tuple(np.shape(arrays[w])), j) for w, s in zip(wrt, sizes) for j in range(s)]
    sample = np.arange(n) if n <= MAX_ORDER2_ELEMENTS else np.sort(rng.choice(n, ORDER2_SAMPLE, replace=False))
    try:
        tensors = make_tensors(spec, arrays, dtype, device)
        outs = call(spec, tensors)
        inputs = [tensors[w] for w in wrt]
        vt = [t.requires_grad_(True) for t in _as_tensors(v, outs)]
        grads = vjp(outs, inputs, vt, create_graph=True, phase="backward (create_graph)")
        flat = torch.cat([(torch.zeros_like(x) if g is None else g).reshape(-1) for g, x in zip(grads, inputs)])
        rows = np.zeros((sample.size, n))
        reached = False  # whether autograd's graph of the backward reaches the inputs at all
        for r, i in enumerate(sample):
            if not flat.requires_grad:
                break
            second = torch.autograd.grad(flat[int(i)], inputs, retain_graph=True, allow_unused=True)
            reached = reached or any(g is not None for g in second)
            rows[r] = np.concatenate([np.zeros(s) if g is None else
                                      g.detach().reshape(-1).to("cpu", torch.float64).numpy()
                                      for g, s in zip(second, sizes)])
        wrt_v = None
        if jac_u is not None and flat.requires_grad:
            u = torch.as_tensor(np.concatenate([jac_u[0][w] for w in wrt]), dtype=flat.dtype, device=flat.device)
            gv = torch.autograd.grad((flat * u).sum(), vt, retain_graph=True, allow_unused=True)
            wrt_v = np.concatenate([np.zeros(o.numel()) if g is None else
                                    g.detach().reshape(-1).to("cpu", torch.float64).numpy() for g, o in zip(gv, outs)])
    except OpRaised as exc:
        return Order2Outcome(False, [Diagnostic("double_backward_error", f"double backward raised: {exc.message}")],
                             None)
    except Exception as exc:  # torch's own refusal (e.g. @once_differentiable) is the op's failure
        from gradcheck_cli.ops_runner import describe_exception

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
        diags.append(Diagnostic("double_backward_mismatch", (
            f"d/d{labels[sample[j]]} of (v^T J)[{labels[sample[i]]}]: double backward {ad_block[i, j]:.10g} vs "
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
               "labels": [labels[i] for i in sample], "wrt": wrt, "of": "sum(v * out), v a random grad_output",
               "max_abs_error": float(np.nanmax(np.abs(ad_block - fd_block))) if ad_block.size else 0.0}
    return Order2Outcome(passed, diags, hessian)


def _fd_of_backward(spec, arrays, dtype, device, v, wrt, sizes, sample, eps):
    """Columns `sample` of d(v^T J)/dx by central differences of the backward, with step halving."""
    import torch

    base = np.concatenate([np.asarray(arrays[w], dtype=np.float64).reshape(-1) for w in wrt])
    bounds = np.cumsum([0] + sizes)
    eps_dtype = EPS[dtype]
    h = step_sizes(base, "central", eps, eps_dtype)

    def backward_at(point: np.ndarray) -> np.ndarray:
        moved = dict(arrays)
        for k, w in enumerate(wrt):
            moved[w] = point[bounds[k]:bounds[k + 1]].reshape(np.shape(arrays[w]))
        tensors = make_tensors(spec, moved, dtype, device)
        outs = call(spec, tensors, "forward (finite differences of the backward)")
        grads = vjp(outs, [tensors[w] for w in wrt], _as_tensors(v, outs), phase="backward (finite differences)")
        return np.concatenate([np.zeros(s) if g is None else g.detach().reshape(-1).to("cpu", torch.float64).numpy()
                               for g, s in zip(grads, sizes)])

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
