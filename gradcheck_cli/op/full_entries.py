"""Full mode's bookkeeping, all of it O(nonzeros): autograd's Jacobian as grouped backward
results plus rows known exactly (Autograd), the entries every method is compared on per
input (InputEntries), the reference scale of each row and column, and gradient that
grouped calls put where no seeded row depends (leaks).

Nothing here is an (outputs x inputs) array unless the Jacobian itself is dense: grouped
backward results are (groups, N), a diagonal Jacobian's one row; rows redone one at a
time (one-hot, to localize a failure) are kept as their nonzero entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck_cli.op import verdict as oc
from gradcheck_cli.op.batched import VJPMany
from gradcheck_cli.op.jacobian import FDEntries, Grouping, one_hot_rows, seed_vectors

ROW_BLOCK_ELEMENTS = 4_000_000  # one-hot rows computed at once: rows x N at most this


def member(keys: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """np.isin(keys, pool) by sorting and bisecting (np.isin hashes all of `pool` first,
    even for no keys at all)."""
    if keys.size == 0 or pool.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pool = np.sort(pool)
    pos = np.minimum(np.searchsorted(pool, keys), pool.size - 1)
    return pool[pos] == keys


def grouped_backward(vjps: VJPMany, grouping: Grouping, m: int) -> np.ndarray:
    """(groups, N): one backward call per group of rows (batched where the backward allows),
    its seed vectors built a block at a time, never all (groups x m) at once."""
    n_total = sum(vjps.sizes)
    G = np.zeros((grouping.n_groups, n_total))
    per = max(1, ROW_BLOCK_ELEMENTS // max(1, n_total + m))
    for start in range(0, grouping.n_groups, per):
        groups = np.arange(start, min(grouping.n_groups, start + per))
        G[groups] = vjps(seed_vectors(grouping, m, groups))
    return G


@dataclass
class KnownRows:
    """Jacobian rows known exactly (one-hot backward calls), as their nonzero entries:
    keys row * N + column, sorted, and values (nan counts as nonzero)."""

    rows: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    N: int

    @classmethod
    def empty(cls, N: int) -> "KnownRows":
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0), N)

    def with_rows(self, rows: np.ndarray, dense: np.ndarray) -> "KnownRows":
        """These rows (their (k, N) values) added, replacing what was known of them."""
        r, c = np.nonzero(dense)
        keys = rows[r].astype(np.int64) * self.N + c
        vals = dense[r, c]
        stale = member(self.keys // max(self.N, 1), rows)
        keys = np.concatenate([self.keys[~stale], keys])
        vals = np.concatenate([self.values[~stale], vals])
        order = np.argsort(keys, kind="stable")
        return KnownRows(np.union1d(self.rows, rows), keys[order], vals[order], self.N)

    def lookup(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Values at (rows, global columns); 0 where the row has no entry."""
        if self.keys.size == 0 or rows.size == 0:
            return np.zeros(rows.size)
        want = rows.astype(np.int64) * self.N + cols
        pos = np.minimum(np.searchsorted(self.keys, want), self.keys.size - 1)
        return np.where(self.keys[pos] == want, self.values[pos], 0.0)

    def in_columns(self, off: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, columns within [off, off + n), values) of the entries in that block."""
        cols = self.keys % max(self.N, 1)
        here = (cols >= off) & (cols < off + n)
        return self.keys[here] // max(self.N, 1), cols[here] - off, self.values[here]


@dataclass
class Autograd:
    """Autograd's Jacobian: grouped backward results G (groups x N; entry (o, j) is
    G[group of o, j] / coefficient of o, exact for a row alone in its group) and rows
    redone one at a time (refined)."""

    G: np.ndarray
    grouping: Grouping
    refined: KnownRows

    @classmethod
    def initial(cls, G: np.ndarray, grouping: Grouping) -> "Autograd":
        return cls(G, grouping, KnownRows.empty(G.shape[1]))

    def singles(self) -> np.ndarray:
        """(m,) bool: rows alone in their group (G holds them exactly)."""
        g = self.grouping
        counts = np.bincount(g.colors, minlength=g.n_groups)
        return counts[g.colors] == 1

    def exact_mask(self) -> np.ndarray:
        """(m,) bool: rows known exactly (alone in their group, or redone)."""
        mask = self.singles()
        mask[self.refined.rows] = True
        return mask

    def value(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Autograd's entries at (rows, global columns): refined rows' exact values, else
        the grouped call's (exact for a row alone in its group)."""
        g = self.grouping
        out = self.G[g.colors[rows], cols] / g.coef[rows]
        if self.refined.rows.size:
            here = member(rows, self.refined.rows)
            out[here] = self.refined.lookup(rows[here], cols[here])
        return out

    def exact_nonzeros(self, off: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, columns within the input at off, values) of autograd's nonzeros in rows
        known exactly."""
        g = self.grouping
        single = np.flatnonzero(self.singles())
        single = single[~member(single, self.refined.rows)]
        ri, ci = np.nonzero(self.G[g.colors[single], off:off + n])
        rows = single[ri]
        vals = self.G[g.colors[rows], off + ci] / g.coef[rows]
        r2, c2, v2 = self.refined.in_columns(off, n)
        return np.concatenate([rows, r2]), np.concatenate([ci, c2]), np.concatenate([vals, v2])

    def with_rows(self, vjps: VJPMany, rows: np.ndarray, m: int) -> "Autograd":
        """These rows redone exactly by one-hot backward calls, a block at a time."""
        refined = self.refined
        per = max(1, ROW_BLOCK_ELEMENTS // max(1, self.G.shape[1] + m))
        for start in range(0, rows.size, per):
            block = rows[start:start + per]
            refined = refined.with_rows(block, one_hot_rows(vjps, block, m))
        return Autograd(self.G, self.grouping, refined)


@dataclass
class InputEntries:
    """Everything compared for one input: entry coordinates and values by each method."""

    rows: np.ndarray
    cols: np.ndarray
    auto: np.ndarray
    fd: np.ndarray
    fd_err: np.ndarray
    sym: np.ndarray | None
    lo: np.ndarray
    hi: np.ndarray


def entries(ad: Autograd, fd: FDEntries, off: int, sym: np.ndarray | None, m: int,
            fixed: np.ndarray | None = None) -> InputEntries:
    """Every entry to compare: finite differences' nonzeros, autograd's where finite
    differences saw none (in rows known exactly), and --reference's.  Columns in `fixed`
    (non-finite input elements, never stepped) are left out."""
    e = _all_entries(ad, fd, off, sym, m)
    if fixed is None or not fixed.any():
        return e
    keep = ~fixed[e.cols]
    return InputEntries(*(None if a is None else a[keep] for a in (e.rows, e.cols, e.auto, e.fd, e.fd_err, e.sym,
                                                                    e.lo, e.hi)))


def _all_entries(ad: Autograd, fd: FDEntries, off: int, sym: np.ndarray | None, m: int) -> InputEntries:
    n = fd.n_in
    a = ad.value(fd.rows, off + fd.cols)
    pattern_keys = fd.rows.astype(np.int64) * n + fd.cols
    off_rows, off_cols, off_vals = ad.exact_nonzeros(off, n)
    fresh = ~member(off_rows.astype(np.int64) * n + off_cols, pattern_keys)
    off_rows, off_cols, off_vals = off_rows[fresh], off_cols[fresh], off_vals[fresh]
    rows, cols, auto = [fd.rows, off_rows], [fd.cols, off_cols], [a, off_vals]
    if sym is not None:  # exact nonzeros neither method put an entry on
        sr, sc = np.nonzero(sym)
        extra = ~member(sr.astype(np.int64) * n + sc, np.concatenate([pattern_keys, off_rows * n + off_cols]))
        sr, sc = sr[extra], sc[extra]
        rows.append(sr)
        cols.append(sc)
        auto.append(ad.value(sr, off + sc))
    rows, cols, auto = np.concatenate(rows), np.concatenate(cols), np.concatenate(auto)
    k = fd.rows.size
    fd_vals = np.zeros(rows.size)
    fd_vals[:k] = fd.est
    fd_err = fd.rounding(rows, cols)
    fd_err[:k] = fd.err
    lo, hi = np.full(rows.size, np.nan), np.full(rows.size, np.nan)
    lo[:k], hi[:k] = fd.lo, fd.hi
    sym_vals = None if sym is None else sym[rows, cols]
    return InputEntries(rows, cols, auto, fd_vals, fd_err, sym_vals, lo, hi)


def scales(found: dict, m: int, offsets: dict, sizes: dict) -> tuple[np.ndarray, np.ndarray]:
    """Largest |reference| per output row (m,) and per global input column (N,)."""
    srow = np.zeros(m)
    scol = np.zeros(sum(sizes.values()))
    for w, e in found.items():
        ref = e.sym if e.sym is not None else e.fd
        mag = np.where(np.isfinite(ref), np.abs(ref), 0.0)
        np.maximum.at(srow, e.rows, mag)
        np.maximum.at(scol, offsets[w] + e.cols, mag)
    return srow, scol


def leaks(ad: Autograd, fds: dict, offsets: dict, m: int, tol: dict, srow: np.ndarray, scol: np.ndarray):
    """Multi-row groups whose gradient lands where none of their rows depends: (groups, count).
    Works on the multi-row groups' part of G only (a diagonal Jacobian: one row)."""
    g = ad.grouping
    counts = np.bincount(g.colors, minlength=g.n_groups)
    multi = np.flatnonzero(counts > 1)
    if multi.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    exact = ad.exact_mask()
    # groups whose rows are all exact already are localized elsewhere
    all_exact = np.bincount(g.colors, weights=exact.astype(float), minlength=g.n_groups) == counts
    multi = multi[~all_exact[multi]]
    if multi.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    position = np.full(g.n_groups, -1)
    position[multi] = np.arange(multi.size)
    leftover = ad.G[multi]  # a copy: the pattern's entries are zeroed in it
    noise = np.zeros(m)
    inv_h = np.zeros(leftover.shape[1])
    for w, fd in fds.items():
        at = position[g.colors[fd.rows]]
        on = at >= 0
        leftover[at[on], offsets[w] + fd.cols[on]] = 0.0
        noise = np.maximum(noise, fd.noise)
        inv_h[offsets[w]:offsets[w] + fd.n_in] = 1.0 / fd.steps
    ac = np.abs(g.coef)
    a_g = np.bincount(g.colors, weights=ac, minlength=g.n_groups)[multi]
    b_g = np.bincount(g.colors, weights=ac * srow, minlength=g.n_groups)[multi]
    c_g = np.bincount(g.colors, weights=ac * noise, minlength=g.n_groups)[multi]
    allowed = (a_g[:, None] * (tol["atol"] + tol["scale"] * scol[None]) + tol["scale"] * b_g[:, None]
               + oc.FD_SAFETY * c_g[:, None] * inv_h[None])
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(leftover) <= allowed)
    del leftover, allowed
    return multi[bad.any(axis=1)], int(bad.sum())
