"""A whole command run by the persistent server (the callers' side; hosted.py is the
server's): with `gradcheck server` up for this environment, `gradcheck check`, `op`, `run`
and `steps` are handed to it, so they start with torch, SymPy, typer and rich already
imported (~0.1 s instead of ~1.6 s for the seed check).

The server forks a process that takes this one's place: its argv, cwd, environment,
sys.path, umask and resource limits, and its very stdin, stdout and stderr (passed as file
descriptors: a terminal stays a terminal, a pipe a pipe), and runs the command as
`gradcheck_cli.cli.main` would here, with the signals this process ignores ignored there
too (nohup), and its niceness and CPUs.  This process only waits: it passes on SIGINT
(Ctrl-C), SIGTERM and SIGHUP (through the server, which signals the command only while it
has not ended), stops the command on Ctrl-Z and continues it with itself, and ends with
the command's exit status (a command killed by signal N kills this process with N).  If
this process dies, the command dies too (a lifeline pipe).

Nothing is handed over (the command runs here, as without a server) when no server serves
this environment, GRADCHECK_SERVER=off, a standard stream is closed, or the server declines
(it is stopping, or this process is under a cgroup limit the server is not: cgroups.py).
This module imports nothing heavy: it runs before anything else of gradcheck's.
"""

from __future__ import annotations

import io
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
        cwd = os.getcwd()
    except OSError:  # a closed standard stream, a removed directory: the command here copes
        return None
    sock = remote.connect(path)
    if sock is None:
        return None
    from gradcheck_cli.suite.wire import caller_context, receive_int, send_int, send_message

    ignored = [int(sig) for sig in signal.valid_signals() if sig not in (signal.SIGKILL, signal.SIGSTOP)
               and signal.getsignal(sig) == signal.SIG_IGN]  # nohup's SIGHUP, a script's SIGINT in `&`
    payload = {"request": "command", "argv": list(argv), "cwd": cwd, "environ": dict(os.environ),
               **caller_context(cwd), "ignored_signals": ignored, "fingerprint": remote.fingerprint(),
               "main_package": getattr(sys.modules.get("__main__"), "__package__", None),
               "unbuffered": not isinstance(getattr(sys.stdout, "buffer", None), io.BufferedWriter)}
    life_r, life_w = os.pipe()  # life_w stays open until this process exits: the command's lifeline
    started: list = []  # [True] once the server answered the command's pid
    pending: list = []  # signals that came before

    def deliver(signum: int) -> None:
        if started:
            try:
                send_int(sock, signum)  # the server signals the command while it is not reaped
            except OSError:
                pass
        else:
            pending.append(signum)

    def pass_on(signum, _frame) -> None:
        deliver(signum)

    def pause(_signum, _frame) -> None:
        """Ctrl-Z: the command stops, then this process; `fg` / `bg` continue both."""
        deliver(signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stopped here until continued
        signal.signal(signal.SIGTSTP, pause)
        deliver(signal.SIGCONT)

    handlers = {sig: pass_on for sig in FORWARDED_SIGNALS}
    handlers[signal.SIGTSTP] = pause
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items() if sig not in ignored}
    try:
        try:
            send_message(sock, payload, [0, 1, 2, life_r])
            sock.settimeout(None)
            receive_int(sock)  # the command's pid: it runs
            started.append(True)
        except (OSError, EOFError, ValueError):  # declined (stopping, gone, or a cgroup limit): it runs here
            os.close(life_w)
            stopping = [sig for sig in pending if sig in FORWARDED_SIGNALS]
            return -stopping[0] if stopping else None  # unless Ctrl-C came meanwhile: as if killed by it
        finally:
            os.close(life_r)
        for signum in pending:
            deliver(signum)
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
    from gradcheck_cli.output import flush_std

    flush_std()
    if status < 0:
        try:
            signal.signal(-status, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL and SIGSTOP have no handler to reset
            pass
        os.kill(os.getpid(), -status)
        os._exit(128 - status)  # a signal that does not end a process by default
    os._exit(status & 0xFF)
