"""Memory the op gate shares with the op: large float64 inputs handed to the op
copy-on-write from memory torch owns (torch_backed / owner), and glibc told to return
freed blocks at once (release_freed_memory), so that a 1e6-element check peaks at a small
multiple of its input (issue 7).  The op's own temporaries go back too: recycling them in
the heap between its calls halved a 1e6-element fast-mode check's time (0.6 s to 0.3 s)
but raised its peak by 75-110 MiB, past issue 7's goal; the check is within issue 16's
time goal without it (benchmarks/bench_op_fast.py)."""

from __future__ import annotations

import sys
import weakref
from typing import Any

import numpy as np

PIECE = 1 << 18  # elements handled at a time where a full-size temporary would cost memory
SMALL_PIECE = 65_536  # elements per piece where a vector is re-drawn, compared or reduced piecewise

_RELEASED = []
RELEASE_FROM = 1_000_000  # input + output elements from which freed memory goes straight back (see below)


def release_freed_memory() -> None:
    """Have glibc return freed blocks of 1 MiB and more to the system at once (Linux/glibc
    only; elsewhere nothing).  By default glibc raises its mmap threshold to the largest
    block freed so far, after which 8 MB arrays come from the heap, and the heap keeps what
    they leave behind: a 1e6-element fast-mode check allocates and frees hundreds of them,
    and its resident size would grow by tens of MB that nothing uses.  Process-wide and
    permanent (glibc has no way back to the adaptive threshold); called once, by checks of
    that size."""
    if _RELEASED or not sys.platform.startswith("linux"):
        return
    _RELEASED.append(True)
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, RETURNED)  # glibc's malloc.h; absent elsewhere (musl)
        libc.malloc_trim(0)  # what the heap already holds free goes back too
    except (OSError, AttributeError):
        pass


M_MMAP_THRESHOLD = -3  # glibc's malloc.h
RETURNED = 1 << 20  # blocks from this size on are mapped for themselves and returned when freed


SHARE_FROM = 1 << 16  # float64 inputs of this many elements and more are handed to the op copy-on-write


def torch_backed(arr: np.ndarray) -> np.ndarray:
    """arr's values in memory that torch owns, as a read-only numpy view of it (the owning
    tensor is the view's .base).  make_tensors then hands the op a copy-on-write clone of
    that tensor instead of a copy: the op reads our pristine values in place, and only an op
    that writes into its input gets (and pays for) a copy of its own, so the pristine
    values, which the mutation check, finite differences and the report use, stay as they
    were.  At 1e6 elements that is 8 MB less for as long as the check runs (issue 7).
    Small arrays, other dtypes and a torch without copy-on-write clones: arr as it is.

    The owning tensor must never be accessed for writing (not even .numpy() or
    .data_ptr(), which would give it a copy of its own and leave this view pointing at
    memory freed once the clones are gone): only owner(), make_tensors and the mutation
    check touch it, and they only read it."""
    if arr.dtype != np.float64 or arr.size < SHARE_FROM:
        return arr
    import torch

    if not hasattr(torch, "_lazy_clone"):
        return arr
    own = torch.from_numpy(np.ascontiguousarray(arr)).clone()
    view = own.numpy()  # made before any clone exists; numpy never touches the tensor again
    view.flags.writeable = False
    key = id(view)
    _BACKED[key] = (weakref.ref(view, lambda _: _BACKED.pop(key, None)), own)
    return view


_BACKED: dict = {}  # id(view) -> (weak reference to the view, its owning tensor): torch_backed's arrays only


def owner(arr) -> Any:
    """The tensor owning arr's memory when torch_backed made arr, else None (an array that
    merely views some tensor, say a user's, is never cloned copy-on-write: a write to that
    tensor would leave the view dangling)."""
    entry = _BACKED.get(id(arr))
    return entry[1] if entry is not None and entry[0]() is arr else None
