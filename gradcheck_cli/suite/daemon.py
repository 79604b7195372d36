"""The persistent server (`gradcheck server start`): one process that imported torch, SymPy,
the engines and the command line once and forks, across invocations, a worker for every
`gradcheck op` / `gradcheck run` that asks, and a whole command for every `gradcheck check`,
`op`, `run` or `steps` handed to it (forward.py, hosted.py), so they skip the ~1.3 s of
imports.  remote.py is the callers' side (where it lives, who may use it, how to ask);
workers.py uses it when one is up for the caller's environment and falls back to its own
forkserver when not.

The protocol, on a Unix socket only the user can reach (a 0700 directory, and the peer's
uid checked): a connection sends one length-prefixed JSON request; "spawn" comes with the
four pipe ends of a worker (child.py's jobs, results, output, lifeline) as SCM_RIGHTS, and
"command" with the caller's stdin, stdout, stderr and a lifeline.  The server forks,
answers the child's pid, and when the child ends answers its exit code (as
multiprocessing's: -N for signal N) and closes the connection, so that connection is the
caller's sentinel.  "status" answers a JSON object; "stop" stops accepting, lets running
workers and commands finish, and exits.

A worker is exactly what workers.py gets from its own server: child.worker_main, with the
caller's sys.path, umask and resource limits (its cwd and environment come with every job),
dying with this server (PR_SET_PDEATHSIG) or the caller (the lifeline).  A command is
hosted.run_command, in the caller's place.  The server never runs user code itself, and
never runs a torch op (a process whose OpenMP pool has run must not fork).  It ends after
`idle_s` seconds with no child and no request, on "stop", or on SIGTERM; it removes its
socket when it goes.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time

from gradcheck_cli.suite.cgroups import caller_limited_apart, membership
from gradcheck_cli.suite.wire import receive_message, send_int, send_message, take_context

HANDLED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}  # the server's own handlers, reset in a worker
DELIVERED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT}
MAX_WAIT_S = 3600.0


class Server:
    def __init__(self, listener: socket.socket, path: str, idle_s: float, info: dict):
        self.listener, self.path, self.idle_s, self.info = listener, path, idle_s, info
        self.inode = os.stat(path).st_ino
        self.children: dict = {}  # pid -> the connection that asked for it
        self.served = 0  # workers forked
        self.commands: set = set()  # the pids of the running children that are whole commands (hosted.py)
        self.commands_run = 0
        self.stopping = False
        self.last = time.monotonic()
        self.started = time.time()
        self.selector = selectors.DefaultSelector()
        self.cgroups = membership(os.getpid()) or {}  # the groups this server runs in (cgroups.py)
        self.lock: int | None = None  # the fd holding this environment's lock: a worker closes it
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        while not (self.stopping and not self.children):
            timeout = None
            if not self.children and self.idle_s > 0 and not self.stopping:
                timeout = max(0.0, self.last + self.idle_s - time.monotonic())
                if timeout == 0.0:
                    break
                timeout = min(timeout, MAX_WAIT_S)  # epoll takes at most 2**31 ms: wake up and look again
            for key, _ in self.selector.select(timeout):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj == self.wake_r:
                    try:
                        os.read(self.wake_r, 4096)
                    except OSError:
                        pass
                else:
                    self._deliver(key.fileobj, key.data)
            if self._reap() or self.children:  # busy until now: the idle time starts now
                self.last = time.monotonic()
        self.stop()

    def stop(self) -> None:
        """Accept no more callers (the socket goes now); exit once the running workers end."""
        if self.stopping:
            return
        self.stopping = True
        try:
            if os.stat(self.path).st_ino == self.inode:  # still ours: a newer server may have replaced it
                os.unlink(self.path)
        except OSError:
            pass
        try:
            self.selector.unregister(self.listener)
        except (KeyError, ValueError):
            pass
        self.listener.close()
        if self.lock is not None:  # a new server may start while this one's workers finish
            os.close(self.lock)
            self.lock = None

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.last = time.monotonic()
        conn.settimeout(5.0)  # a caller that connects and says nothing does not hold the server
        fds: list = []
        try:
            peer, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               struct.calcsize("3i")))
            if uid != os.getuid():
                raise PermissionError(f"uid {uid}")
            request, fds = receive_message(conn, max_fds=4, deadline=time.monotonic() + 5.0)
            conn.settimeout(5.0)
            what = request.get("request") if isinstance(request, dict) else None
            # a caller under a cgroup limit this server is not under (cgroups.py) is declined:
            # without an answer it runs the command, or starts its workers, itself
            if what in ("spawn", "command") and len(fds) == 4 and not self.stopping \
                    and caller_limited_apart(peer, self.cgroups) is None:
                self._spawn(conn, request, fds)
                return
            if what == "status":
                send_message(conn, self.status())
            elif what == "stop":
                send_message(conn, {"stopping": True, "pid": os.getpid(), **self.running()})
                self.stop()
        except Exception:  # noqa: BLE001 -- whatever a caller sends, the server stays up for the others
            pass
        for fd in fds:
            os.close(fd)
        conn.close()

    def running(self) -> dict:
        return {"workers_running": len(self.children) - len(self.commands), "commands_running": len(self.commands)}

    def status(self) -> dict:
        return {**self.info, "pid": os.getpid(), "started": self.started, "served": self.served,
                "commands": self.commands_run,
                **self.running(), "idle_timeout_s": self.idle_s,
                "rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}

    def _spawn(self, conn: socket.socket, request: dict, fds: list) -> None:
        # blocked across the fork: a SIGTERM meant for the server must not run its stop()
        # in the child (the child resets the handlers, then unblocks)
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                _child(self, conn, request, fds)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        for fd in fds:
            os.close(fd)
        if request["request"] == "command":
            self.commands.add(pid)
            self.commands_run += 1
        else:
            self.served += 1
        self.children[pid] = conn
        try:
            send_int(conn, pid)
            self.selector.register(conn, selectors.EVENT_READ, pid)  # the caller's signals for it
        except (OSError, ValueError):
            pass

    def _deliver(self, conn: socket.socket, pid: int) -> None:
        """A signal a caller asks for its command or worker (4 bytes, wire.send_int): sent
        only while the child is not reaped, so never to a process that took over its pid."""
        try:
            data = conn.recv(4)
        except OSError:
            data = b""
        if len(data) < 4:  # the caller went (the lifeline ends its child) or sent nonsense
            self.selector.unregister(conn)
            if self.children.get(pid) is conn:  # a child stopped by Ctrl-Z must run to see its lifeline end
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass
            return
        (sig,) = struct.unpack("!i", data)
        if sig in DELIVERED and self.children.get(pid) is conn:
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def _reap(self) -> bool:
        """Reap ended workers, telling each one's caller its exit code; True if any ended."""
        reaped = False
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = self.children.pop(pid, None)
            self.commands.discard(pid)
            if conn is None:
                continue
            reaped = True
            try:
                self.selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            try:
                send_int(conn, os.waitstatus_to_exitcode(status))
            except OSError:
                pass
            conn.close()
        return reaped


