"""Random directions and finite differences along them (fast mode's projections and
remainder, determinism's and grad_output variety's random vectors): a direction is drawn
once and re-drawn piece by piece whenever needed, so at n = 1e6 no (k, n) array of
directions is held."""

from __future__ import annotations

import numpy as np

from gradcheck_cli.op.batched import BatchedForward
from gradcheck_cli.op.jacobian import DELTAS, default_step
from gradcheck_cli.op.memory import SMALL_PIECE


class Direction:
    """A random direction drawn once from `rng` and re-drawn piece by piece whenever it is
    needed again, so fast mode at n = 1e6 holds no (k, n) array of directions.  `draw`
    advances `rng` exactly as one standard_normal(count) would (random(count) for a
    `uniform` one); with `mask` only the True elements are drawn (in index order) and the
    others are 0."""

    def __init__(self, rng: np.random.Generator, n: int, mask: np.ndarray | None = None, uniform: bool = False):
        bit = rng.bit_generator
        self._kind, self._state = type(bit), bit.state
        self.n, self.mask, self.uniform = n, mask, uniform
        self.count = n if mask is None else int(np.count_nonzero(mask))

    def _values(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """count values: standard normal, or uniform in [-1, 1) (a fifth of the cost at 1e6
        elements, where fast mode draws each of its directions several times)."""
        if not self.uniform:
            return rng.standard_normal(count)
        vals = rng.random(count)
        vals *= 2.0
        vals -= 1.0
        return vals

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """The direction as one array, drawn from `rng` (which must be where __init__ saw it)."""
        if self.mask is None:
            return self._values(rng, self.n)
        u = np.zeros(self.n)
        u[self.mask] = self._values(rng, self.count)
        return u

    def skip(self, rng: np.random.Generator) -> None:
        """Advance `rng` (which must be where __init__ saw it) exactly as draw(rng) would,
        a piece at a time (nothing of the direction's size is held): the next draws from
        `rng` are then independent of this direction."""
        for start in range(0, self.count, SMALL_PIECE):
            self._values(rng, min(SMALL_PIECE, self.count - start))

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
        for start in range(0, self.n, SMALL_PIECE):
            stop = min(self.n, start + SMALL_PIECE)
            if self.mask is None:
                yield start, stop, self._values(gen, stop - start)
            else:
                part = self.mask[start:stop]
                vals = np.zeros(stop - start)
                vals[part] = self._values(gen, int(np.count_nonzero(part)))
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
    t = _step(x, eps, eps_dtype)
    deltas = DELTAS["central"]

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
            # u drawn once and the points made in one buffer; own copies of the outputs before
            # the next call (an op may hand back a buffer it reuses, or its input), and only
            # running combinations: (o1 - o-1) and the largest |output| so far
            unit = direction.again()
            unit /= norm
            p = np.empty(n)

            def at(d):  # x + d t u/norm, exactly as points() makes it
                np.multiply(unit, d * t, out=p)
                np.add(p, x, out=p)
                return evaluate(p)

            d1 = np.array(at(1))
            biggest = np.abs(d1)
            om1 = at(-1)
            np.subtract(d1, om1, out=d1)
            d1 /= 2 * t
            np.maximum(biggest, np.abs(om1), out=biggest)
            del om1
            o2 = np.array(at(2))
            om2 = at(-2)
            del p, unit
        err = biggest  # filled in place, piece by piece
        for a in range(0, m, SMALL_PIECE):
            b = min(m, a + SMALL_PIECE)
            d2 = (o2[a:b] - om2[a:b]) / (4 * t)
            most = np.maximum(np.maximum(biggest[a:b], np.abs(o2[a:b])), np.abs(om2[a:b]))
            noise = 4 * eps_dtype * (np.abs(f0[a:b]) + most) + 4 * batch.noise[a:b]
            err[a:b] = np.abs(d1[a:b] - d2) / 3 + noise / t
        del o2, om2
        d1 *= norm
        err *= norm
    return d1, err


def _step(x: np.ndarray, eps: float | None, eps_dtype: float) -> float:
    """The step t along a direction scaled to max |u| = 1: the central scheme's relative
    step (or eps) times the largest finite |x| (at least 1)."""
    rel = default_step("central", eps_dtype) if eps is None else eps
    biggest = float(np.max(np.abs(x))) if x.size else 1.0
    if not np.isfinite(biggest):  # non-finite elements are never stepped (u is 0 there)
        finite = np.abs(x[np.isfinite(x)])
        biggest = float(np.max(finite)) if finite.size else 1.0
    return rel * max(1.0, biggest)


def one_sided(batch: BatchedForward, x: np.ndarray, direction: Direction, norm: float, f0: np.ndarray,
              eps: float | None, eps_dtype: float, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-sided slopes of outputs `rows` along u at x, (f(x + t u) - f(x)) / t and
    (f(x) - f(x - t u)) / t, as (low, high): at a kink (sort's tied elements, a relu at 0)
    any value between them is a valid derivative.  Two more forward calls; used only when
    the central difference along u disagrees with autograd."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    norm = max(float(norm), 1e-300)
    t = _step(x, eps, batch.effective_eps(eps_dtype))
    slopes = []
    for sign in (1.0, -1.0):
        point = np.empty_like(x)
        for a, b, vals in direction.chunks():
            point[a:b] = x[a:b] + sign * t * vals / norm
        out = np.array(batch(point[None], scratch=True)[0][rows])
        slopes.append(sign * (out - f0[rows]) / t * norm)
    return np.minimum(*slopes), np.maximum(*slopes)
