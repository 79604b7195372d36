"""Which outputs move when an input element moves: the Jacobian's structural nonzeros
w.r.t. one input, from forward calls (jacobian.fd_entries' first step).

1. *Index bits* (every size): row pair b perturbs the elements whose index has bit b set,
   and those whose index has it clear.  When every output depends on at most one element
   (elementwise, broadcasting, permuting ops) exactly one row of each pair moves it, and
   the bits that did spell its element's index: 2·log2(n) rows for any n.
2. *Strided index bits* (large inputs, when 1 fails): the same within each residue class
   j mod s, for s = 2, 4, 8, ...: an output depending on a few neighbouring elements (a
   softmax or a norm over a short last dimension, a convolution, a banded op) depends on
   at most one element of each class once s exceeds its window: s·2·log2(n/s) rows.
3. *One row per element* otherwise (n rows), or, where the caller cannot afford n rows
   (a Jacobian too large to be dense), nothing: PatternTooCostly.

An output "moves" when it changes by more than MOVE_ROUNDING epsilons of itself plus the
batch's measured noise.  A vectorized kernel computes the same element in its main loop
in one row and in its scalar tail in another (the tail falls where the batch ends, or a
thread's share does), an ulp apart: that is not a dependency.  A dependency smaller than
this threshold is rounding too: it is left off the pattern, where the comparisons already
allow each entry FD_SAFETY times the rounding of a difference over the step (several
times larger), so it cannot fail a correct backward.
"""

from __future__ import annotations

import math

import numpy as np

from gradcheck_cli.op.batched import BatchedForward
from gradcheck_cli.op.runner import CHUNK_ELEMENTS

MOVE_ROUNDING = 2.0  # epsilons of |f| an output must change by to count as moved
NEAR = 4.0  # a dependency seen in some bit pairs only, within this many thresholds: rounding, not a dependency
STRIDE_FROM = 1024  # inputs this large try strided index bits before one row per element
STRIDE_SHARE = 4  # ... while they cost at most n / STRIDE_SHARE rows


class PatternTooCostly(Exception):
    """Neither index bits found the pattern and one row per element was not allowed."""


def move_threshold(f0: np.ndarray, eps_dtype: float, batch_noise: np.ndarray) -> np.ndarray:
    """(m,) how far an output may change without counting as moved (see the module docstring)."""
    with np.errstate(invalid="ignore"):
        return MOVE_ROUNDING * eps_dtype * np.nan_to_num(np.abs(f0), nan=0.0, posinf=0.0) + 4 * batch_noise


