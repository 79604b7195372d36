"""Finite differences in float64 (or complex128 for the complex step), vectorized.

Every perturbed point is one row of a batch that torch evaluates at once.  When an
input reaches the result only elementwise (no reduction on its way), all of its
elements are perturbed together: output element o depends on one input element, so
a handful of rows give the whole Jacobian.  Otherwise each element gets its own
rows; when that would cost too much, a seeded sample of elements is differenced
(and the report says so).

Schemes (h is the step; every estimate carries an error estimate):
  central     (f(x+h) - f(x-h)) / 2h, h = cbrt(eps)·max(1,|x|); error from the 2h estimate
  forward     (f(x+h) - f(x)) / h,   h = sqrt(eps)·max(1,|x|)
  richardson  central at h, 2h, 4h extrapolated twice (error O(h^6)), h = 1e-3·max(1,|x|)
  complex     Im f(x + ih) / h, h = 1e-20·max(1,|x|): no cancellation, for analytic expressions
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gradcheck_cli.engines.torch_eval import evaluate
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS

EPS = float(np.finfo(np.float64).eps)
SCHEMES = ("auto", "central", "forward", "richardson", "complex")
DEFAULT_STEPS = {"central": EPS ** (1 / 3), "forward": EPS**0.5, "richardson": 1e-3, "complex": 1e-20}
_DELTAS = {"central": (1, -1, 2, -2), "forward": (1, 2), "richardson": (1, -1, 2, -2, 4, -4), "complex": (1j,)}
BUDGET = 30_000_000  # element evaluations for one variable before sampling
CHUNK = 4_000_000  # element evaluations per torch call
MIN_SAMPLE = 16


@dataclass
class FDResult:
    """Finite-difference derivatives of every output element w.r.t. one input."""

    scheme: str
    jacobian: np.ndarray  # (n_out, n_in); NaN where not computed
    error: np.ndarray  # (n_out, n_in) error estimate
    forward_slope: np.ndarray | None  # one-sided slopes, for kinks (None for complex)
    backward_slope: np.ndarray | None
    steps: np.ndarray  # h per input element
    sampled: np.ndarray | None  # flat indices differenced, when not all were
    kinks: list = field(default_factory=list)  # (function, column) whose kink the stencil crossed
    kink_mask: np.ndarray | None = None  # (n_out, n_in) entries whose stencil crossed a kink


def non_analytic_calls(root: ir.Node) -> list[str]:
    """Functions in the expression that complex-step differences cannot go through."""
    return sorted({n.func for n in ir.preorder(root) if isinstance(n, ir.Call) and not FUNCTIONS[n.func].analytic}
                  | ({"comparison"} if any(isinstance(n, ir.Compare) for n in ir.preorder(root)) else set()))


def resolve_scheme(requested: str, root: ir.Node) -> tuple[str, str | None]:
    """The scheme to use and, when it differs from the request, why."""
    blockers = non_analytic_calls(root)
    if requested == "auto":
        return ("complex", None) if not blockers else ("richardson", None)
    if requested == "complex" and blockers:
        return "richardson", (f"complex-step differences need a real-analytic expression, and "
                              f"{', '.join(blockers)} is not; used richardson instead")
    return requested, None


def step_sizes(scheme: str, x: np.ndarray, eps: float | None) -> np.ndarray:
    """h per element: `eps` (or the scheme's default) times max(1, |x|), made exactly
    representable so x + h - x == h."""
    rel = DEFAULT_STEPS[scheme] if eps is None else eps
    h = rel * np.maximum(1.0, np.abs(x))
    if scheme != "complex":
        h = (x + h) - x
        h = np.where(h > 0, h, rel * np.maximum(1.0, np.abs(x)))
    return h


def elementwise_only(root: ir.Node) -> set[str]:
    """Names that reach the result only through elementwise operations."""
    under_reduction: set[str] = set()
    for node in ir.preorder(root):
        if isinstance(node, ir.Call) and FUNCTIONS[node.func].kind == "reduction":
            under_reduction.update(ir.names_in(node))
    return set(ir.names_in(root)) - under_reduction


class _Batch:
    """Evaluates the expression on batches of points that differ in one input."""

    def __init__(self, root, arrays, out_shape, max_numel, use_complex):
        import torch

        self.torch, self.root, self.out_shape = torch, root, out_shape
        self.n_out = math.prod(out_shape)
        self.rank = max([a.ndim for a in arrays.values()] + [len(out_shape)])
        self.max_numel = max(1, max_numel)
        self.use_complex = use_complex
        self.dtype = torch.complex128 if use_complex else torch.float64
        self.inputs = {name: self.pad(a)[None] for name, a in arrays.items()}
        self.f0, self.kinks0 = self.run({})
        self.real_f0 = self.f0
        if use_complex:  # where the real function is undefined, the complex step means nothing
            real = {name: t.real for name, t in self.inputs.items()}
            with torch.no_grad():
                out = evaluate(root, real, torch, dtype=torch.float64, batched=True)
            self.real_f0 = out.reshape(1, -1).expand(1, self.n_out).numpy()

    def pad(self, a: np.ndarray):
        t = self.torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        t = t.reshape((1,) * (self.rank - a.ndim) + tuple(a.shape))
        return t.to(self.dtype)

    def run(self, replace: dict):
        """Outputs (B, n_out) and kink offsets for inputs with `replace[name]` = (B, *shape) rows."""
        inputs = dict(self.inputs)
        for name, rows in replace.items():
            t = self.torch.from_numpy(rows)
            inputs[name] = t.reshape((t.shape[0],) + (1,) * (self.rank + 1 - t.ndim) + tuple(t.shape[1:]))
        kinks: list = []
        with self.torch.no_grad():
            out = evaluate(self.root, inputs, self.torch, dtype=self.torch.float64, batched=True,
                           use_complex=self.use_complex, kinks=None if self.use_complex else kinks)
        batch = max(t.shape[0] for t in inputs.values())
        out = out.reshape(out.shape[0] if out.ndim else 1, -1).expand(batch, self.n_out)
        return out.numpy(), kinks

    def crossed(self, kinks, n_rows: int) -> tuple[np.ndarray | None, list]:
        """Per row: whether any kinked function's argument changed side (or sat on the kink)."""
        rows = None
        hits = []
        for rec, base in zip(kinks, self.kinks0):
            for off, off0 in zip(rec.offsets, base.offsets):
                off, off0 = _as_rows(off), _as_rows(off0)
                # only offsets this row moved count: an element resting on its kink says
                # nothing about the derivative w.r.t. another element
                moved = np.broadcast_to(off != off0, np.broadcast_shapes(off.shape, off0.shape))
                flag = moved & ((np.sign(off) != np.sign(off0)) | (off0 == 0))
                flag = np.broadcast_to(flag.reshape(flag.shape[0], -1).any(axis=1), (n_rows,))
                if flag.any():
                    hits.append((rec.func, rec.pos + 1))
                rows = flag if rows is None else (rows | flag)
        return rows, hits


def _as_rows(t) -> np.ndarray:
    a = t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)
    return a.reshape((1,) if a.ndim == 0 else a.shape)


