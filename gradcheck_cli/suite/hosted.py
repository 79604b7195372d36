"""A whole command run by the persistent server (the server's side; forward.py is the
caller's): the forked process takes the caller's place -- its standard streams (buffered
or not, as the caller's), argv, cwd, environment, sys.path, umask, limits, niceness, CPUs,
ignored signals and __main__ package -- and runs gradcheck_cli.cli.main as the caller would
have (a traceback of ours included).  It dies with the caller (the lifeline) or the server
(PR_SET_PDEATHSIG).  Its workers come from the same server, as any caller's do."""

from __future__ import annotations

import io
import os
import signal
import sys
import types


# what a command imports beyond the workers' PRELOAD: the server imports it once as well
# (read nothing from the environment at import, or what they read is in the fingerprint)
COMMAND_PRELOAD = ["gradcheck_cli.cli", "gradcheck_cli.render.table", "gradcheck_cli.render.summary",
                   "gradcheck_cli.render.plain_table", "gradcheck_cli.render.json_out", "gradcheck_cli.render.steps",
                   "gradcheck_cli.steps", "gradcheck_cli.suite.run", "gradcheck_cli.suite.stream",
                   "gradcheck_cli.suite.failures", "gradcheck_cli.suite.remote", "gradcheck_cli.suite.wire",
                   "tomllib", "pydantic", "pydantic.type_adapter", "pydantic.json_schema", "pydantic.fields",
                   "pydantic.types", "pydantic._internal._validators", "pydantic.plugin._loader", "annotated_types",
                   "typer._adapters", "typer._click.decorators", "rich.console", "rich.table", "rich.text",
                   "rich._unicode_data", "rich._emoji_codes", "zoneinfo", "sysconfig", "shellingham", "resource",
                   "multiprocessing.connection", "multiprocessing.forkserver"]


def run_command(request: dict, fds: list) -> int:
    """Be the caller's command; its exit code (the process then ends with os._exit)."""
    from multiprocessing.connection import Connection

    from gradcheck_cli.suite import remote
    from gradcheck_cli.suite.child import die_with_parent, watch_parent

    stdin, stdout, stderr, lifeline = fds
    for fd, std in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, std)  # inheritable: an op's subprocess writes where the caller's would
        os.close(fd)
    die_with_parent()
    watch_parent(Connection(lifeline, writable=False))
    try:
        os.chdir(request["cwd"])
    except OSError as exc:
        os.write(2, f"gradcheck: error: the server cannot enter {request['cwd']!r} ({exc.strerror}); "
                    "run with GRADCHECK_SERVER=off\n".encode(errors="replace"))
        return 1
    os.environ.clear()
    os.environ.update(request["environ"])
    _standard_streams(bool(request.get("unbuffered")))
    sys.argv[:] = [str(a) for a in request["argv"]]
    main = types.ModuleType("__main__")  # as the caller's: click names the program from it
    main.__package__ = request.get("main_package")
    sys.modules["__main__"] = main
    if request.get("fingerprint"):
        remote.known_fingerprint(str(request["fingerprint"]))  # the server's own: found by it
    _signals_as_the_callers(set(request.get("ignored_signals", [])))
    import gc

    gc.freeze()  # the server's torch, SymPy and typer objects: out of the collector's way, as in a worker
    from gradcheck_cli.cli import main as command

    return exit_code_of(command)


def exit_code_of(command) -> int:
    """Run `command` (cli.main) to its end, as the interpreter would at the top level: its
    exit code; an exception of ours that escaped it printed with its traceback (exit 1); a
    KeyboardInterrupt past its own handling kills this process with SIGINT."""
    from gradcheck_cli.output import exit_status, flush_std

    try:
        command()
    except SystemExit as done:
        code = exit_status(done.code)
    except KeyboardInterrupt:
        from gradcheck_cli.suite.forward import exit_like

        exit_like(-signal.SIGINT)
    except BaseException:  # noqa: BLE001 -- a bug of ours: the traceback a run here would print
        sys.excepthook(*sys.exc_info())
        code = 1
    else:
        code = 0
    flush_std()
    return code


def _signals_as_the_callers(ignored: set) -> None:
    """Every signal handled as in the caller: ignored where it ignores it (nohup's SIGHUP;
    Python's own SIGPIPE), else the default, and SIGINT as KeyboardInterrupt unless ignored
    (not the server's settings, whoever started it)."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    if signal.SIGINT not in ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _standard_streams(unbuffered: bool) -> None:
    """sys.stdin/stdout/stderr over the caller's descriptors, as Python would have made them
    there (encoding and errors are the server's: the same LANG and PYTHONIOENCODING, part
    of its fingerprint); unbuffered as the caller's (-u, PYTHONUNBUFFERED), else stdout
    line-buffered on a terminal and stderr always."""
    made = []
    for fd, old, mode in ((0, sys.__stdin__, "r"), (1, sys.__stdout__, "w"), (2, sys.__stderr__, "w")):
        raw = io.FileIO(fd, mode, closefd=False)
        if mode == "r":
            buffered = io.BufferedReader(raw)
        elif unbuffered:  # the caller's -u or PYTHONUNBUFFERED: no buffer
            buffered = raw
        else:
            buffered = io.BufferedWriter(raw)
        encoding = getattr(old, "encoding", None) or "utf-8"
        errors = getattr(old, "errors", None) or ("backslashreplace" if fd == 2 else "strict")
        line = fd == 2 or (fd == 1 and os.isatty(fd))
        made.append(io.TextIOWrapper(buffered, encoding=encoding, errors=errors, line_buffering=line,
                                     write_through=unbuffered and mode == "w"))
    sys.stdin, sys.stdout, sys.stderr = made
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = made
