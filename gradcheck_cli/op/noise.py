"""How noisy the op's forward is, measured instead of assumed.

Finite differences divide the forward's noise by the step, so the allowed error and the
kink test need it.  Rounding alone is about eps * |f|; an iterative solver (a bisection or
a Broyden root finder stopped at a tolerance, an adaptive ODE solver) or an output that
cancels large terms (softmax's backward) scatters far more, and an exact backward would
be blamed for the scatter.

The estimate (after Moré and Wild's ECnoise): the forward at 13 (or 9) equally spaced points
x + k*delta*p (k = 1..13, p a random sign per element, delta a small relative step),
and the k-th differences of those values for k = 4, 5, 6.  The point itself is left out:
an output that jumps exactly there (a comparison like target == 1) is a discontinuity
the finite differences report, not noise.  A smooth function's k-th
differences shrink like delta**k; noise's do not, and for independent noise of standard
deviation s, gamma_k * mean(D^k f ** 2) = s**2 with gamma_k = (k!)**2 / (2k)!.  The
median of the three estimates is each output's noise; so few differences scatter by a
factor of a few, so when most outputs are noisy (a solver's tolerance applies to all of
them) none is taken below the median.  A kink within 13 delta of the point
(delta = sqrt(eps) relative: rare) raises one output's estimate; its stencil crosses the
kink too, where the kink test takes over.
"""

from __future__ import annotations

import math

import numpy as np

POINTS = 13  # k = 1 .. 13
# where one point fills a forward call (1e6 elements), 9: each is a forward call of the op,
# and the estimate barely moves (every order keeps 3 or more differences; the median floor
# below does the rest: measured, the largest of 4000 outputs' estimates of a known scatter
# goes from 2.5x to 2.8x it, the smallest stays at 0.7x)
STREAMED_POINTS = 9
ORDERS = (4, 5, 6)
GAMMA = {k: math.factorial(k) ** 2 / math.factorial(2 * k) for k in ORDERS}
BEYOND_ROUNDING = 16.0  # an output's noise counts when it exceeds this many eps * |f| (a few ulps is rounding)
NOTE_FROM = 1e3  # relative noise (to the largest |output|) this many eps is worth a note
STEPS_FROM = 1e4  # ... and from this many eps the difference steps grow to suit it
MAX_OUTPUTS = 4096  # outputs measured one by one; more are sampled


def forward_noise(batch, x: np.ndarray, eps_dtype: float) -> tuple:
    """(sigma, f): the (m,) noise of each output of `batch` (a BatchedForward) near the
    point x (flat) -- the ECnoise estimate, 0 where it is within rounding (BEYOND_ROUNDING
    eps |f|) -- and the outputs next to x (those measured).  Past MAX_OUTPUTS outputs a
    seeded sample of them is measured and the others get the sample's median; when one
    point fills a forward call the points go one at a time (a few vectors of memory)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    m = batch.m
    keep = None if m <= MAX_OUTPUTS else np.sort(np.random.default_rng(m).choice(m, MAX_OUTPUTS, replace=False))
    # signs from a private generator: measuring leaves the check's own random draws as they were
    flip = np.random.default_rng(x.size).integers(0, 2, x.size, dtype=np.int8).astype(bool)
    with np.errstate(invalid="ignore"):
        step = np.abs(x)  # sqrt(eps) max(1, |x|) with a random sign, 0 where x is not finite
        np.maximum(step, 1.0, out=step)
        step *= math.sqrt(eps_dtype)
        step[~np.isfinite(x)] = 0.0
        np.negative(step, out=step, where=flip)
    del flip
    per_call = batch.rows_per_call()
    points = POINTS if per_call > 1 else STREAMED_POINTS
    values = np.empty((points, m if keep is None else keep.size))
    if per_call > 1:
        for start in range(0, points, per_call):
            ks = np.arange(start + 1, min(points, start + per_call) + 1)
            got = batch(batch._representable(x[None] + ks[:, None] * step[None]), scratch=True)
            values[ks - 1] = got if keep is None else got[:, keep]
            del got
    else:
        point = np.empty(x.size)
        for k in range(points):
            np.multiply(step, k + 1, out=point)
            point += x  # x + (k + 1) step, in one buffer
            got = batch(batch._representable(point[None]), scratch=True)[0]
            values[k] = got if keep is None else got[keep]
    del step
    with np.errstate(all="ignore"):
        estimates = np.stack([np.sqrt(GAMMA[k] * np.mean(np.diff(values, n=k, axis=0) ** 2, axis=0))
                              for k in ORDERS])
        sigma = np.median(estimates, axis=0)
        typical = float(np.median(sigma))
        sigma = np.maximum(sigma, typical)
        size = np.max(np.abs(values), axis=0)
        sigma = np.where(np.isfinite(sigma) & (sigma > BEYOND_ROUNDING * eps_dtype * size), sigma, 0.0)
    if keep is None:
        return sigma, values[0]
    if not sigma.any():
        return np.zeros(0), values[0]
    full = np.full(m, typical if np.isfinite(typical) and typical > 0 and np.median(sigma) > 0 else 0.0)
    full[keep] = sigma
    return full, values[0]


def relative_noise(sigma: np.ndarray, f0: np.ndarray) -> float:
    """The largest noise relative to the largest |output| (0 without noise)."""
    if not sigma.size or not sigma.any():
        return 0.0
    with np.errstate(all="ignore"):
        finite = np.abs(f0[np.isfinite(f0)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1e-300)
    return float(sigma.max()) / scale


def noise_note(pt, w: str, batch, eps_dtype: float) -> None:
    """A note on the check when the forward's noise w.r.t. input w is far beyond rounding."""
    if batch.noise_eps <= NOTE_FROM * eps_dtype:
        return
    grown = batch.effective_eps(eps_dtype) > eps_dtype
    pt.note("forward_noise", (
        f"the forward is noisy beyond rounding as {w} varies (an iterative solver or a tolerance inside the op?): "
        f"values near the point scatter by up to {batch.noise_eps:.2g} of the largest output "
        f"({batch.noise_eps / eps_dtype:.3g}x the dtype's rounding); finite differences allow for that scatter"
        + (" and use steps sized for it" if grown else "") + ", so it is not blamed on the backward"))
