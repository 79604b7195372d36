"""Finite-difference step choice: the steps each scheme tries per element, the rows a
batch evaluates (each candidate's stencil and the noise probe), and the rounding noise
the probe measures.  finite_diff.py's docstring explains the rule; this is its code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = float(np.finfo(np.float64).eps)
DEFAULT_STEPS = {"central": EPS ** (1 / 3), "forward": EPS**0.5, "richardson": 1e-3, "complex": 1e-20}
# multiples of h each real scheme evaluates (the complex step's rows are built in make_plan)
STENCILS = {"central": (1, -1, 2, -2), "forward": (1, 2), "richardson": (1, -1, 2, -2, 4, -4)}
# The noise probe: values at x + k*delta (complex: each + ih).  Unevenly spaced on purpose:
# at even spacing the rounding errors of an intermediate like 1 + x**2 can advance by a
# near-constant fraction of an ulp per point and look smooth, hiding the noise.
PROBE_POINTS = (-3.83, -2.71, -1.93, -0.87, 0.0, 0.61, 1.47, 2.39, 3.67)
SCALE_POWERS = (0.0, 0.5, 1.0)  # candidate scales |x|**p, when |x| is far from 1
MIN_SCALE = 1e-4  # smallest scale for elements near 0 (h = H * 1e-4)
TINY_X = 1e-12  # below this |x| the complex step also tries h = 1e-8 |x|
PROBE = 1e-5  # the noise probe's spacing, relative to min(1, |x|) (at least MIN_SCALE)


def _residual_projector(points: tuple, degree: int = 3) -> np.ndarray:
    """The matrix taking values at `points` to their residuals from the least-squares
    polynomial of `degree`: what is left is noise (plus curvature far below it)."""
    k = np.asarray(points, dtype=np.float64)
    v = np.vander(k, degree + 1)
    return np.eye(k.size) - v @ np.linalg.pinv(v)


_PROBE_RESIDUAL = _residual_projector(PROBE_POINTS)
_PROBE_FIT = np.linalg.pinv(np.vander(np.asarray(PROBE_POINTS), 4))  # rows: coefficients of k^3 .. k^0


def _representable(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """h rounded so that x + h - x == h exactly (the difference quotient divides by the
    step actually taken); a step that vanishes in x + h keeps its nominal value."""
    taken = (x + h) - x
    return np.where(taken > 0, taken, h)


def step_sizes(scheme: str, x: np.ndarray, eps: float | None) -> np.ndarray:
    """h per element: `eps` (or the scheme's default) times max(1, |x|), made exactly
    representable so x + h - x == h.  This is the whole rule under --eps."""
    rel = DEFAULT_STEPS[scheme] if eps is None else eps
    h = rel * np.maximum(1.0, np.abs(x))
    return h if scheme == "complex" else _representable(x, h)


def _near_one(ax: np.ndarray) -> np.ndarray:
    return (ax >= 10**-0.5) & (ax <= 10**0.5)


def single_scale(x: np.ndarray) -> np.ndarray:
    """Per element, whether its default step has a single candidate scale (|x| within a
    factor 3 of 1, where every candidate would be max(1, |x|))."""
    return _near_one(np.abs(np.asarray(x, dtype=np.float64)))


def candidate_scales(x: np.ndarray) -> list[np.ndarray]:
    """Scales the default step is tried at, per element: |x|**p for p in SCALE_POWERS (at
    least MIN_SCALE), except max(1, |x|) alone for |x| within a factor 3 of 1.  One list
    entry per candidate; a single entry when every element is near 1.  An element's
    candidates depend on it alone, so differencing a subset gives the same numbers."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    near = _near_one(ax)
    if ax.size == 0 or np.all(near):
        return [np.maximum(1.0, ax)]
    with np.errstate(all="ignore"):
        return [np.where(near, np.maximum(1.0, ax), np.maximum(MIN_SCALE, np.where(np.isfinite(ax), ax, 1.0) ** p))
                for p in SCALE_POWERS]


def plan_rows(scheme: str, x: np.ndarray, eps: float | None) -> int:
    """How many rows make_plan(scheme, x, eps) has, without building it."""
    ax = np.abs(x)
    if scheme == "complex":
        n_cand = 2 if eps is None and np.any((ax > 0) & (ax < TINY_X)) else 1
        return n_cand * (len(PROBE_POINTS) + 1)
    n_cand = 1 if eps is not None or np.all(_near_one(ax)) else len(SCALE_POWERS)
    return n_cand * len(STENCILS[scheme]) + len(PROBE_POINTS) - 1


def candidate_steps(scheme: str, x: np.ndarray, eps: float | None) -> np.ndarray:
    """(n_candidates, n) steps to try: the single rule under `eps`, else the default
    relative step at each candidate scale."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if eps is not None:
        return step_sizes(scheme, x, eps)[None]
    if scheme == "complex":
        # 1e-20 * max(1, |x|) is far below any scale the function has, unless x itself is
        # tinier still (log at 1e-300): then a step of 1e-8 |x|, as long as it stays normal
        default = step_sizes(scheme, x, None)
        ax = np.abs(x)
        if not np.any((ax > 0) & (ax < TINY_X)):
            return default[None]
        return np.stack([default, np.where((ax > 0) & (ax < TINY_X), np.maximum(1e-8 * ax, 1e-310), default)])
    rel = DEFAULT_STEPS[scheme]
    fallback = step_sizes(scheme, x, None)
    out = []
    for s in candidate_scales(x):
        nominal = rel * s
        taken = (x + nominal) - x
        # a step that x + h rounds away (or distorts: h below a few ulps of x) measures
        # nothing; that candidate becomes the max(1, |x|) one, which always fits
        out.append(np.where((taken >= 0.5 * nominal) & (taken <= 2 * nominal), taken, fallback))
    return np.stack(out)


@dataclass
class Plan:
    """The rows a scheme evaluates: each row moves every element by pert[row, element]."""

    scheme: str
    steps: np.ndarray  # (n_cand, n_in)
    pert: np.ndarray  # (n_rows, n_in), complex for the complex step
    index: dict  # (candidate or "probe", multiple) -> row
    row_cand: np.ndarray  # (n_rows,) candidate of each row, -1 for probe rows
    probe_dev: np.ndarray  # (n_probe, n_in) how far rounding moved each probe point, in units of delta

    @property
    def n_rows(self) -> int:
        return self.pert.shape[0]


def make_plan(scheme: str, x: np.ndarray, eps: float | None) -> Plan:
    """Every row to evaluate for the flat elements x: each candidate's stencil, then the noise probe."""
    steps = candidate_steps(scheme, x, eps)
    rows, index, owner = [], {}, []
    # the noise probe: values at x + k*delta, closely enough spaced that what a cubic
    # does not fit is rounding noise, not the function's curvature.  x + k*delta rounds;
    # the offsets actually taken are kept, and the fit corrects for the difference
    ax = np.abs(x)
    if scheme == "complex":  # no real step to keep up with: probe at the scale of x itself
        delta = np.maximum(PROBE * np.where(ax > 0, np.minimum(1.0, ax), MIN_SCALE), np.finfo(np.float64).tiny)
    else:
        delta = PROBE * np.maximum(MIN_SCALE, np.minimum(1.0, ax))
    offsets = np.stack([(x + k * delta) - x for k in PROBE_POINTS])
    dev = (offsets - np.multiply.outer(PROBE_POINTS, delta)) / delta
    if scheme == "complex":
        for c, h in enumerate(steps):
            for k, off in zip(PROBE_POINTS, offsets):
                index[(c, k)] = len(rows)
                rows.append(off + 1j * h)
                owner.append(c)
            index[(c, "2h")] = len(rows)  # truncation, which only a long step makes visible
            rows.append(2j * h)
            owner.append(c)
        return Plan(scheme, steps, np.array(rows, dtype=np.complex128), index, np.array(owner), dev)
    for c, h in enumerate(steps):
        for k in STENCILS[scheme]:
            index[(c, k)] = len(rows)
            rows.append(k * h)
            owner.append(c)
    for k, off in zip(PROBE_POINTS, offsets):
        if k:
            index[("probe", k)] = len(rows)
            rows.append(off)
            owner.append(-1)
    return Plan(scheme, steps, np.array(rows, dtype=np.float64), index, np.array(owner), dev)


def probe_noise(v: dict, dev: np.ndarray) -> np.ndarray:
    """Rounding noise of values v[k] at x + (k + dev[k])*delta (k in PROBE_POINTS): the
    standard deviation of their residuals from a cubic fit in k.  The tiny deviations
    `dev` (the rounding of x + k*delta) are taken out first, through the fitted slope."""
    shape = np.broadcast_shapes(*(np.shape(v[k]) for k in PROBE_POINTS))
    stack = np.stack([np.broadcast_to(v[k], shape) for k in PROBE_POINTS])
    slope = np.tensordot(_PROBE_FIT[-2], stack, axes=(0, 0))  # d value / dk at k = 0
    stack = stack - slope[None] * dev
    resid = np.tensordot(_PROBE_RESIDUAL, stack, axes=(1, 0))
    scale = np.max(np.abs(resid), axis=0)  # values near 1e300 would overflow their squares
    safe = np.where(scale > 0, scale, 1.0)
    return scale * np.sqrt(np.sum(np.square(resid / safe), axis=0) / (len(PROBE_POINTS) - 4))
