"""Process-wide state a check must not leak into the next one: torch's grad mode, default
dtype and device, random number generators (torch, numpy's legacy global one, Python's),
thread count, deterministic algorithms, anomaly mode, float32 matmul precision, and the
Python state an op can change behind our back (warning filters, the working folder,
sys.stdout / sys.stderr).  Threads a check leaves running are noticed, not stopped.

    with preserved_state() as changes:
        ... run the user's op ...
    changes  # ["grad mode (torch.set_grad_enabled(False))", ...], everything restored

Used around every op check, in `gradcheck run`'s worker processes and in the Python API
alike, so a check that calls torch.set_grad_enabled(False) cannot fail the correct
checks after it, and every check starts from the same state whatever --jobs schedules.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Item:
    """One piece of state: how to read it, how to put it back, and how to name it."""

    name: str
    read: Callable[[], Any]
    write: Callable[[Any], None] | None  # None: noticed, not restorable
    same: Callable[[Any, Any], bool] = lambda a, b: a == b
    show: Callable[[Any], str] = repr


def _torch_items() -> list[Item]:
    import torch

    items = [
        Item("grad mode (torch.set_grad_enabled)", torch.is_grad_enabled, torch.set_grad_enabled),
        Item("default dtype (torch.set_default_dtype)", torch.get_default_dtype, torch.set_default_dtype,
             show=lambda d: str(d).replace("torch.", "")),
        Item("torch's random number generator (torch.manual_seed or a random draw)", torch.random.get_rng_state,
             torch.random.set_rng_state, same=lambda a, b: bool(torch.equal(a, b)), show=lambda _: "changed"),
        Item("thread count (torch.set_num_threads)", torch.get_num_threads, torch.set_num_threads),
        Item("deterministic algorithms (torch.use_deterministic_algorithms)",
             lambda: (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled()),
             lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
        Item("anomaly mode (torch.autograd.set_detect_anomaly)",
             lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
             lambda v: torch.set_anomaly_enabled(v[0], v[1])),
        Item("float32 matmul precision (torch.set_float32_matmul_precision)", torch.get_float32_matmul_precision,
             torch.set_float32_matmul_precision),
        Item("inference mode", torch.is_inference_mode_enabled, None),
    ]
    if hasattr(torch, "get_default_device"):
        items.append(Item("default device (torch.set_default_device)", torch.get_default_device,
                          torch.set_default_device, show=str))
    for label, module, attrs in (("torch.backends.cudnn", torch.backends.cudnn,
                                  ("enabled", "benchmark", "deterministic", "allow_tf32")),
                                 ("torch.backends.cuda.matmul", torch.backends.cuda.matmul, ("allow_tf32",))):
        for attr in attrs:
            if hasattr(module, attr):
                items.append(Item(f"{label}.{attr}", lambda m=module, a=attr: getattr(m, a),
                                  lambda v, m=module, a=attr: setattr(m, a, v)))
    if torch.cuda.is_initialized():  # never initialize CUDA just to read its generators
        items.append(Item("CUDA random number generators", torch.cuda.get_rng_state_all, torch.cuda.set_rng_state_all,
                          same=lambda a, b: len(a) == len(b) and all(bool(torch.equal(x, y)) for x, y in zip(a, b)),
                          show=lambda _: "changed"))
    return items


def _same_numpy_rng(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])


def _python_items() -> list[Item]:
    return [
        Item("numpy's global random state (np.random.seed or a draw)", np.random.get_state, np.random.set_state,
             same=_same_numpy_rng, show=lambda _: "changed"),
        Item("Python's random state (random.seed or a draw)", random.getstate, random.setstate,
             show=lambda _: "changed"),
        Item("warning filters (warnings.simplefilter)", lambda: list(warnings.filters),
             lambda v: warnings.filters.__setitem__(slice(None), v), show=lambda _: "changed"),
        Item("working folder (os.chdir)", os.getcwd, os.chdir),
        Item("sys.stdout", lambda: sys.stdout, lambda v: setattr(sys, "stdout", v), same=lambda a, b: a is b,
             show=lambda _: "replaced"),
        Item("sys.stderr", lambda: sys.stderr, lambda v: setattr(sys, "stderr", v), same=lambda a, b: a is b,
             show=lambda _: "replaced"),
    ]


@dataclass
class Snapshot:
    items: list
    values: list
    threads: set = field(default_factory=set)


def snapshot() -> Snapshot:
    """The state now (torch is imported if it is not yet)."""
    items = _torch_items() + _python_items()
    values = []
    for item in items:
        try:
            values.append(item.read())
        except Exception:  # noqa: BLE001 -- a backend without that knob: nothing to keep
            values.append(_UNREADABLE)
    return Snapshot(items, values, set(threading.enumerate()))


_UNREADABLE = object()


def restore(before: Snapshot) -> list[str]:
    """Put every readable piece of state back as it was; the names (and new values) of
    those that had changed, and of threads left running."""
    changed = []
    for item, old in zip(before.items, before.values):
        if old is _UNREADABLE:
            continue
        try:
            now = item.read()
            if item.same(now, old):
                continue
        except Exception:  # noqa: BLE001 -- unreadable now: put it back all the same
            now = _UNREADABLE
        shown = "" if now is _UNREADABLE else item.show(now)
        if item.write is None:
            changed.append(f"{item.name} is {shown} (cannot be restored)")
            continue
        try:
            item.write(old)
            changed.append(f"{item.name}: {shown}, restored to {item.show(old)}" if shown not in ("changed", "replaced")
                           else f"{item.name} ({shown}; restored)")
        except Exception as exc:  # noqa: BLE001
            changed.append(f"{item.name}: {shown}, could not be restored ({type(exc).__name__}: {exc})")
    left = left_running(before)
    if left:
        changed.append(f"{len(left)} thread(s) left running ({', '.join(sorted(t.name for t in left))})")
    return changed


def left_running(before: Snapshot) -> list:
    """Threads started since the snapshot that are still alive."""
    return [t for t in threading.enumerate() if t not in before.threads and t.is_alive()]


@contextlib.contextmanager
def preserved_state():
    """Snapshot, run the body, restore; the list yielded is filled with what had changed."""
    changes: list[str] = []
    before = snapshot()
    try:
        yield changes
    finally:
        changes.extend(restore(before))


def describe(changes: list[str]) -> str:
    """The global_state_changed diagnostic's message."""
    return ("the check changed process-wide state, which would leak into later checks: " + "; ".join(changes)
            + ". gradcheck restored what it can; ops should not change global state")
