"""Finite differences for a check under --fd auto, where each element needs rows of its own.

An input that reaches the result through a reduction (a sum, a mean, a norm, a matmul)
is differenced one element at a time: every perturbed point is a whole evaluation of the
expression, so the cost is (rows per element) x (elements) x (the expression's size).
finite_diff.jacobian spends 10 complex rows per element on the complex step (a noise probe
of nine points and a long step) and up to 26 real rows on richardson (three candidate
scales of six rows, and the probe), wherever the entry's verdict would be the same
without them.  Here, each element is first screened with a short stencil:

  complex (analytic expressions)  Im f(x + ih e_j)/h, one complex row per element, and
      four rows per group of up to GROUP elements of like derivative size that step along
      all of the group at once (see _complex_screen): their residuals from linearity are
      two samples of the rounding the elements' imaginary and real parts carry (about
      1.3 rows per element, against the full scheme's 10).  Truncation at
      h = 1e-20 max(1, |x|) is far below rounding, and an element with a second
      candidate step (|x| < 1e-12) goes to the full scheme;
  central (the others)  (f(x+h) - f(x-h))/2h at h and 2h with h = cbrt(eps)*max(1, |x|)
      (4 real rows): the estimate, the truncation |D(2h) - D(h)|/3, the fourth difference
      as a sample of the rounding, the one-sided slopes and whether a kink was crossed.

An entry keeps the screen's numbers only where its verdict cannot turn on them: FD_SAFETY
times its error estimate, and its gap to autograd, are both within SHARE of the
tolerance atol + rtol*|fd| (so the reference never loosens the verdict by more than
that, and every disagreement is looked at twice), its stencil crossed no kink, and it is
finite.  Every element with an entry that fails any of these is differenced again by
the full scheme (finite_diff.jacobian with `elements`), which replaces all of its
numbers.  When most of a pilot chunk needs that (a long sum of a kinked function, whose
values are too large for central differences to resolve at float64's tolerance), the
rest of the elements go to the full scheme directly, so screening never costs more than
the pilot.
"""

from __future__ import annotations

import math

import numpy as np

from gradcheck_cli.engines.fd_steps import EPS, candidate_steps, plan_rows, step_sizes
from gradcheck_cli.engines.finite_diff import (FOURTH_NORM, NOISE_SAFETY, Batch, FDResult, element_steps, jacobian,
                                               sample)
from gradcheck_cli.tolerances import FD_SAFETY

GROUP = 16  # elements per combined complex-step row (the rounding samples)
BAND = 16  # the largest ratio of derivative sizes within one group
SHARE = 0.25  # of the tolerance, that an entry's error estimate (x FD_SAFETY) and autograd gap may take
CENTRAL = (1, -1, 2, -2)  # multiples of h the central screen evaluates
CHUNK_RESULTS = 2**20  # elements x outputs a chunk of elements holds at once
SCREEN_FROM = 2**20  # numbers the full scheme would evaluate, from which screening pays (below: a few ms)
PILOT = 64  # elements screened before deciding whether screening pays off
PILOT_GIVE_UP = 0.5  # share of the pilot needing the full scheme above which the rest go there directly


def jacobian_for_check(root, arrays: dict, name: str, out_shape: tuple, *, requested: str, scheme: str,
                       eps: float | None, max_numel: int, seed: int, tol: dict,
                       autograd: np.ndarray | None = None, batch: Batch | None = None) -> FDResult:
    """The finite-difference Jacobian a check compares with: screened (this module) under
    --fd auto without --eps for inputs differenced element by element; otherwise exactly
    finite_diff.jacobian.  `autograd` (the gradient being checked, out_shape + in_shape)
    sends every entry that disagrees with it to the full scheme.  `batch`, where given, is
    Batch(root, arrays, out_shape, max_numel, scheme == "complex"), one for every input."""
    batch = batch or Batch(root, arrays, out_shape, max_numel, scheme == "complex")
    if requested != "auto" or eps is not None or name in batch.elementwise or \
            full_cost(scheme, arrays[name], max_numel) < SCREEN_FROM:
        return jacobian(root, arrays, name, out_shape, scheme=scheme, eps=eps, max_numel=max_numel, seed=seed,
                        batch=batch)
    return screened_jacobian(root, arrays, name, out_shape, scheme=scheme, max_numel=max_numel, seed=seed,
                             tol=tol, autograd=autograd, batch=batch)


