"""Random directions and finite differences along them (fast mode's projections and
remainder, determinism's and grad_output variety's random vectors): a direction is drawn
once and re-drawn piece by piece whenever needed, so at n = 1e6 no (k, n) array of
directions is held."""

from __future__ import annotations

import numpy as np

from gradcheck_cli.op.batched import BatchedForward
from gradcheck_cli.op.jacobian import default_step

DRAW_CHUNK = 65_536  # elements per step when a direction is re-drawn or combined piecewise


class Direction:
    """A random direction drawn once from `rng` and re-drawn piece by piece whenever it is
    needed again, so fast mode at n = 1e6 holds no (k, n) array of directions.  `draw`
    advances `rng` exactly as one standard_normal(count) would; with `mask` only the True
    elements are drawn (in index order) and the others are 0."""

    def __init__(self, rng: np.random.Generator, n: int, mask: np.ndarray | None = None):
        bit = rng.bit_generator
        self._kind, self._state = type(bit), bit.state
        self.n, self.mask = n, mask
        self.count = n if mask is None else int(np.count_nonzero(mask))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """The direction as one array, drawn from `rng` (which must be where __init__ saw it)."""
        if self.mask is None:
            return rng.standard_normal(self.n)
        u = np.zeros(self.n)
        u[self.mask] = rng.standard_normal(self.count)
        return u

    def again(self) -> np.ndarray:
        """The whole direction, drawn again."""
        out = np.empty(self.n)
        for a, b, vals in self.chunks():
            out[a:b] = vals
        return out

    def chunks(self):
        """(start, stop, values) pieces of the same direction, drawn again."""
        gen = np.random.Generator(self._kind())
        gen.bit_generator.state = self._state
        for start in range(0, self.n, DRAW_CHUNK):
            stop = min(self.n, start + DRAW_CHUNK)
            if self.mask is None:
                yield start, stop, gen.standard_normal(stop - start)
            else:
                part = self.mask[start:stop]
                vals = np.zeros(stop - start)
                vals[part] = gen.standard_normal(int(np.count_nonzero(part)))
                yield start, stop, vals


def direction_fd(batch: BatchedForward, x: np.ndarray, direction: Direction, norm: float, f0: np.ndarray,
                 eps: float | None, eps_dtype: float) -> tuple[np.ndarray, np.ndarray]:
    """J u for one direction u (max |u| = norm), by central differences along u with step
    halving: (m,) estimate and (m,) error estimate.  The four points x ± t·u/norm, x ± 2t·u/norm
    are built piece by piece and, when the batch runs one point per call, evaluated one at a
    time, keeping only running combinations: the working set is a few vectors, not 4 (n + m)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n = x.size
    norm = max(float(norm), 1e-300)
    eps_dtype = batch.effective_eps(eps_dtype)
    rel = default_step("central", eps_dtype) if eps is None else eps
    biggest = float(np.max(np.abs(x))) if x.size else 1.0
    if not np.isfinite(biggest):  # non-finite elements are never stepped (u is 0 there)
        finite = np.abs(x[np.isfinite(x)])
        biggest = float(np.max(finite)) if finite.size else 1.0
    t = rel * max(1.0, biggest)
    deltas = (1, -1, 2, -2)

    def points(ds, outs):  # x + d t u/norm for each d, the direction drawn once for them all
        for a, b, vals in direction.chunks():
            unit = vals / norm
            for d, out in zip(ds, outs):
                out[a:b] = x[a:b] + d * t * unit
        return outs

    m = batch.m

    def evaluate(p):  # one point per call; the result may be the op's own memory: read it at once
        return batch(p[None], scratch=True)[0]

    with np.errstate(all="ignore"):
        if batch.rows_per_call() >= len(deltas):  # small: all four points in one call
            pts = np.empty((len(deltas), n))
            points(deltas, pts)
            o1, om1, o2, om2 = batch(pts, scratch=True)
            del pts
            d1 = (o1 - om1) / (2 * t)
            biggest = np.maximum(np.abs(o1), np.abs(om1))
        else:
            # own copies before the next call (an op may hand back a buffer it reuses), and
            # only running combinations: (o1 - o-1) and the largest |output| so far
            p1, pm1 = points((1, -1), (np.empty(n), np.empty(n)))
            o1 = evaluate(p1)
            del p1
            d1, biggest = np.array(o1), np.abs(o1)
            del o1
            om1 = evaluate(pm1)
            del pm1
            np.subtract(d1, om1, out=d1)
            d1 /= 2 * t
            np.maximum(biggest, np.abs(om1), out=biggest)
            del om1
            p2, pm2 = points((2, -2), (np.empty(n), np.empty(n)))
            o2 = np.array(evaluate(p2))
            del p2
            om2 = evaluate(pm2)
            del pm2
        err = biggest  # filled in place, piece by piece
        for a in range(0, m, DRAW_CHUNK):
            b = min(m, a + DRAW_CHUNK)
            d2 = (o2[a:b] - om2[a:b]) / (4 * t)
            most = np.maximum(np.maximum(biggest[a:b], np.abs(o2[a:b])), np.abs(om2[a:b]))
            noise = 4 * eps_dtype * (np.abs(f0[a:b]) + most) + 4 * batch.noise[a:b]
            err[a:b] = np.abs(d1[a:b] - d2) / 3 + noise / t
        del o2, om2
        d1 *= norm
        err *= norm
    return d1, err



def one_sided(batch: BatchedForward, x: np.ndarray, direction: Direction, norm: float, f0: np.ndarray,
              eps: float | None, eps_dtype: float, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-sided slopes of outputs `rows` along u at x, (f(x + t u) - f(x)) / t and
    (f(x) - f(x - t u)) / t, as (low, high): at a kink (sort's tied elements, a relu at 0)
    any value between them is a valid derivative.  Two more forward calls; used only when
    the central difference along u disagrees with autograd."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    norm = max(float(norm), 1e-300)
    rel = default_step("central", batch.effective_eps(eps_dtype)) if eps is None else eps
    finite = np.abs(x[np.isfinite(x)])
    t = rel * max(1.0, float(finite.max()) if finite.size else 1.0)
    slopes = []
    for sign in (1.0, -1.0):
        point = np.empty_like(x)
        for a, b, vals in direction.chunks():
            point[a:b] = x[a:b] + sign * t * vals / norm
        out = np.array(batch(point[None], scratch=True)[0][rows])
        slopes.append(sign * (out - f0[rows]) / t * norm)
    return np.minimum(*slopes), np.maximum(*slopes)
