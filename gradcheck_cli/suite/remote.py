"""The callers' side of the persistent worker server (daemon.py): where it lives, which
environment it serves, and starting, asking, stopping it.

One server serves one environment, named by a fingerprint of what its preloaded modules
would be in the caller: the Python executable, prefix (the venv), version, flags, -W and -X
options; where torch, numpy, SymPy, typer and rich are installed (and their files' times); every
gradcheck_cli source file's time and size (an edited checkout is a new environment); and
the environment variables read once at start-up (TORCH_*, OMP_*, MKL_*, CUDA_*, PYTHON*,
LD_*, LANG, LC_*, TZ, TYPER_* ...).  The server runs with the caller's interpreter flags.  Its
socket is named by that fingerprint, so a caller never reaches a server of another
environment: a stale one simply goes unused and ends after its idle time.

The directory is $GRADCHECK_SERVER_DIR, else $XDG_RUNTIME_DIR/gradcheck, else
/tmp/gradcheck-UID; it must be the user's own and closed to others (0700), or it is not
used.  GRADCHECK_SERVER=off: never use a server (the run starts its own, as without one).
"""

from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path

from gradcheck_cli.errors import UserInputError

ENV_PREFIXES = ("TORCH", "PYTORCH", "OMP_", "MKL_", "KMP_", "GOMP", "OPENBLAS", "CUDA", "NVIDIA", "LD_", "PYTHON",
                "DNNL", "ONEDNN", "SYMPY", "NUMPY", "MPMATH", "LANG", "LC_", "TZ",
                "TYPER", "_TYPER", "TERMINAL_WIDTH", "PYDANTIC")  # read once, at start-up (typer's at its import)
IDLE_MINUTES = 30.0
START_TIMEOUT_S = 120.0
LOCKED = 3  # a server's exit status when another one for its environment holds the lock (daemon.main)

_CACHE: dict = {}


class ServerError(UserInputError):
    """The server cannot be started or its directory cannot be used safely."""

    kind = "server"


def disabled() -> bool:
    return os.environ.get("GRADCHECK_SERVER", "").strip().lower() in ("0", "off", "no", "false")


def directory() -> Path:
    if os.environ.get("GRADCHECK_SERVER_DIR"):
        return Path(os.environ["GRADCHECK_SERVER_DIR"]).absolute()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "gradcheck"
    return Path("/tmp") / f"gradcheck-{os.getuid()}"


def safe_directory(create: bool = False) -> Path:
    """The server directory, checked: ours and closed to others (created 0700 if asked).
    Raises ServerError when it is not safe (another user could reach our workers)."""
    folder = directory()
    if create:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ServerError(f"cannot create the server directory {folder}: {exc.strerror}") from None
    st = os.lstat(folder)
    if not os.path.isdir(folder) or os.path.islink(folder):
        raise ServerError(f"the server directory {folder} is not a directory")
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ServerError(f"the server directory {folder} is not private (owner uid {st.st_uid}, mode "
                          f"{st.st_mode & 0o777:o}; it must be yours, mode 700): not used")
    return folder


def fingerprint() -> str:
    """16 hex digits naming this environment (see the module's doc)."""
    if "fingerprint" in _CACHE:
        return _CACHE["fingerprint"]
    import hashlib
    import importlib.util

    h = hashlib.sha256()
    h.update(repr((os.path.realpath(sys.executable), sys.prefix, sys.version, sys.flags, sys.warnoptions,
                   sys._xoptions, os.getuid())).encode())
    for name in ("torch", "numpy", "sympy", "typer", "rich"):
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None) or ""
        h.update(f"{name}:{origin}".encode())
        for extra in ("__init__.py", "version.py", "_version.py", "release.py"):
            try:
                st = os.stat(os.path.join(os.path.dirname(origin), extra))
                h.update(f"{extra}:{st.st_mtime_ns}:{st.st_size}".encode())
            except OSError:
                pass
    package = Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        h.update(f"{path}:{st.st_mtime_ns}:{st.st_size}".encode())
    for key in sorted(os.environ):
        if key.startswith(ENV_PREFIXES):
            h.update(f"{key}={os.environ[key]}".encode())
    _CACHE["fingerprint"] = h.hexdigest()[:16]
    return _CACHE["fingerprint"]


def known_fingerprint(value: str) -> None:
    """This environment's fingerprint, already known (a command the server runs for a caller
    who found it by that fingerprint): not computed again."""
    _CACHE["fingerprint"] = value


def socket_path(folder: Path | None = None) -> Path:
    return (folder or directory()) / f"server-{fingerprint()}.sock"


def connect(path: Path, timeout: float = 5.0) -> "socket.socket | None":
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def available() -> Path | None:
    """The socket of a server for this environment that callers may use now, else None.
    Cheap when there is none (no socket file: a stat); never raises."""
    if disabled() or not directory().is_dir():  # no folder: no server, and no fingerprint to compute
        return None
    try:
        path = socket_path()
        if not path.exists():
            return None
        safe_directory()
    except (OSError, UserInputError):
        return None
    return path