def full_cost(scheme: str, x, max_numel: int) -> int:
    """Numbers the full scheme would evaluate to difference every element of x one by one."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    return flat.size * plan_rows(scheme, flat, None) * max(1, max_numel)


def screened_jacobian(root, arrays: dict, name: str, out_shape: tuple, *, scheme: str, max_numel: int,
                      seed: int, tol: dict, autograd: np.ndarray | None = None,
                      batch: Batch | None = None) -> FDResult:
    """Screen every differenced element (the same seeded sample finite_diff.jacobian takes)
    with the short stencil; redo with the full `scheme` the elements whose verdict could
    depend on more than the screen knows.  `batch` as for jacobian_for_check."""
    use_complex = scheme == "complex"
    batch = batch or Batch(root, arrays, out_shape, max_numel, use_complex)
    x = np.asarray(arrays[name], dtype=np.float64)
    flat = x.reshape(-1)
    n_in = flat.size
    computed = sample(scheme, flat, None, batch.max_numel, seed)
    idx = np.arange(n_in) if computed is None else computed
    auto = None if autograd is None else np.asarray(autograd, dtype=np.float64).reshape(batch.n_out, n_in)
    defined = np.isfinite(batch.real_f0[0])  # (n_out,): outside the real domain nothing is refined
    screen = _complex_screen if use_complex else _central_screen
    # elements per chunk: as many as keep a chunk's results (elements x outputs) small, so
    # that torch calls stay full (each call takes fd_batch.CALL_NUMBERS numbers, whatever the chunk)
    size = -(-max(PILOT, CHUNK_RESULTS // batch.n_out) // GROUP) * GROUP
    bounds = [0] + list(range(min(PILOT, idx.size), idx.size, size)) + [idx.size]
    parts, hits, screened = [], [], 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        if start and start == bounds[1] and np.mean(parts[0]["refine"]) > PILOT_GIVE_UP:
            break  # most elements need the full scheme: screening the rest would only add to it
        chunk = idx[start:end]
        part = screen(batch, name, x, chunk)
        part["refine"] = _needs_full(part, None if auto is None else auto[:, chunk], tol, defined)
        hits.extend(h for h in part.pop("hits") if h not in hits)
        parts.append(part)
        screened = end
    picked = {k: (None if parts[0][k] is None else np.concatenate([p[k] for p in parts], axis=-1))
              for k in parts[0]}
    screened_idx = idx[:screened]
    refine = np.concatenate([screened_idx[picked["refine"]], idx[screened:]])
    return _merge(scheme, picked, screened_idx, refine, hits, computed, batch, root, arrays, name, out_shape,
                  max_numel, seed, defined, n_in)


def _complex_screen(batch: Batch, name: str, x: np.ndarray, chunk: np.ndarray) -> dict:
    """Im f(x + ih e_j)/h for each element j of `chunk`, one row each; then two samples of
    the rounding those carry.  Ranked by the size of their derivatives, the elements are
    split into groups of up to GROUP within a factor BAND of each other, twice (the second
    split offset by half a group), and each
    group gets two rows stepped along all of its elements at once: imaginary steps h_j
    times weights that are not powers of 2, and real steps of +-a few ulps.  By linearity
    each row's imaginary part is the weighted sum of the group's; what is left is rounding,
    of the imaginary parts and of the real ones, which round anew at the shifted point.
    The curvature the real steps bring in is opposite in the two rows, so their sum keeps
    the rounding alone; elements of like size share a group, so a large derivative's
    rounding is not charged to a small one.  Arrays are (n_out, len(chunk))."""
    k = chunk.size
    xs = x.reshape(-1)[chunk]
    steps = candidate_steps("complex", xs, None)
    h = steps[0]
    single = batch.points(name, x, np.arange(k), chunk, 1j * h, k)[0]
    with np.errstate(all="ignore"):
        g = single.imag / h[:, None]  # (k, n_out)
        size = np.nan_to_num(np.max(np.abs(g), axis=1), nan=np.inf)
    ranked = np.argsort(size, kind="stable")
    groups = [np.empty(k, dtype=np.int64), np.empty(k, dtype=np.int64)]
    for group, offset in zip(groups, (0, GROUP // 2)):
        group[ranked] = _bands(size[ranked], offset)
    sizes = [int(gr.max()) + 1 for gr in groups]
    rows, elements, pert, weights, first = [], [], [], [], 0
    for p, group in enumerate(groups):
        order = np.argsort(group, kind="stable")  # the group's entries, row by row
        weight = _weights(k, 0.31 + 0.46 * p) * h
        ulps = _ulps(k, 3 * p) * np.spacing(np.abs(xs))
        weights.append(weight)
        for sign in (1.0, -1.0):
            shift = (xs + sign * ulps) - xs
            rows.append(first + group[order])
            elements.append(chunk[order])
            pert.append((shift + 1j * weight)[order])
            first += sizes[p]
    combined = batch.points(name, x, np.concatenate(rows), np.concatenate(elements), np.concatenate(pert),
                         first)[0]
    with np.errstate(all="ignore"):
        noise = np.zeros_like(g)
        start = 0
        for group, weight, n in zip(groups, weights, sizes):
            expected = np.zeros((n, g.shape[1]))
            np.add.at(expected, group, weight[:, None] * g)
            pair = combined[start:start + n].imag + combined[start + n:start + 2 * n].imag
            noise = np.maximum(noise, np.abs(pair - 2 * expected)[group] / weight[:, None])
            start += 2 * n
        # near a zero of the derivative the rounding stays at the scale of the terms that
        # cancel there, which the typical derivative stands for
        typical = np.median(np.abs(g), axis=0, keepdims=True)
        err = NOISE_SAFETY * noise + 4 * EPS * (np.abs(g) + typical) + 1e-300
    # an element whose step has a second candidate (tiny |x|) is the full scheme's to choose
    tiny = np.any(steps != h, axis=0) if steps.shape[0] > 1 else np.zeros(k, dtype=bool)
    est = g.T
    return {"est": est, "err": err.T, "fwd": None, "bwd": None,
            "force": np.broadcast_to(tiny[None], est.shape), "step": np.broadcast_to(h[None], est.shape),
            "hits": []}


def _bands(size: np.ndarray, offset: int) -> np.ndarray:
    """Group numbers for ascending sizes: sizes fall into bands a factor BAND wide (zeros
    and non-finite sizes apart), each band into runs of GROUP (the first `offset` shorter),
    so that the rounding of a group's largest derivative is charged to none much smaller."""
    with np.errstate(all="ignore"):
        band = np.floor(np.log2(size) / np.log2(BAND))
    band = np.where(np.isfinite(band), band, np.where(size == 0, -1e300, 1e300))
    band_id = np.concatenate(([0], np.cumsum(np.diff(band) != 0)))
    first = np.concatenate(([0], np.flatnonzero(np.diff(band) != 0) + 1))
    run = (np.arange(size.size) - first[band_id] + offset) // GROUP
    return np.unique(band_id * (size.size + 1) + run, return_inverse=True)[1].reshape(-1)


