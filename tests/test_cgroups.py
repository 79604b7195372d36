"""The persistent server declines a caller under a cgroup limit it is not under
(suite/cgroups.py): a container's or `systemd-run -p MemoryMax=...` scope's limit must
hold for the command, so the command runs in the caller.  Checked on cgroup trees written
in a temporary folder, v2 and v1 alike, and on this machine's own processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gradcheck_cli.suite.cgroups import caller_limited_apart, limit_apart, membership


def _tree(root: Path, files: dict) -> Path:
    for name, value in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    return root


def test_a_v2_memory_limit_on_the_callers_own_scope_is_found(tmp_path):
    root = _tree(tmp_path, {"user.slice/memory.max": "max", "user.slice/a.scope/memory.max": "2147483648",
                            "user.slice/b.scope/memory.max": "max", "user.slice/b.scope/cpu.max": "max 100000"})
    found = limit_apart({"": "/user.slice/a.scope"}, {"": "/user.slice/b.scope"}, root)
    assert found == "/user.slice/a.scope/memory.max = 2147483648"
    assert limit_apart({"": "/user.slice/b.scope"}, {"": "/user.slice/a.scope"}, root) is None  # the other way


def test_a_limit_both_are_under_does_not_count(tmp_path):
    root = _tree(tmp_path, {"box/memory.max": "1073741824", "box/a/memory.max": "max", "box/b/memory.max": "max"})
    assert limit_apart({"": "/box/a"}, {"": "/box/b"}, root) is None
    assert limit_apart({"": "/box/a"}, {"": "/elsewhere"}, root) == "/box/memory.max = 1073741824"


@pytest.mark.parametrize("name, value, limited", [("cpu.max", "50000 100000", True), ("cpu.max", "max 100000", False),
                                                  ("pids.max", "64", False), ("memory.high", "max", False),
                                                  ("memory.high", "104857600", True)])
def test_each_v2_limit_file_reads_as_a_limit_or_none(tmp_path, name, value, limited):
    """pids.max is never one: systemd sets it on every session and app scope."""
    root = _tree(tmp_path, {f"a/{name}": value})
    assert (limit_apart({"": "/a"}, {"": "/b"}, root) is not None) is limited


@pytest.mark.parametrize("hierarchy, name, value, limited", [
    ("memory", "memory.limit_in_bytes", "9223372036854771712", False),  # v1's "no limit"
    ("memory", "memory.limit_in_bytes", "536870912", True),
    ("cpu,cpuacct", "cpu.cfs_quota_us", "-1", False),
    ("cpu,cpuacct", "cpu.cfs_quota_us", "50000", True),
    ("pids", "pids.max", "max", False),
])
def test_v1_limits_are_read_from_their_controllers_folders(tmp_path, hierarchy, name, value, limited):
    (tmp_path / hierarchy / "job").mkdir(parents=True)
    (tmp_path / hierarchy / "job" / name).write_text(value + "\n")
    found = limit_apart({hierarchy: "/job", "": "/"}, {hierarchy: "/", "": "/"}, tmp_path)
    assert (found is not None) is limited


def test_what_cannot_be_read_is_no_limit(tmp_path):
    assert limit_apart({"": "/missing/group"}, {"": "/"}, tmp_path) is None
    assert membership(2 ** 22 + 12345) is None  # no such process


def test_this_process_is_not_limited_apart_from_itself_or_its_child():
    assert caller_limited_apart(os.getpid()) is None
    assert membership(os.getpid())  # /proc/self/cgroup is readable here