def rows_per_call(batch: BatchedForward) -> int:
    """Rows per batched call, leaving room for the unperturbed row each call carries."""
    return max(1, CHUNK_ELEMENTS // max(1, batch.n_in + batch.m) - 1)


def with_base(batch: BatchedForward, x: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate `block` together with the unperturbed point, so differences are taken
    between values computed the same way (the same batch, the same kernel)."""
    out = batch(np.concatenate([x[None], block]))
    return out[1:], out[0]


def _index_bits(count: int) -> int:
    return max(1, int(math.ceil(math.log2(count)))) if count > 1 else 1


def bit_rows(n: int, stride: int = 1) -> int:
    """Rows (without the unperturbed ones) strided index bits need."""
    return stride * 2 * _index_bits(-(-n // stride))


class _Residue:
    """What the bit pairs of one residue class have shown, per output."""

    def __init__(self, m: int):
        self.code = np.zeros(m, dtype=np.int64)  # the bits whose 'set' row moved the output
        self.pairs = np.zeros(m, dtype=np.int32)  # pairs that moved it at all
        self.biggest = np.zeros(m)  # its largest change

    def add(self, bit: int, d_on: np.ndarray, d_off: np.ndarray, threshold: np.ndarray) -> bool:
        """One pair's changes; False when an output moved in both rows (two dependencies)."""
        with np.errstate(invalid="ignore"):
            on, off = ~(d_on <= threshold), ~(d_off <= threshold)
        if np.any(on & off):
            return False
        self.code |= on.astype(np.int64) << bit
        self.pairs += on | off
        np.fmax(self.biggest, np.fmax(d_on, d_off), out=self.biggest)
        return True

    def entries(self, bits: int, residue: int, stride: int, n: int, threshold: np.ndarray):
        """(columns, outputs) of the dependencies, or None when the pairs disagree."""
        partial = (self.pairs > 0) & (self.pairs < bits)
        if np.any(partial & ~(self.biggest <= NEAR * threshold)):  # moved in some pairs only, clearly
            return None
        oo = np.flatnonzero(self.pairs == bits)  # a change within rounding of the threshold is none
        jj = residue + stride * self.code[oo]
        if np.any(jj >= n):
            return None
        return jj, oo


def bit_pattern(batch: BatchedForward, x: np.ndarray, plus: np.ndarray, threshold: np.ndarray,
                stride: int = 1) -> tuple | None:
    """(columns, outputs, rows evaluated) when every output depends on at most one element
    of each residue class j mod `stride` (stride 1: on at most one element), else None.
    `plus` is each element's step."""
    found, _ = strided_bits(batch, x, plus, threshold, stride)
    return found


def strided_bits(batch: BatchedForward, x: np.ndarray, plus: np.ndarray, threshold: np.ndarray,
                 stride: int) -> tuple:
    """(bit_pattern's answer, rows evaluated): the rows go a call at a time and stop as soon
    as a pair shows an output depending on two elements of a class (a dense op costs one call)."""
    n, m = x.size, batch.m
    bits = _index_bits(-(-n // stride))
    total = stride * 2 * bits
    per = max(2, rows_per_call(batch) // 2 * 2)  # whole pairs in every call
    members = [np.arange(r, n, stride) for r in range(stride)]
    jj, oo = [], []
    state, evaluated = None, 0
    for start in range(0, total, per):
        rows = np.arange(start, min(total, start + per))
        block = np.repeat(x[None], rows.size, axis=0)
        for k, row in enumerate(rows.tolist()):
            r, b, clear = row // (2 * bits), (row // 2) % bits, row % 2
            idx = members[r]
            idx = idx[((np.arange(idx.size) >> b) & 1) != clear]
            block[k, idx] += plus[idx]
        out, base = with_base(batch, x, block)
        evaluated += rows.size + 1
        with np.errstate(invalid="ignore"):
            change = np.abs(out - base[None])
        del out, block
        for k in range(0, rows.size, 2):
            row = int(rows[k])
            r, b = row // (2 * bits), (row // 2) % bits
            if b == 0:
                state = _Residue(m)
            if not state.add(b, change[k], change[k + 1], threshold):
                return None, evaluated
            if b == bits - 1:
                found = state.entries(bits, r, stride, n, threshold)
                if found is None:
                    return None, evaluated
                jj.append(found[0])
                oo.append(found[1])
    return (np.concatenate(jj), np.concatenate(oo), evaluated), evaluated


def column_pattern(batch: BatchedForward, x: np.ndarray, plus: np.ndarray, threshold: np.ndarray) -> tuple:
    """Nonzeros by one row per element: the outputs that move when element j moves."""
    n = x.size
    jj, oo = [], []
    per = rows_per_call(batch)
    calls = 0
    for start in range(0, n, per):
        cols = np.arange(start, min(n, start + per))
        block = np.repeat(x[None], cols.size, axis=0)
        block[np.arange(cols.size), cols] += plus[cols]
        out, base = with_base(batch, x, block)
        calls += 1
        with np.errstate(invalid="ignore"):
            r, o = np.nonzero(~(np.abs(out - base[None]) <= threshold[None]))
        jj.append(cols[r])
        oo.append(o)
    jj = np.concatenate(jj) if jj else np.zeros(0, dtype=np.int64)
    oo = np.concatenate(oo) if oo else np.zeros(0, dtype=np.int64)
    return jj, oo, n + calls


def find_pattern(batch: BatchedForward, x: np.ndarray, plus: np.ndarray, threshold: np.ndarray, try_bits: bool,
                 allow_columns: bool) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(columns, outputs, rows evaluated, how): index bits, strided index bits, or one row
    per element (see the module docstring).  Raises PatternTooCostly when only one row per
    element would do and `allow_columns` is False."""
    n = x.size
    spent = 0
    if try_bits and n > 2:
        stride = 1
        while stride == 1 or (n >= STRIDE_FROM and bit_rows(n, stride) * STRIDE_SHARE <= n):
            found, used = strided_bits(batch, x, plus, threshold, stride)
            spent += used
            if found is not None:
                return found[0], found[1], spent, "bits" if stride == 1 else f"bits/{stride}"
            stride *= 2
    if not allow_columns:
        raise PatternTooCostly(n)
    jj, oo, used = column_pattern(batch, x, plus, threshold)
    return jj, oo, spent + used, "columns"