def _ulps(k: int, start: int) -> np.ndarray:
    """k small whole numbers of ulps, of both signs."""
    return np.array([3.0, -2.0, 1.0, -3.0, 2.0, -1.0, 4.0, -4.0])[(np.arange(k) + start) % 8]


def _weights(k: int, offset: float) -> np.ndarray:
    """k weights in [1, 1.5), none a power of 2 (golden-ratio fractions)."""
    return 1.0 + 0.5 * ((np.arange(k) * 0.6180339887498949 + offset) % 1.0)


def _central_screen(batch: Batch, name: str, x: np.ndarray, chunk: np.ndarray) -> dict:
    """Central differences at h and 2h for each element j of `chunk`: (n_out, len(chunk)) arrays."""
    k = chunk.size
    h = step_sizes("central", x.reshape(-1)[chunk], None)
    m = len(CENTRAL)
    values, flags, hits = batch.points(name, x, np.arange(k * m), np.repeat(chunk, m),
                                    np.multiply.outer(h, CENTRAL).reshape(-1), k * m, kinks=True)
    crossed = flags.reshape(k, m).any(axis=1)
    values = values.reshape(k, m, -1)
    f = {c: values[:, i, :] for i, c in enumerate(CENTRAL)}
    f0 = batch.f0[0].real[None]
    hh = h[:, None]
    with np.errstate(all="ignore"):
        d1, d2 = (f[1] - f[-1]) / (2 * hh), (f[2] - f[-2]) / (4 * hh)
        own = np.abs(f[2] - 4 * f[1] + 6 * f0 - 4 * f[-1] + f[-2]) / FOURTH_NORM
        floor = 4 * EPS * (np.max(np.abs(values), axis=1) + np.abs(f0)) / hh
        err = np.abs(d2 - d1) / 3 + NOISE_SAFETY * math.sqrt(0.5) * own / hh + floor + 2 * EPS * np.abs(d1)
        fwd, bwd = (f[1] - f0) / hh, (f0 - f[-1]) / hh
    shape = d1.T.shape
    return {"est": d1.T, "err": err.T, "fwd": fwd.T, "bwd": bwd.T,
            "force": np.broadcast_to(crossed[None], shape), "step": np.broadcast_to(h[None], shape),
            "hits": hits}