def jacobian(root: ir.Node, arrays: dict, name: str, out_shape: tuple, *, scheme: str,
             eps: float | None = None, max_numel: int = 1, seed: int = 0, batch: _Batch | None = None) -> FDResult:
    """Finite-difference Jacobian of the expression w.r.t. `name` (all other inputs fixed)."""
    use_complex = scheme == "complex"
    batch = batch or _Batch(root, arrays, out_shape, max_numel, use_complex)
    x = np.asarray(arrays[name], dtype=np.float64)
    flat = x.reshape(-1)
    n_in = flat.size
    h = step_sizes(scheme, flat, eps)
    deltas = _DELTAS[scheme]
    if name in elementwise_only(root):
        values, crossed, hits = _together(batch, name, x, h, deltas)
        columns = np.broadcast_to(np.arange(n_in).reshape(x.shape), _pad_shape(x.shape, out_shape)).reshape(-1)
        computed = None
    else:
        per_row = len(deltas) * batch.max_numel
        limit = max(MIN_SAMPLE, BUDGET // per_row)
        computed = None
        if n_in > limit:
            computed = np.sort(np.random.default_rng(seed).choice(n_in, size=limit, replace=False))
        values, crossed, hits = _one_by_one(batch, name, x, h, deltas, computed)
        columns = None
    h_rows = h[columns] if columns is not None else (h if computed is None else h[computed])
    est, err, fwd, bwd = _combine(scheme, values, batch.f0[0], h_rows, deltas)
    undefined = ~np.isfinite(batch.real_f0[0])  # (n_out,): outside the real domain
    if undefined.any():
        est = np.where(undefined[None, :] if est.ndim == 2 else undefined, np.nan, est)
    return _assemble(scheme, est, err, fwd, bwd, crossed, hits, h, computed, columns, batch.n_out, n_in)


def _pad_shape(in_shape: tuple, out_shape: tuple) -> tuple:
    return tuple(out_shape) if len(out_shape) >= len(in_shape) else tuple(in_shape)


def _together(batch: _Batch, name, x, h, deltas):
    """Perturb every element at once: one row per delta."""
    rows = np.stack([x + d * h.reshape(x.shape) for d in deltas]).astype(
        np.complex128 if batch.use_complex else np.float64)
    out, kinks = batch.run({name: rows})
    crossed, hits = (None, []) if batch.use_complex else batch.crossed(kinks, rows.shape[0])
    # values[d][o]: the output at delta d; columns map o to its input element
    any_crossed = None if crossed is None else np.full(batch.n_out, bool(crossed.any()))
    return out, any_crossed, hits


def _one_by_one(batch: _Batch, name, x, h, deltas, computed):
    """One row per (element, delta); returns values[j, d, o] and a crossed flag per element."""
    flat = x.reshape(-1)
    idx = np.arange(flat.size) if computed is None else computed
    dtype = np.complex128 if batch.use_complex else np.float64
    nd = len(deltas)
    per_chunk = max(1, CHUNK // (nd * batch.max_numel))
    out = np.empty((idx.size, nd, batch.n_out), dtype=dtype)
    crossed = np.zeros(idx.size, dtype=bool)
    hits: list = []
    d_arr = np.asarray(deltas)
    for start in range(0, idx.size, per_chunk):
        chunk = idx[start:start + per_chunk]
        rows = np.repeat(flat[None].astype(dtype), chunk.size * nd, axis=0)
        which = np.repeat(chunk, nd)
        rows[np.arange(rows.shape[0]), which] += np.tile(d_arr, chunk.size) * h[which]
        values, kinks = batch.run({name: rows.reshape((rows.shape[0],) + x.shape)})
        out[start:start + chunk.size] = values.reshape(chunk.size, nd, batch.n_out)
        if not batch.use_complex:
            rc, rh = batch.crossed(kinks, rows.shape[0])
            if rc is not None:
                crossed[start:start + chunk.size] = rc.reshape(chunk.size, nd).any(axis=1)
            hits.extend(hh for hh in rh if hh not in hits)
    return out, crossed, hits


def _combine(scheme, values, f0, h, deltas):
    """Estimates, error estimates and one-sided slopes from the stencil values.
    `values` is (nd, n_out) (together) or (n, nd, n_out) (one by one); h matches the first axis."""
    together = values.ndim == 2
    v = values[None] if together else values  # (m, nd, n_out)
    hh = (h[None, :] if together else h[:, None])  # broadcast against (m, n_out)
    f = {d: v[:, k, :] for k, d in enumerate(deltas)}
    scale = np.max(np.abs(v.real), axis=1) + np.abs(f0.real)[None]
    rounding = 4 * EPS * scale / hh
    with np.errstate(all="ignore"):
        if scheme == "complex":
            est = f[1j].imag / hh
            err = 4 * EPS * np.abs(est) + 1e-300
            return _shape(together, est, err, None, None)
        if scheme == "forward":
            d1, d2 = (f[1] - f0) / hh, (f[2] - f0) / (2 * hh)
            return _shape(together, d1, np.abs(d1 - d2) + rounding, d1, None)
        d1, d2 = (f[1] - f[-1]) / (2 * hh), (f[2] - f[-2]) / (4 * hh)
        fwd, bwd = (f[1] - f0) / hh, (f0 - f[-1]) / hh
        if scheme == "central":
            return _shape(together, d1, np.abs(d1 - d2) / 3 + rounding, fwd, bwd)
        d4 = (f[4] - f[-4]) / (8 * hh)
        r1, r2 = (4 * d1 - d2) / 3, (4 * d2 - d4) / 3
        rr = (16 * r1 - r2) / 15
        return _shape(together, rr, np.abs(rr - r1) + rounding, fwd, bwd)


def _shape(together, *arrays):
    return tuple(None if a is None else (a[0] if together else a) for a in arrays)


def _assemble(scheme, est, err, fwd, bwd, crossed, hits, h, computed, columns, n_out, n_in) -> FDResult:
    jac = np.full((n_out, n_in), np.nan)
    error = np.full((n_out, n_in), np.nan)
    f_sl = None if fwd is None else np.full((n_out, n_in), np.nan)
    b_sl = None if bwd is None else np.full((n_out, n_in), np.nan)
    mask = np.zeros((n_out, n_in), dtype=bool)
    if columns is not None:  # together: est[o] belongs to column columns[o]; the rest is exactly 0
        jac[:] = 0.0
        error[:] = 0.0
        rows = np.arange(n_out)
        jac[rows, columns], error[rows, columns] = est, err
        for full, part in ((f_sl, fwd), (b_sl, bwd)):
            if full is not None:
                full[:] = 0.0
                full[rows, columns] = part
        if crossed is not None:
            mask[rows, columns] = crossed
    else:  # one by one: est[j, o] for the j-th differenced element
        cols = np.arange(n_in) if computed is None else computed
        jac[:, cols], error[:, cols] = est.T, err.T
        if f_sl is not None:
            f_sl[:, cols] = fwd.T
        if b_sl is not None:
            b_sl[:, cols] = bwd.T
        if crossed is not None:
            mask[:, cols] = crossed[None, :]
    return FDResult(scheme, jac, error, f_sl, b_sl, h, computed, hits, mask)