def _child(server: Server, conn: socket.socket, request: dict, fds: list) -> None:
    """In the forked process: drop the server's sockets and handlers, take on the caller's
    sys.path, umask, limits and scheduling (wire.take_context), and be child.worker_main ("spawn") or the caller's whole
    command (hosted.run_command).  Always ends with os._exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        server.selector.close()
        for sock in [server.listener, conn, *server.children.values()]:
            sock.close()
        for fd in (server.wake_r, server.wake_w, server.lock):
            if fd is not None:
                os.close(fd)
        take_context(request)
        if request["request"] == "command":
            from gradcheck_cli.suite.hosted import run_command

            code = run_command(request, fds)
            return
        from multiprocessing.connection import Connection

        from gradcheck_cli.suite.child import worker_main

        jobs, results, output, lifeline = fds
        worker_main(Connection(jobs, writable=False), Connection(results, readable=False),
                    Connection(output, readable=False), Connection(lifeline, writable=False),
                    int(request.get("threads", 1)))
        code = 0
    finally:
        os._exit(code)


def main(argv: list) -> None:
    """The server process (remote.start runs it with argv PATH IDLE_S READY_FD INFO_JSON):
    preload, then bind PATH (only once the imports are done: a caller that finds the socket
    finds a ready server), write one byte to READY_FD, serve."""
    path, idle_s, ready_fd, info = os.path.abspath(argv[0]), float(argv[1]), int(argv[2]), json.loads(argv[3])
    os.chdir("/")  # hold no directory busy; each job brings its own cwd
    import fcntl
    import importlib

    from gradcheck_cli.suite.hosted import COMMAND_PRELOAD
    from gradcheck_cli.suite.remote import LOCKED
    from gradcheck_cli.suite.workers import PRELOAD

    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.stderr.write("gradcheck server: another server for this environment holds the lock\n")
        sys.exit(LOCKED)
    for name in PRELOAD + COMMAND_PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # as multiprocessing's forkserver: a module this torch or SymPy lacks is skipped
            pass
    import gc

    gc.collect()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    os.chmod(staging, 0o600)
    listener.listen(64)
    os.replace(staging, path)
    server = Server(listener, path, idle_s, info)
    server.lock = lock
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    server.serve()  # ends with stop(): the socket is gone and the lock let go
    os._exit(0)  # no interpreter shutdown with torch and SymPy loaded
