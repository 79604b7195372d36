"""A whole command run by the persistent server (the callers' side; hosted.py is the
server's): with `gradcheck server` up for this environment, `gradcheck check`, `op`, `run`
and `steps` are handed to it, so they start with torch, SymPy, typer and rich already
imported (~0.1 s instead of ~1.6 s for the seed check).

The server forks a process that takes this one's place: its argv, cwd, environment,
sys.path, umask and resource limits, and its very stdin, stdout and stderr (passed as file
descriptors: a terminal stays a terminal, a pipe a pipe), and runs the command as
`gradcheck_cli.cli.main` would here.  This process only waits: it passes on SIGINT (Ctrl-C),
SIGTERM and SIGHUP, and ends with the command's exit status (a command killed by signal N
kills this process with N).  If this process dies, the command dies too (a lifeline pipe).

Nothing is handed over (the command runs here, as without a server) when no server serves
this environment, GRADCHECK_SERVER=off, a standard stream is closed, or the server declines.
This module imports nothing heavy: it runs before anything else of gradcheck's.
"""

from __future__ import annotations

import os
import signal
import sys

COMMANDS = ("check", "op", "run", "steps")  # what is worth handing over: the ones that import torch
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SERVER_WENT = 1  # the exit status when the server (and the command with it) ended before the command did


def hand_over(argv: list) -> int | None:
    """Run the command `argv` (sys.argv's form) in the server: its exit status (as
    multiprocessing's: -N for signal N), or None when nothing was handed over."""
    if len(argv) < 2 or argv[1] not in COMMANDS:
        return None
    from gradcheck_cli.suite import remote

    path = remote.available()
    if path is None:
        return None
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:  # a closed standard stream: the command here opens /dev/null in its place
        return None
    sock = remote.connect(path)
    if sock is None:
        return None
    from gradcheck_cli.suite.wire import client_limits, receive_int, send_message

    try:
        cwd = os.getcwd()
    except OSError:  # the caller's directory was removed: the command here says what that means
        sock.close()
        return None
    main = sys.modules.get("__main__")
    mask = os.umask(0)
    os.umask(mask)
    payload = {"request": "command", "argv": list(argv), "cwd": cwd, "environ": dict(os.environ), "umask": mask,
               "limits": client_limits(), "sys_path": [p if p else cwd for p in sys.path],
               "main_package": getattr(main, "__package__", None), "fingerprint": remote.fingerprint()}
    life_r, life_w = os.pipe()  # life_w stays open until this process exits: the command's lifeline
    pending: list = []
    pid: list = []

    def pass_on(signum, _frame) -> None:
        if pid:
            try:
                os.kill(pid[0], signum)
            except (ProcessLookupError, PermissionError):
                pass
        else:
            pending.append(signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in FORWARDED_SIGNALS}
    try:
        try:
            send_message(sock, payload, [0, 1, 2, life_r])
            sock.settimeout(None)
            pid.append(receive_int(sock))
        except (OSError, EOFError, ValueError):  # declined (stopping, or gone): the command runs here
            os.close(life_w)
            return -pending[0] if pending else None  # unless Ctrl-C came meanwhile: as if killed by it
        finally:
            os.close(life_r)
        for signum in pending:
            pass_on(signum, None)
        try:
            return receive_int(sock)
        except (OSError, EOFError):  # the server went, and the command with it (it dies with the server)
            sys.stderr.write("gradcheck: error: the gradcheck server ended while it ran this command\n")
            return SERVER_WENT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def exit_like(status: int) -> None:
    """End this process as the command ended: its exit code, or killed by the same signal."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    if status < 0:
        try:
            signal.signal(-status, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL and SIGSTOP have no handler to reset
            pass
        os.kill(os.getpid(), -status)
        os._exit(128 - status)  # a signal that does not end a process by default
    os._exit(status & 0xFF)