def _needs_full(part: dict, auto: np.ndarray | None, tol: dict, defined: np.ndarray) -> np.ndarray:
    """Per screened element: whether any of its entries' verdicts could turn on the screen."""
    est, err = part["est"], part["err"]
    with np.errstate(all="ignore"):
        allowed = SHARE * (tol["atol"] + tol["rtol"] * np.abs(est))
        bad = ~np.isfinite(est) | ~(FD_SAFETY * err <= allowed) | part["force"]
        if auto is not None:
            bad |= np.isfinite(auto) & ~(np.abs(est - auto) <= allowed)
    return np.any(bad & defined[:, None], axis=0)


def _merge(scheme, picked, screened_idx, refine, hits, computed, batch, root, arrays, name, out_shape, max_numel,
           seed, defined, n_in) -> FDResult:
    """The screen's numbers, with every refined element's replaced by the full scheme's."""
    n_out = batch.n_out
    jac = np.full((n_out, n_in), np.nan)
    error = np.full((n_out, n_in), np.nan)
    used = np.full((n_out, n_in), np.nan)
    fwd = None if picked["fwd"] is None else np.full((n_out, n_in), np.nan)
    bwd = None if picked["bwd"] is None else np.full((n_out, n_in), np.nan)
    jac[:, screened_idx] = np.where(defined[:, None], picked["est"], np.nan)
    error[:, screened_idx] = picked["err"]
    used[:, screened_idx] = picked["step"]
    for full, part in ((fwd, picked["fwd"]), (bwd, picked["bwd"])):
        if full is not None:
            full[:, screened_idx] = part
    mask = np.zeros((n_out, n_in), dtype=bool)
    label = scheme
    if refine.size:
        fine = jacobian(root, arrays, name, out_shape, scheme=scheme, max_numel=max_numel, seed=seed, batch=batch,
                        elements=refine)
        cols = fine.sampled
        jac[:, cols], error[:, cols], used[:, cols] = fine.jacobian[:, cols], fine.error[:, cols], \
            fine.entry_steps[:, cols]
        for full, part in ((fwd, fine.forward_slope), (bwd, fine.backward_slope)):
            if full is not None:
                full[:, cols] = np.nan if part is None else part[:, cols]
        mask[:, cols] = fine.kink_mask[:, cols]
        hits = hits + [h for h in fine.kinks if h not in hits]
        if scheme != "complex":
            label = f"central+{scheme}"
    elif scheme != "complex":
        label = "central"
    steps = element_steps(jac, used)
    return FDResult(label, jac, error, fwd, bwd, steps, computed, hits, mask, used)

