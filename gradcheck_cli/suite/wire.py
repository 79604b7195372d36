"""The persistent server's wire format (daemon.py serves it, remote.py asks): one
length-prefixed JSON message each way, file descriptors attached with SCM_RIGHTS; and what a
worker or command takes from its caller (caller_context / take_context): umask, resource
limits, niceness and CPUs, sys.path."""

from __future__ import annotations

import json
import os
import resource
import socket
import struct
import sys
import time

MAX_REQUEST = 1 << 20
LIMITS = ("RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_FSIZE")


def send_message(sock: socket.socket, payload: dict, fds: list | None = None) -> None:
    """One request or answer: a 4-byte length, then JSON (with `fds` attached)."""
    data = json.dumps(payload).encode()
    framed = struct.pack("!I", len(data)) + data
    sent = socket.send_fds(sock, [framed], fds) if fds else sock.send(framed)
    if sent < len(framed):
        sock.sendall(framed[sent:])


def receive_message(sock: socket.socket, max_fds: int = 0, deadline: float | None = None) -> tuple[dict, list]:
    """The other side of send_message: (payload, fds); past `deadline` (time.monotonic()),
    socket.timeout, however the sender trickles its bytes."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 65536, max_fds) if max_fds else (sock.recv(65536), [], 0, None)
    try:
        if len(data) < 4:
            data += _exactly(sock, 4 - len(data), deadline)
        (size,) = struct.unpack("!I", data[:4])
        if size > MAX_REQUEST:
            raise ValueError(f"a message of {size} bytes")
        body = data[4:]
        if len(body) < size:
            body += _exactly(sock, size - len(body), deadline)
        return json.loads(body[:size].decode()), fds
    except BaseException:  # a broken message: the descriptors that came with it are closed, not leaked
        for fd in fds:
            os.close(fd)
        raise


def send_int(sock: socket.socket, value: int) -> None:
    """A pid, an exit code or a signal (signed, 4 bytes)."""
    sock.sendall(struct.pack("!i", value))


def receive_int(sock: socket.socket) -> int:
    """The other side of send_int; EOFError when the connection closes first."""
    return struct.unpack("!i", _exactly(sock, 4))[0]


def _exactly(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    chunks = []
    while n > 0:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("the message took too long")
            sock.settimeout(left)
        chunk = sock.recv(n)
        if not chunk:
            raise EOFError("the connection closed mid-message")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def client_limits() -> dict:
    """The resource limits a worker takes from its caller (a CI step's `ulimit -v` holds)."""
    return {name: list(resource.getrlimit(getattr(resource, name))) for name in LIMITS if hasattr(resource, name)}


def client_scheduling() -> dict:
    """The caller's niceness and CPUs, which a worker or command takes as well (`nice -n 19
    gradcheck run ...`, `taskset -c 0-3 ...`)."""
    found = {}
    try:
        found["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        pass
    try:
        found["cpus"] = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    return found


def take_scheduling(scheduling: dict) -> None:
    """client_scheduling's values in this process, as far as it may (a niceness below the
    server's needs a privilege: then the server's stays)."""
    try:
        if "nice" in scheduling and int(scheduling["nice"]) > os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, int(scheduling["nice"]))
    except (AttributeError, OSError, ValueError):
        pass
    try:
        if scheduling.get("cpus"):
            os.sched_setaffinity(0, [int(c) for c in scheduling["cpus"]])
    except (AttributeError, OSError, ValueError):
        pass


def take_limit(which, soft: int, hard: int) -> None:
    """The caller's resource limit, as far as this process may lower its own: a hard limit
    above ours cannot be raised, but the caller's soft limit still applies below it."""
    if which is None:
        return
    def lower(a: int, b: int) -> int:
        infinite = resource.RLIM_INFINITY
        return b if a == infinite else a if b == infinite else min(a, b)

    _, our_hard = resource.getrlimit(which)
    hard = lower(hard, our_hard)
    try:
        resource.setrlimit(which, (lower(soft, hard), hard))
    except (ValueError, OSError):
        pass


def absolute_sys_path(cwd: str) -> list:
    """sys.path with its '' (the current folder) spelled out: what another process needs."""
    return [p if p else cwd for p in sys.path]


def caller_context(cwd: str) -> dict:
    """What a worker or command takes from its caller (take_context): umask, resource limits,
    niceness and CPUs, sys.path."""
    mask = os.umask(0)
    os.umask(mask)
    return {"umask": mask, "limits": client_limits(), "scheduling": client_scheduling(),
            "sys_path": absolute_sys_path(cwd)}


def take_context(request: dict) -> None:
    """caller_context's values, in the forked worker or command."""
    sys.path[:] = [str(p) for p in request.get("sys_path", sys.path)]
    os.umask(int(request.get("umask", 0o022)))
    for name, (soft, hard) in request.get("limits", {}).items():
        take_limit(getattr(resource, name, None), soft, hard)
    take_scheduling(request.get("scheduling", {}))
