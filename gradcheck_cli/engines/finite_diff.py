"""Finite differences in float64 (or complex128 for the complex step), vectorized.

Every perturbed point is one row of a batch that torch evaluates at once.  When an
input reaches the result only elementwise (no reduction on its way), all of its
elements are perturbed together: output element o depends on one input element, so
a handful of rows give the whole Jacobian.  Otherwise each element gets its own
rows; when that would cost too much, a seeded sample of elements is differenced
(and the report says so).

Schemes (H is the relative step, h = H * scale the step an element is moved by):
  central     (f(x+h) - f(x-h)) / 2h,                       H = cbrt(eps) = 6.1e-6
  forward     (f(x+h) - f(x)) / h,                          H = sqrt(eps) = 1.5e-8
  richardson  central at h, 2h, 4h extrapolated twice (error O(h^6)),  H = 1e-3
  complex     Im f(x + ih) / h: no cancellation, for analytic expressions, H = 1e-20

Step choice.  With `--eps H` every element is stepped by exactly h = H * max(1, |x|).
Without it, the right scale depends on the function as much as on x: log(x) at
x = 1e4 wants steps proportional to x, sin(x) there wants absolute ones.  So each
element is differenced at the scales |x|^0, |x|^(1/2) and |x|^1 (when |x| is far
from 1; max(1, |x|) otherwise), and each Jacobian entry keeps the candidate with the
smallest likely error among those whose stencil did not cross a kink and whose
truncation estimate is small against the estimate (outside that regime an error
estimate means nothing).  The complex step keeps h = 1e-20 * max(1, |x|), plus
h = 1e-8 |x| for |x| below 1e-12, where 1e-20 would step across the function's scale.

Error estimates bound truncation plus rounding:
  truncation  the gap to a less accurate estimate from the same stencil (central: the
              2h difference, richardson: the first extrapolation, forward and complex:
              the step 2h);
  rounding    the noise the function's values carry near x (cancellation inside the
              expression included): the spread of nine closely and unevenly spaced
              values around a cubic fit (the curvature left over is far below rounding),
              times NOISE_SAFETY and how much the scheme amplifies noise; never less
              than a few ulps of the values seen.  Complex steps measure the spread of
              Im f(x + k*delta + ih)/h.
Measured against mpmath on smooth float64 functions (tests/test_finite_diff.py) the
estimate bounds the true error and is typically 20-150x above it.

A check under --fd auto differences inputs that need rows of their own (through a
reduction) with fd_screen.py first, and comes back here for the elements that need more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gradcheck_cli.engines.fd_batch import Batch, as_rows, elementwise_only, node_shapes  # noqa: F401  (re-exported)
from gradcheck_cli.engines.fd_steps import (EPS, PROBE_POINTS, STENCILS, Plan, make_plan, plan_rows, probe_noise,
                                            single_scale)
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS

BUDGET = 30_000_000  # element evaluations for one variable before sampling
CHUNK = 4_000_000  # element evaluations per torch call
MIN_SAMPLE = 16
NOISE_SAFETY = 8.0  # nine values give a noisy measure of noise: bound it generously
FOURTH_NORM = math.sqrt(70.0)  # |(1, -4, 6, -4, 1)|: the fourth difference of unit noise


@dataclass
class FDResult:
    """Finite-difference derivatives of every output element w.r.t. one input."""

    scheme: str
    jacobian: np.ndarray  # (n_out, n_in); NaN where not computed
    error: np.ndarray  # (n_out, n_in) error estimate
    forward_slope: np.ndarray | None  # one-sided slopes, for kinks (None for complex)
    backward_slope: np.ndarray | None
    steps: np.ndarray  # h per input element (the one its largest derivative used)
    sampled: np.ndarray | None  # flat indices differenced, when not all were
    kinks: list = field(default_factory=list)  # (function, column) whose kink the stencil crossed
    kink_mask: np.ndarray | None = None  # (n_out, n_in) entries whose stencil crossed a kink
    entry_steps: np.ndarray | None = None  # (n_out, n_in) h each entry used; NaN where not computed


def non_analytic_calls(root: ir.Node) -> list[str]:
    """Functions in the expression that complex-step differences cannot go through."""
    return sorted({n.func for n in ir.preorder(root) if isinstance(n, ir.Call) and not FUNCTIONS[n.func].analytic}
                  | ({"comparison"} if any(isinstance(n, ir.Compare) for n in ir.preorder(root)) else set()))


def resolve_scheme(requested: str, root: ir.Node, arrays: dict | None = None,
                   shapes: dict | None = None) -> tuple[str, str | None]:
    """The scheme to use and, when it differs from the request, why.  With the point's
    `arrays`, an analytic function sitting on its kink there (norm at a zero vector, atan2
    at the origin) takes the complex step away too.  `shapes`: node_shapes(root, arrays),
    where the caller has them."""
    blockers = non_analytic_calls(root)
    if requested in ("auto", "complex") and not blockers and arrays is not None:
        near = kinks_at(root, arrays, shapes)
        if near:
            return "richardson", None if requested == "auto" else (
                f"complex-step differences need an expression analytic at the point, and {', '.join(near)} "
                f"{'is' if len(near) == 1 else 'are'} at (or within 1e-12 of) {'its' if len(near) == 1 else 'their'} "
                "kink here; used richardson instead")
    if requested == "auto":
        return ("complex", None) if not blockers else ("richardson", None)
    if requested == "complex" and blockers:
        return "richardson", (f"complex-step differences need a real-analytic expression, and "
                              f"{', '.join(blockers)} is not; used richardson instead")
    return requested, None


NEAR_KINK = 1e-12  # relative to max(1, the largest |input|): a complex step is no longer small against it


def kinks_at(root: ir.Node, arrays: dict, shapes: dict | None = None) -> list[str]:
    """The analytic functions with a kink (norm, atan2) whose kink lies at this point, or
    within NEAR_KINK of it: there the complex step would read a derivative that does not
    exist (norm at 0 gives 1, not torch's 0) or one its step is not small against.
    `shapes`: node_shapes(root, arrays), where the caller has them."""
    kinked = {n.func for n in ir.preorder(root)
              if isinstance(n, ir.Call) and FUNCTIONS[n.func].analytic and FUNCTIONS[n.func].kinks is not None}
    if not kinked:
        return []
    floats = [np.abs(np.asarray(a, dtype=np.float64)) for a in arrays.values() if np.asarray(a).dtype.kind == "f"]
    scale = max([1.0] + [float(np.max(a)) for a in floats if a.size and np.all(np.isfinite(a))])
    shapes = node_shapes(root, arrays) if shapes is None else shapes
    batch = Batch(root, arrays, shapes[id(root)], 1, False, shapes=shapes)
    near = []
    for rec in batch.kinks0:
        if rec.func in kinked and rec.func not in near:
            if any(np.any(np.abs(as_rows(off)) <= NEAR_KINK * scale) for off in rec.offsets):
                near.append(rec.func)
    return near


def jacobian(root: ir.Node, arrays: dict, name: str, out_shape: tuple, *, scheme: str,
             eps: float | None = None, max_numel: int = 1, seed: int = 0, batch: Batch | None = None,
             elements: np.ndarray | None = None) -> FDResult:
    """Finite-difference Jacobian of the expression w.r.t. `name` (all other inputs fixed).
    With `elements` (flat indices), only those columns are differenced (the rest are NaN,
    and `sampled` lists them); each gets the numbers a full run would give it.  `batch`,
    where given, is Batch(root, arrays, out_shape, max_numel, scheme == "complex")."""
    use_complex = scheme == "complex"
    batch = batch or Batch(root, arrays, out_shape, max_numel, use_complex)
    x = np.asarray(arrays[name], dtype=np.float64)
    flat = x.reshape(-1)
    n_in = flat.size
    columns = computed = None
    if elements is None and name in batch.elementwise:
        columns = np.broadcast_to(np.arange(n_in).reshape(x.shape), _pad_shape(x.shape, out_shape)).reshape(-1)
        picked, hits = _together(batch, name, x, make_plan(scheme, flat, eps), columns)
    else:
        if elements is not None:
            computed = np.unique(np.asarray(elements, dtype=np.int64).reshape(-1))
        else:
            computed = sample(scheme, flat, eps, batch.max_numel, seed)
        picked, hits = _one_by_one(batch, name, x, scheme, eps, computed)
    undefined = ~np.isfinite(batch.real_f0[0])  # (n_out,): outside the real domain
    if undefined.any():
        picked["est"] = np.where(undefined, np.nan, picked["est"])
    return _assemble(scheme, picked, hits, computed, columns, batch.n_out, n_in)


def sample(scheme: str, flat: np.ndarray, eps: float | None, max_numel: int, seed: int) -> np.ndarray | None:
    """The seeded sample of elements differenced one by one when all of them would cost more
    than BUDGET element evaluations (sorted flat indices), or None for all of them."""
    limit = max(MIN_SAMPLE, BUDGET // (plan_rows(scheme, flat, eps) * max(1, max_numel)))
    if flat.size <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(flat.size, size=limit, replace=False))


def derivative_at_steps(root: ir.Node, arrays: dict, name: str, element: int, output: int, out_shape: tuple, *,
                        scheme: str, steps: np.ndarray) -> np.ndarray:
    """d(output element) / d(input element) of `name` by `scheme` at each absolute step in
    `steps`, taken exactly as given (no step choice, no error estimate): the raw material
    of a step-size curve.  Each step is rounded to one x + h represents; a step that
    vanishes there (x + h == x) gives NaN."""
    use_complex = scheme == "complex"
    max_numel = max([int(np.asarray(a).size) for a in arrays.values()] + [math.prod(out_shape)])
    batch = Batch(root, arrays, out_shape, max_numel, use_complex)
    x = np.asarray(arrays[name], dtype=np.float64)
    flat = x.reshape(-1)
    x0 = float(flat[element])
    steps = np.asarray(steps, dtype=np.float64).reshape(-1)
    h = steps if use_complex else (x0 + steps) - x0
    mults = (1,) if scheme in ("complex", "forward") else STENCILS[scheme]
    pert = (np.multiply.outer(h, mults) * (1j if use_complex else 1)).reshape(-1)
    dtype = np.complex128 if use_complex else np.float64
    out = np.empty(pert.size, dtype=dtype)
    per_chunk = max(1, CHUNK // batch.max_numel)
    for start in range(0, pert.size, per_chunk):
        part = pert[start:start + per_chunk]
        rows = np.repeat(flat[None].astype(dtype), part.size, axis=0)
        rows[:, element] += part
        values, _ = batch.run({name: rows.reshape((part.size,) + x.shape)})
        out[start:start + part.size] = values[:, output]
    f0 = batch.f0[0, output].real
    v = out.reshape(h.size, len(mults))
    with np.errstate(all="ignore"):
        if use_complex:
            est = v[:, 0].imag / h
        elif scheme == "forward":
            est = (v[:, 0].real - f0) / h
        else:
            d = {m: v[:, k].real for k, m in enumerate(mults)}
            d1, d2 = (d[1] - d[-1]) / (2 * h), (d[2] - d[-2]) / (4 * h)
            if scheme == "central":
                est = d1
            else:  # richardson, as jacobian() extrapolates it
                d4 = (d[4] - d[-4]) / (8 * h)
                est = (64 * d1 - 20 * d2 + d4) / 45
    return np.where(h > 0, est, np.nan)


def _pad_shape(in_shape: tuple, out_shape: tuple) -> tuple:
    return tuple(out_shape) if len(out_shape) >= len(in_shape) else tuple(in_shape)


def _cand_crossed(plan: Plan, row_flags: np.ndarray | None, lead: tuple) -> np.ndarray:
    """(n_cand, *lead) whether any row of each candidate crossed a kink; row_flags is
    (*lead, n_rows) or None.  Probe rows are shorter than every candidate's own rows."""
    n_cand = plan.steps.shape[0]
    if row_flags is None:
        return np.zeros((n_cand,) + lead, dtype=bool)
    return np.stack([row_flags[..., plan.row_cand == c].any(axis=-1) for c in range(n_cand)])


def _together(batch: Batch, name, x, plan: Plan, columns):
    """Perturb every element at once: one batch row per plan row."""
    pert = plan.pert.reshape((plan.n_rows,) + x.shape)
    rows = (x[None] + pert).astype(np.complex128 if batch.use_complex else np.float64)
    out, kinks = batch.run({name: rows})
    flags, hits = (None, []) if batch.use_complex else batch.crossed(kinks, rows.shape[0])
    # any crossing marks every output, as one row moves every element
    crossed = _cand_crossed(plan, flags, ())[:, None, None]
    steps = plan.steps[:, columns][:, None, :]  # (n_cand, 1, n_out): output o moves with element columns[o]
    dev = plan.probe_dev[:, columns][:, None, :]
    picked = _pick(*_combine(plan, out[None], batch.f0[0], steps, dev), np.broadcast_to(crossed, steps.shape),
                   steps)
    return {k: (None if v is None else v[0]) for k, v in picked.items()}, hits


def _one_by_one(batch: Batch, name, x, scheme: str, eps, computed):
    """One batch row per (element, plan row), a chunk of elements at a time (each chunk
    plans its own elements only, so a large input costs memory for its sample alone);
    returns the picked estimates per (element, output).  Elements near 1 in size, whose
    candidate scales are all max(1, |x|), are planned apart from the others: one candidate
    instead of three copies of it (the same numbers, fewer rows)."""
    flat = x.reshape(-1)
    idx = np.arange(flat.size) if computed is None else computed
    single = single_scale(flat[idx]) if eps is None and scheme != "complex" else np.ones(idx.size, dtype=bool)
    sets = [s for s in (idx[single], idx[~single]) if s.size]
    per_chunk = max(1, CHUNK // (plan_rows(scheme, flat, eps) * batch.max_numel))
    parts: list[dict] = []
    hits: list = []
    for elements in sets:
        for start in range(0, elements.size, per_chunk):
            chunk = elements[start:start + per_chunk]
            plan = make_plan(scheme, flat[chunk], eps)
            nd = plan.n_rows
            values, flags, met = batch.points(name, x, np.arange(chunk.size * nd), np.repeat(chunk, nd),
                                              plan.pert.T.reshape(-1), chunk.size * nd, kinks=not batch.use_complex)
            hits.extend(hh for hh in met if hh not in hits)
            steps = plan.steps[:, :, None]  # (n_cand, chunk, 1)
            crossed = _cand_crossed(plan, None if batch.use_complex else flags.reshape(chunk.size, nd),
                                    (chunk.size,))[:, :, None]
            combined = _combine(plan, values.reshape(chunk.size, nd, batch.n_out), batch.f0[0], steps,
                                plan.probe_dev[:, :, None])
            shape = (plan.steps.shape[0], chunk.size, batch.n_out)
            parts.append(_pick(*combined, np.broadcast_to(crossed, shape), np.broadcast_to(steps, shape)))
    picked = {k: (None if parts[0][k] is None else np.concatenate([p[k] for p in parts])) for k in parts[0]}
    if len(sets) > 1:  # back to the order of idx
        order = np.argsort(np.concatenate(sets), kind="stable")
        picked = {k: (None if v is None else v[order]) for k, v in picked.items()}
    return picked, hits


def _combine(plan: Plan, values: np.ndarray, f0: np.ndarray, steps: np.ndarray, dev: np.ndarray):
    """Per candidate (n_cand, m, n_out): estimate, error estimate, one-sided slopes, and
    the score candidates compete on.  `values` is (m, n_rows, n_out); `steps` broadcasts
    against (n_cand, m, n_out), `dev` (the probe's rounding) against (n_probe, m, n_out)."""
    scheme = plan.scheme
    with np.errstate(all="ignore"):
        if scheme == "complex":
            ests, errs, truncs = [], [], []
            for c in range(plan.steps.shape[0]):
                g = {k: values[:, plan.index[(c, k)], :].imag / steps[c] for k in PROBE_POINTS}
                g2 = values[:, plan.index[(c, "2h")], :].imag / (2 * steps[c])
                trunc = np.abs(g2 - g[0]) / 3  # Im f(x + ih)/h = f' - h^2 f^(3)/6 + ...
                ests.append(g[0])
                truncs.append(trunc)
                errs.append(trunc + NOISE_SAFETY * probe_noise(g, dev) + 4 * EPS * np.abs(g[0]) + 1e-300)
            return np.stack(ests), np.stack(errs), None, None, np.stack(errs), np.stack(truncs)
        f0 = f0[None].real
        probe = probe_noise({k: (values[:, plan.index[("probe", k)], :] if k else f0) for k in PROBE_POINTS}, dev)
        out = {"est": [], "err": [], "fwd": [], "bwd": [], "score": [], "trunc": []}
        for c in range(plan.steps.shape[0]):
            f = {k: values[:, plan.index[(c, k)], :] for k in STENCILS[scheme]}
            h = steps[c]
            stack = np.stack([f[k] for k in STENCILS[scheme]])
            # a few ulps of every value seen: the least rounding any difference carries
            floor = 4 * EPS * (np.max(np.abs(stack), axis=0) + np.abs(f0)) / h
            noise = probe
            if scheme == "forward":
                d1, d2 = (f[1] - f0) / h, (f[2] - f0) / (2 * h)
                est, trunc, gain, fwd, bwd = d1, np.abs(d2 - d1), math.sqrt(2), d1, None
            else:
                d1, d2 = (f[1] - f[-1]) / (2 * h), (f[2] - f[-2]) / (4 * h)
                fwd, bwd = (f[1] - f0) / h, (f0 - f[-1]) / h
                if scheme == "central":
                    own = np.abs(f[2] - 4 * f[1] + 6 * f0 - 4 * f[-1] + f[-2]) / FOURTH_NORM
                    est, trunc, gain, noise = d1, np.abs(d2 - d1) / 3, math.sqrt(0.5), np.maximum(probe, own)
                else:  # richardson: (4 d1 - d2)/3 and (4 d2 - d4)/3 cancel h^2, their blend h^4
                    d4 = (f[4] - f[-4]) / (8 * h)
                    r1 = (4 * d1 - d2) / 3
                    est = (64 * d1 - 20 * d2 + d4) / 45
                    trunc, gain = np.abs(est - r1), 1.02  # gain: the root sum of squares of f's weights, times h
            rounding = gain * noise / h
            err = trunc + NOISE_SAFETY * rounding + floor + 2 * EPS * np.abs(est)
            # candidates compete on their likely error, not on the safety margin: a margin
            # on the noise alone would push the choice towards long steps
            score = trunc + rounding + floor / 4
            for key, val in (("est", est), ("err", err), ("fwd", fwd), ("bwd", bwd), ("score", score),
                             ("trunc", trunc)):
                out[key].append(val)
        return tuple(None if out[k][0] is None else np.stack(out[k])
                     for k in ("est", "err", "fwd", "bwd", "score", "trunc"))


def _pick(est, err, fwd, bwd, score, trunc, crossed, steps) -> dict:
    """Per entry, the candidate with the smallest likely error among those whose stencil
    did not cross a kink and whose truncation estimate is small against the estimate
    itself (one that is not, like a complex step of 1e-20 at x = 1e-300, is outside the
    regime where its error estimate means anything).  Failing that, the smallest likely
    error among the uncrossed; failing that too, the shortest step."""
    shape = est.shape
    steps = np.broadcast_to(steps, shape)
    score = np.where(np.isfinite(err) & np.isfinite(score), score, np.inf)
    score = np.where(np.broadcast_to(crossed, shape), np.inf, score)
    with np.errstate(invalid="ignore"):
        suspect = ~(trunc <= 1e-3 * np.abs(est))
    trusted = np.where(suspect, np.inf, score)
    choice = np.where(np.isfinite(np.min(trusted, axis=0)), np.argmin(trusted, axis=0), np.argmin(score, axis=0))
    choice = np.where(np.isfinite(np.min(score, axis=0)), choice, np.argmin(steps, axis=0))[None]

    def take(a):
        return None if a is None else np.take_along_axis(np.broadcast_to(a, shape), choice, 0)[0]

    return {"est": take(est), "err": take(err), "fwd": take(fwd), "bwd": take(bwd),
            "crossed": take(crossed), "step": take(steps)}


def _assemble(scheme, picked, hits, computed, columns, n_out, n_in) -> FDResult:
    est, err, fwd, bwd = picked["est"], picked["err"], picked["fwd"], picked["bwd"]
    jac = np.full((n_out, n_in), np.nan)
    error = np.full((n_out, n_in), np.nan)
    used = np.full((n_out, n_in), np.nan)
    f_sl = None if fwd is None else np.full((n_out, n_in), np.nan)
    b_sl = None if bwd is None else np.full((n_out, n_in), np.nan)
    mask = np.zeros((n_out, n_in), dtype=bool)
    if columns is not None:  # together: est[o] belongs to column columns[o]; the rest is exactly 0
        jac[:] = 0.0
        error[:] = 0.0
        rows = np.arange(n_out)
        jac[rows, columns], error[rows, columns], used[rows, columns] = est, err, picked["step"]
        for full, part in ((f_sl, fwd), (b_sl, bwd)):
            if full is not None:
                full[:] = 0.0
                full[rows, columns] = part
        mask[rows, columns] = picked["crossed"]
    else:  # one by one: est[j, o] for the j-th differenced element
        cols = np.arange(n_in) if computed is None else computed
        jac[:, cols], error[:, cols], used[:, cols] = est.T, err.T, picked["step"].T
        if f_sl is not None:
            f_sl[:, cols] = fwd.T
        if b_sl is not None:
            b_sl[:, cols] = bwd.T
        mask[:, cols] = picked["crossed"].T
    return FDResult(scheme, jac, error, f_sl, b_sl, element_steps(jac, used), computed, hits, mask, used)


def element_steps(jac: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Per input element, the step of its largest computed derivative (NaN if none)."""
    if jac.size == 0:
        return np.full(jac.shape[1], np.nan)
    mag = np.where(np.isnan(used), -1.0, np.nan_to_num(np.abs(jac), nan=0.0, posinf=1e308))
    rows = np.argmax(mag, axis=0)
    return used[rows, np.arange(jac.shape[1])]
