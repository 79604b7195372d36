"""Jacobians of a black-box op: finite differences from forward calls, and autograd's
from backward calls, both using the Jacobian's sparsity.

Finite differences (float64, or the op's dtype when it cannot run in float64):

1. *Pattern*: which outputs move at all when input element j moves (an output that does
   not move is exactly 0 in every scheme, so it needs no more rows).  First 2·log2(n)
   rows that perturb the elements by the bits of their index: when every output depends
   on one element (elementwise, broadcasting, permutations) this already names it; for
   large inputs the same within residue classes j mod s (ops over short windows).
   Otherwise one row per element, x + h_j e_j, batched (pattern.py).
2. *Colouring*: columns that touch disjoint outputs are perturbed together (Curtis,
   Powell and Reid's compression): an elementwise op needs one group, x @ W as many
   groups as a row of W has elements.
3. *Stencils*: each group gets the scheme's rows (central: ±h, ±2h), and each nonzero
   entry reads its own output.  The 2h estimate gives the error estimate (step halving);
   the one-sided slopes at h and 2h tell a kink from curvature.

Autograd: output rows that share no column are seeded together, each with its own random
coefficient, in one backward call; entry (o, j) is the gradient at j divided by o's
coefficient.  Whatever lands on a column no seeded row should touch is a leak, and a
group with a leak or a wrong entry is redone one row at a time (one-hot), so a failure
is always localized to exact entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck_cli.op.batched import BatchedForward, VJPMany
from gradcheck_cli.op.pattern import bit_pattern, find_pattern, move_threshold, rows_per_call, with_base  # noqa: F401
from gradcheck_cli.tolerances import DTYPE_EPS, FD_SCHEMES

EPS = DTYPE_EPS
DELTAS = {"central": (1, -1, 2, -2), "forward": (1, 2), "richardson": (1, -1, 2, -2, 4, -4)}
OP_SCHEMES = FD_SCHEMES  # the expression engine's (complex falls back to richardson for black-box ops)
KINK_NOISE = 50.0  # a kink must stand this far above rounding noise
KINK_SHAPE = 0.2  # smooth: slope change at 2h is twice that at h, within this fraction
KINK_RELATIVE = 1e-6  # ... and it changes the slope by more than this fraction of the slope


def default_step(scheme: str, eps_dtype: float) -> float:
    """Relative step per scheme: the optimum of truncation vs rounding for the precision."""
    if scheme == "forward":
        return eps_dtype**0.5
    if scheme == "richardson":
        return eps_dtype ** (1 / 5.2)  # 1e-3 in float64: error O(h^6) against rounding eps/h
    return eps_dtype ** (1 / 3)


def step_sizes(x: np.ndarray, scheme: str, eps: float | None, eps_dtype: float) -> np.ndarray:
    """h per element: relative step times max(1, |x|), made exactly representable; 0 for an
    infinite or NaN element (a -inf mask is never stepped: x + h is still -inf, or NaN)."""
    rel = default_step(scheme, eps_dtype) if eps is None else eps
    with np.errstate(invalid="ignore"):
        h = rel * np.maximum(1.0, np.abs(x))
        exact = (x + h) - x
    return np.where(np.isfinite(x), np.where(exact > 0, exact, h), 0.0)


@dataclass
class FDEntries:
    """Finite-difference Jacobian of every output (flat) w.r.t. one input (flat), on its
    structural nonzeros; every other entry is exactly 0 with a rounding-level error."""

    name: str
    n_in: int
    m: int
    rows: np.ndarray  # output index per entry
    cols: np.ndarray  # input element per entry
    est: np.ndarray
    err: np.ndarray
    kink: np.ndarray  # bool: the stencil crossed a kink
    lo: np.ndarray  # one-sided slope range at kinks (nan elsewhere)
    hi: np.ndarray
    steps: np.ndarray  # h per input element
    f0: np.ndarray  # the outputs at the point (m,)
    noise: np.ndarray  # rounding noise of one output value (m,)
    groups: int
    rows_evaluated: int
    mode: str  # how forward calls were batched: vmap, native, loop
    scheme: str
    pattern: str = "columns"  # how the nonzeros were found: 'bits' (one dependency per output) or 'columns'

    def rounding(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Rounding error of the estimate at (rows, cols): the noise of a difference over h."""
        return self.noise[rows] / self.steps[cols]

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """(m, n) estimate and error estimate; off-pattern entries are 0 ± rounding."""
        jac = np.zeros((self.m, self.n_in))
        err = self.noise[:, None] / self.steps[None, :]
        jac[self.rows, self.cols] = self.est
        err[self.rows, self.cols] = self.err
        return jac, err


