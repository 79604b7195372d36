"""Input mutation: whether the op changed its inputs in place, read against the pristine
float64 arrays its input tensors were made from (no copy is held)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradcheck_cli.op.memory import PIECE, owner


@dataclass(frozen=True)
class Pristine:
    """What input tensors held when they were made, without a copy: the float64 arrays
    make_tensors built them from, and the dtype it rounded them to."""

    arrays: dict
    dtype: str


def snapshot(tensors: dict, arrays: dict, dtype: str) -> Pristine:
    """The tensors' values now, to compare with after the op ran: a reference to the arrays
    and dtype make_tensors built them from, which costs nothing."""
    return Pristine(arrays, dtype)


def _same(now, before) -> bool:
    import torch

    if torch.equal(now, before):  # one pass when no element is nan (nan != nan)
        return True
    return torch.equal(torch.nan_to_num(now, nan=0.5), torch.nan_to_num(before, nan=0.5)) \
        and torch.equal(torch.isnan(now), torch.isnan(before))


def _same_numpy(now: np.ndarray, before: np.ndarray) -> bool:
    """_same for float64 arrays: equal, nan where nan (and inf where the largest float was,
    as nan_to_num makes them equal there too)."""
    big = np.finfo(np.float64).max
    for start in range(0, now.size, PIECE):
        a, b = now[start:start + PIECE], before[start:start + PIECE]
        with np.errstate(invalid="ignore"):
            ok = (a == b) | (np.isnan(a) & np.isnan(b))
        if not ok.all():
            fa = np.nan_to_num(a[~ok], nan=0.5, posinf=big, neginf=-big)
            fb = np.nan_to_num(b[~ok], nan=0.5, posinf=big, neginf=-big)
            if not (np.array_equal(fa, fb) and np.array_equal(np.isnan(a[~ok]), np.isnan(b[~ok]))):
                return False
    return True


def _same_as_array(t, arr: np.ndarray, dtype: str) -> bool:
    """Whether tensor t still holds torch.tensor(arr, dtype), compared a piece at a time."""
    import torch

    from gradcheck_cli.dtypes import torch_dtype

    td = torch_dtype(dtype)
    now = t.detach()
    if tuple(now.shape) != tuple(np.shape(arr)) or now.dtype != td:
        return False
    now, flat = now.reshape(-1), np.ravel(arr)
    own = owner(arr) if td == torch.float64 and now.device.type == "cpu" else None
    if own is not None:  # read in torch: .numpy() would give a copy-on-write clone a copy of its own
        own = own.reshape(-1)
        if torch.equal(now, own):  # one call, no temporaries: the usual answer
            return True
        return all(_same(now[a:a + PIECE], own[a:a + PIECE]) for a in range(0, flat.size, PIECE))
    if td == torch.float64 and now.device.type == "cpu":  # the array itself, no conversion: numpy is quicker
        return _same_numpy(now.numpy(), flat)
    for start in range(0, flat.size, PIECE):
        stop = min(flat.size, start + PIECE)
        if not _same(now[start:stop], torch.tensor(flat[start:stop], dtype=td, device=now.device)):
            return False
    return True


def mutated(tensors: dict, before: Pristine) -> list[str]:
    """Names whose values (or shapes) changed since the snapshot."""
    return [k for k, t in tensors.items() if not _same_as_array(t, before.arrays[k], before.dtype)]
