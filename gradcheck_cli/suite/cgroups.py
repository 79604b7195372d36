"""Whether a caller of the persistent server is held by a cgroup limit the server is not
(a container's or a `systemd-run -p MemoryMax=...` scope's memory or CPU cap).
A command or worker forked by the server lives in the server's cgroup, so such a caller's
limit would not hold there: the server declines it, and the caller runs the command, or
starts its workers, itself (daemon.py).

Read from /proc/PID/cgroup and the cgroup files under /sys/fs/cgroup, cgroup v2 and v1
alike.  Only the groups the caller is in and the server is not count: a limit on a group
both are in holds for both.  What cannot be read is taken as no limit.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
UNLIMITED_V1 = 1 << 62  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1
# memory and CPU caps; not pids.max, which systemd sets on every session and app scope (a
# command adds a few tasks): counting it would decline every caller in another terminal
V2_FILES = ("memory.max", "memory.high", "cpu.max")
V1_FILES = {"memory": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"), "cpu": ("cpu.cfs_quota_us",)}


def membership(pid: int) -> dict | None:
    """{hierarchy: path} of process `pid` ("" is the v2 hierarchy; v1 ones are named by
    their controllers), or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    groups = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            groups[parts[1]] = parts[2]
    return groups


def _ancestors(path: str) -> list:
    """"/a/b/c" -> ["/a/b/c", "/a/b", "/a"] (the root group carries no limit files)."""
    found = []
    while path not in ("", "/"):
        found.append(path)
        path = path.rsplit("/", 1)[0]
    return found


def _limited(value: str, name: str) -> bool:
    value = value.strip()
    if not value:
        return False
    first = value.split()[0]
    if first == "max":  # v2: "max", or "max 100000" for cpu.max
        return False
    try:
        number = int(first)
    except ValueError:
        return False
    if name == "cpu.cfs_quota_us":
        return number >= 0  # -1: no quota
    return number < UNLIMITED_V1


def limit_apart(theirs: dict, ours: dict, root: Path = ROOT) -> str | None:
    """The first limit (its file, as "path/file = value") that holds for a process in the
    groups `theirs` and not for one in `ours`; None when there is none."""
    for hierarchy, path in theirs.items():
        if hierarchy == "":
            base, files = root, V2_FILES
            if (root / "unified").is_dir() and not (root / "cgroup.controllers").exists():
                base = root / "unified"  # a hybrid layout: v2 mounted beside the v1 controllers
        else:
            controllers = hierarchy.split(",")
            name = next((c for c in controllers if c in V1_FILES), None)
            if name is None:
                continue
            base, files = root / hierarchy, V1_FILES[name]
        shared = set(_ancestors(ours.get(hierarchy, "/")))
        for group in _ancestors(path):
            if group in shared:
                break  # this group and those above it hold the server as well
            for name in files:
                try:
                    value = (base / group.lstrip("/") / name).read_text(encoding="utf-8")
                except OSError:
                    continue
                if _limited(value, name):
                    return f"{group}/{name} = {value.strip()}"
    return None


def caller_limited_apart(pid: int, ours: dict | None = None) -> str | None:
    """A limit on the caller `pid` that this process (in the groups `ours`, read here when
    not given) is not under, else None (see the doc)."""
    theirs, ours = membership(pid), ours if ours is not None else membership(os.getpid())
    if not theirs or not ours or theirs == ours:
        return None
    return limit_apart(theirs, ours)