def greedy_colors(n_items: int, item: np.ndarray, key: np.ndarray, n_keys: int) -> np.ndarray:
    """Colour items so that no two items sharing a key get the same colour (first fit,
    in index order).  Dense problems get one colour per item without the search."""
    if item.size == 0:
        return np.zeros(n_items, dtype=np.int64)
    degree = np.bincount(key, minlength=n_keys)
    if degree.max() <= 1:
        return np.zeros(n_items, dtype=np.int64)
    if degree.max() * 2 > n_items or item.size > 4_000_000:
        return np.arange(n_items, dtype=np.int64)
    order = np.argsort(item, kind="stable")
    keys_sorted = key[order].tolist()
    bounds = np.searchsorted(item[order], np.arange(n_items + 1)).tolist()
    used = [0] * n_keys  # per key: bitset of colours already taken
    colors = [0] * n_items
    for i in range(n_items):
        ks = keys_sorted[bounds[i]:bounds[i + 1]]
        taken = 0
        for k in ks:
            taken |= used[k]
        c = (~taken & (taken + 1)).bit_length() - 1  # lowest free colour
        colors[i] = c
        bit = 1 << c
        for k in ks:
            used[k] |= bit
    return np.asarray(colors, dtype=np.int64)


def fd_entries(batch: BatchedForward, x: np.ndarray, f0: np.ndarray, scheme: str, eps: float | None,
               eps_dtype: float, try_bits: bool = True, allow_columns: bool = True) -> FDEntries:
    """Finite-difference Jacobian w.r.t. one input (see the module docstring).  Raises
    pattern.PatternTooCostly when index bits do not find the pattern and one row per
    element is not allowed (a Jacobian too large to be dense)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n, m = x.size, batch.m
    eps_dtype = batch.effective_eps(eps_dtype)  # a noisy forward: steps (and rounding) sized for its noise
    h = step_sizes(x, scheme, eps, eps_dtype)
    deltas = DELTAS[scheme]
    disp = np.stack([batch._representable((x + d * h)[None])[0] - x for d in deltas])  # actual steps
    noise = 4 * eps_dtype * np.abs(f0) + 4 * batch.noise
    # 1. pattern: which outputs move when element j moves
    threshold = move_threshold(f0, eps_dtype, batch.noise)
    plus = disp[deltas.index(1)]
    jj, oo, rows_evaluated, pattern = find_pattern(batch, x, plus, threshold, try_bits, allow_columns)
    del threshold
    # 2. colouring: columns with disjoint outputs share rows
    colors = greedy_colors(n, jj, oo, m)
    n_groups = int(colors.max()) + 1 if n else 0
    # 3. stencils per group, entries read their own output
    order = np.argsort(colors[jj], kind="stable")
    jj, oo = jj[order], oo[order]
    entry_color = colors[jj]
    values = np.empty((jj.size, len(deltas)))
    base_values = np.empty(jj.size)  # f at the point, from the same call as the entry's stencil
    nd = len(deltas)
    groups_per_call = max(1, rows_per_call(batch) // nd)
    members = np.argsort(colors, kind="stable")
    member_bounds = np.searchsorted(colors[members], np.arange(n_groups + 1))
    entry_bounds = np.searchsorted(entry_color, np.arange(n_groups + 1))
    for g0 in range(0, n_groups, groups_per_call):
        g1 = min(n_groups, g0 + groups_per_call)
        if entry_bounds[g0] == entry_bounds[g1]:
            continue  # no output moved for these columns: nothing to difference
        block = np.repeat(x[None], (g1 - g0) * nd, axis=0)
        for g in range(g0, g1):
            cols = members[member_bounds[g]:member_bounds[g + 1]]
            for k in range(nd):
                block[(g - g0) * nd + k, cols] += disp[k, cols]
        out, base = with_base(batch, x, block)
        out = out.reshape(g1 - g0, nd, m)
        rows_evaluated += block.shape[0] + 1
        sl = slice(entry_bounds[g0], entry_bounds[g1])
        values[sl] = out[(entry_color[sl] - g0)[:, None], np.arange(nd)[None, :], oo[sl][:, None]]
        base_values[sl] = base[oo[sl]]
    est, err, kink, lo, hi = combine(scheme, deltas, values, base_values, disp[:, jj], noise[oo])
    return FDEntries(batch.name, n, m, oo, jj, est, err, kink, lo, hi, h, f0, noise, n_groups, rows_evaluated,
                     batch.mode, scheme, pattern)


def combine(scheme: str, deltas: tuple, values: np.ndarray, f0: np.ndarray, disp: np.ndarray, noise: np.ndarray):
    """Estimate, error estimate and kink range per entry from its stencil values.
    values: (E, nd); disp: (nd, E) actual steps; noise: (E,) rounding of one value."""
    f = {d: values[:, k] for k, d in enumerate(deltas)}
    t = {d: disp[k] for k, d in enumerate(deltas)}
    e = values.shape[0]
    kink = np.zeros(e, dtype=bool)
    lo = np.full(e, np.nan)
    hi = np.full(e, np.nan)
    with np.errstate(all="ignore"):
        h = np.abs(t[1])
        rounding = noise / h
        if scheme == "forward":
            d1, d2 = (f[1] - f0) / t[1], (f[2] - f0) / t[2]
            return d1, np.abs(d1 - d2) + 2 * rounding, kink, lo, hi
        d1 = (f[1] - f[-1]) / (t[1] - t[-1])
        d2 = (f[2] - f[-2]) / (t[2] - t[-2])
        if scheme == "central":
            est, err = d1, np.abs(d1 - d2) / 3 + rounding
        else:  # richardson: central at h, 2h, 4h extrapolated twice
            d4 = (f[4] - f[-4]) / (t[4] - t[-4])
            r1, r2 = (4 * d1 - d2) / 3, (4 * d2 - d4) / 3
            est = (16 * r1 - r2) / 15
            err = np.abs(est - r1) + 4 * rounding
        fwd, bwd = (f[1] - f0) / t[1], (f0 - f[-1]) / (-t[-1])
        fwd2, bwd2 = (f[2] - f0) / t[2], (f0 - f[-2]) / (-t[-2])
        bend1, bend2 = fwd - bwd, fwd2 - bwd2  # smooth: bend2 = 2 * bend1 (curvature times step)
        size = np.maximum(np.abs(bend1), np.abs(bend2))
        # a kink changes the slope by a fair fraction of itself; rounding noise in an op that
        # cancels large terms (a matmul) can beat `rounding` (scaled by |f|) but not this
        slope = np.maximum(np.abs(fwd), np.abs(bwd))
        kink = (size > KINK_NOISE * rounding) & (size > KINK_RELATIVE * slope) & \
            (np.abs(bend2 - 2 * bend1) > KINK_SHAPE * size)
        kink &= np.isfinite(size)
    lo = np.where(kink, np.minimum(fwd, bwd), np.nan)
    hi = np.where(kink, np.maximum(fwd, bwd), np.nan)
    return est, err, kink, lo, hi


# ---- autograd, grouped -------------------------------------------------------------------

@dataclass
class Grouping:
    """Output rows seeded together in one backward call, with their coefficients."""

    colors: np.ndarray  # (m,) group of each output row
    coef: np.ndarray  # (m,) random coefficient of each row, |c| in [1, 2)
    n_groups: int


def group_rows(fds: list[FDEntries], offsets: list[int], m: int, rng: np.random.Generator) -> Grouping:
    """Rows that share no column (over every input) go into one group."""
    rows = np.concatenate([fd.rows for fd in fds]) if fds else np.zeros(0, dtype=np.int64)
    cols = np.concatenate([fd.cols + off for fd, off in zip(fds, offsets)]) if fds else np.zeros(0, dtype=np.int64)
    n_cols = offsets[-1] + fds[-1].n_in if fds else 0
    colors = greedy_colors(m, rows, cols, max(1, n_cols))
    coef = rng.uniform(1.0, 2.0, m) * rng.choice(np.array([-1.0, 1.0]), m)
    return Grouping(colors, coef, int(colors.max()) + 1 if m else 0)


def seed_vectors(grouping: Grouping, m: int, groups: np.ndarray | None = None) -> np.ndarray:
    """(k, m) grad_output vectors, one per group (all groups, or those listed)."""
    groups = np.arange(grouping.n_groups) if groups is None else np.asarray(groups)
    position = np.full(max(1, grouping.n_groups), -1)
    position[groups] = np.arange(groups.size)
    pos = position[grouping.colors]
    keep = pos >= 0
    vectors = np.zeros((groups.size, m))
    vectors[pos[keep], np.arange(m)[keep]] = grouping.coef[keep]
    return vectors


def one_hot_rows(vjps: VJPMany, rows: np.ndarray, m: int) -> np.ndarray:
    """(len(rows), N): exact Jacobian rows by one-hot grad_outputs."""
    vectors = np.zeros((rows.size, m))
    vectors[np.arange(rows.size), rows] = 1.0
    return vjps(vectors)
