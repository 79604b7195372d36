"""Processes as /proc shows them, for the tests that watch workers, servers and commands
come and go: a process's state, whether it runs, the ones that match a test."""

from __future__ import annotations

import os
import time


def state(pid: int) -> str:
    """The one-letter state of `pid` (R, S, T, Z ...); "" when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    return state(pid) not in ("", "Z")


def wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def running_where(test) -> list:
    """Pids of running processes whose (parent pid, process group) pass `test`; zombies
    waiting for a parent that does not reap them (as in some containers) are dead."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and test(int(fields[1]), int(fields[2])):
                found.append(int(entry))
    return found


def children_of(pid: int) -> list:
    """The running processes whose parent is `pid`."""
    return running_where(lambda ppid, _group: ppid == pid)
