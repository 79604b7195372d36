"""A wall-clock budget for work that cannot be interrupted politely (SymPy).

In the main thread a SIGALRM timer raises `OutOfTime` inside the work; elsewhere (a
worker thread) there is no budget and the work runs to completion.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class OutOfTime(Exception):
    """The budget ran out."""


@contextlib.contextmanager
def time_budget(seconds: float | None):
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise OutOfTime()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