def request(path: Path, payload: dict, timeout: float = 5.0) -> dict | None:
    """One status/stop request; None when no server answers there."""
    from gradcheck_cli.suite.wire import receive_message, send_message

    sock = connect(path, timeout)
    if sock is None:
        return None
    with sock:
        try:
            send_message(sock, payload)
            return receive_message(sock)[0]
        except (OSError, ValueError, EOFError, struct.error):
            return None


class RemoteProcess:
    """A worker forked by the server, as workers.py sees a multiprocessing Process:
    `sentinel` (readable when it ended), `exitcode`, join(), kill()."""

    def __init__(self, sock, pid: int):  # sock: the connected socket.socket
        self._sock, self.pid, self.exitcode = sock, pid, None
        self.sentinel = sock.fileno()
        self._done = False

    def join(self, timeout: float | None = None) -> None:
        if self._done:
            return
        from multiprocessing.connection import wait

        if not wait([self._sock], timeout):
            return
        from gradcheck_cli.suite.wire import receive_int

        self._sock.settimeout(1.0)
        try:
            self.exitcode = receive_int(self._sock)
        except (OSError, EOFError):
            self.exitcode = None  # the server went: describe_exit says it ended without a status
        self._done = True
        self._sock.close()

    def kill(self) -> None:
        """SIGKILL, sent by the server (daemon.Server._deliver) while the worker is not
        reaped: never to a process that took over its pid."""
        if self._done:
            return
        from gradcheck_cli.suite.wire import send_int

        try:
            send_int(self._sock, 9)
        except OSError:  # the server went, and its workers with it (PR_SET_PDEATHSIG)
            pass


def spawn(path: Path, ends: tuple, threads: int) -> RemoteProcess | None:
    """A worker from the server at `path` holding the four pipe ends `ends` (child.py's
    jobs, results, output, lifeline); None when the server is not there any more."""
    from gradcheck_cli.suite.wire import caller_context, receive_int, send_message

    sock = connect(path)
    if sock is None:
        return None
    payload = {"request": "spawn", "threads": threads, **caller_context(os.getcwd())}
    try:
        send_message(sock, payload, [end.fileno() for end in ends])
        pid = receive_int(sock)
    except (OSError, EOFError):
        sock.close()
        return None
    sock.settimeout(None)
    return RemoteProcess(sock, pid)


def status() -> dict | None:
    path = available()
    return status_at(path) if path is not None else None


def status_at(path: Path) -> dict | None:
    """The status of the server at `path`; None when none answers there."""
    return request(path, {"request": "status"}) if path.exists() else None


def start(idle_minutes: float = IDLE_MINUTES) -> tuple[dict, bool]:
    """Start this environment's server (or find it running): (its status, started now)."""
    if disabled():
        raise ServerError("GRADCHECK_SERVER is off in this environment: a server would never be used")
    folder = safe_directory(create=True)
    path = socket_path(folder)
    running = status_at(path)
    if running is not None:
        return running, False
    import json
    import subprocess

    from gradcheck_cli.suite.wire import absolute_sys_path

    info = {"fingerprint": fingerprint(), "python": sys.version.split()[0], "executable": sys.executable}
    log = folder / f"server-{fingerprint()}.log"
    ready_r, ready_w = os.pipe()
    bootstrap = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
                 "from gradcheck_cli.suite.daemon import main; main(sys.argv[2:])")
    sys_path = absolute_sys_path(os.getcwd())
    with open(log, "wb") as err:
        flags = getattr(subprocess, "_args_from_interpreter_flags", list)()  # -O, -X ..., -W ... (as multiprocessing)
        proc = subprocess.Popen([sys.executable, *flags, "-c", bootstrap, json.dumps(sys_path), str(path),
                                 str(max(0.0, idle_minutes) * 60), str(ready_w), json.dumps(info)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                pass_fds=(ready_w,), start_new_session=True, close_fds=True)
    os.close(ready_w)
    try:
        from multiprocessing.connection import wait

        ready = wait([ready_r], START_TIMEOUT_S) and os.read(ready_r, 1) == b"1"
    finally:
        os.close(ready_r)
    if not ready:
        try:
            code = proc.wait(timeout=5)  # it closed the pipe: it is exiting
        except subprocess.TimeoutExpired:  # silent past START_TIMEOUT_S: stuck
            proc.kill()
            code = None
        if code == LOCKED:  # another `server start` won the race: its server is the one
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                running = status_at(path)
                if running is not None:
                    return running, False
                time.sleep(0.05)
        text = log.read_text(errors="replace").strip().splitlines()
        raise ServerError("the server did not start" + (f": {text[-1]}" if text else "") + f" (log: {log})")
    info = status_at(path)
    if info is None:
        raise ServerError(f"the server started but does not answer (log: {log})")
    return info, True


def stop(wait_s: float = 10.0) -> dict | None:
    """Ask this environment's server to stop (it takes no new caller at once, and exits when
    its running workers end); wait up to `wait_s` for it to be gone.  Its answer, with
    "exited"; None: none running."""
    path = available()
    answer = request(path, {"request": "stop"}) if path is not None else None
    if answer is None:
        return None
    pid, deadline = int(answer["pid"]), time.monotonic() + wait_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    return {**answer, "exited": not _alive(pid)}


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie nobody has reaped yet does not)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child (started by this process): reaped now
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
