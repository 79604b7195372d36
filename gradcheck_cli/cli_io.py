"""What the commands share on their way in and out: stdout kept for the report while
checks run, the report written (table, summary, JSON, JUnit) with the right exit code,
one error path for input that cannot be used (a message on stderr, exit 2, and with
--json the error document on stdout), and the command group that sends click's own
usage errors down that path too."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.output import exit_status, flush_std, write_stdout

# what every typer app of ours is built with (the main one in cli.py, `server` in cli_server.py)
TYPER_SETTINGS = dict(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})

# commands whose EXPR argument may start with '-' (it then goes after '--')
EXPR_COMMANDS = ("check", "steps")


def wants_json(args) -> bool:
    """--json among the command's options (before a '--', after which all is arguments)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def write_error_json(message: str, kind: str, column: Optional[int] = None) -> None:
    """The error document on stdout (exit 2 with --json), so `... --json | jq` sees why."""
    from gradcheck_cli.render.json_out import render_error

    try:
        write_stdout(render_error(message, kind, column) + "\n")
    except OSError:  # a closed stdout: the message on stderr is all there is
        pass


def fail(err: UserInputError, as_json: bool = False) -> "typer.Exit":
    """One message on stderr (and the error JSON with --json): exit 2."""
    typer.echo(f"gradcheck: error: {err.render()}", err=True)
    if as_json:
        write_error_json(err.message, err.kind, err.column)
    return typer.Exit(2)


def _leading_dash_hint(err, args) -> None:
    """`gradcheck check -x`: say how to give an expression that starts with '-'."""
    name = getattr(err, "option_name", "") or ""
    ctx = getattr(err, "ctx", None)
    command = getattr(getattr(ctx, "command", None), "name", None)
    if command in EXPR_COMMANDS and name.startswith("-") and not name.startswith("--"):
        token = next((a for a in args if a.startswith(name)), name)
        err.message = (f"No such option: {name}. An expression that starts with '-' goes after '--', behind every "
                       f"option: gradcheck {command} [OPTIONS] -- {token!r}")


class JsonErrorGroup(TyperGroup):
    """The app's command group: click's usage errors (an unknown option, a missing
    argument, a bad choice) are shown as usual and exit 2, and with --json the error
    document also goes to stdout; an expression starting with '-' gets a hint."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except Exception as err:  # noqa: BLE001 -- click's exceptions, whichever click typer brings
            if not (hasattr(err, "show") and hasattr(err, "format_message") and hasattr(err, "exit_code")):
                raise
            if type(err).__name__ == "NoSuchOption":
                _leading_dash_hint(err, argv)
            err.show()
            if wants_json(argv) and err.exit_code == 2:
                write_error_json(err.format_message(), "usage")
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def stdout_to_stderr():
    """While checks run, anything printed to stdout (an op's own print(), a C extension's
    printf, a --jobs worker) goes to stderr: stdout carries the report and nothing else.

    Both levels are redirected: sys.stdout for Python code, and file descriptor 1 for C
    code and the worker processes, which inherit it."""
    sys.stdout.flush()
    saved = None
    try:
        fd = sys.stdout.fileno()
        sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError):  # no real stdout (a test runner's buffer): Python level only
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            try:
                sys.__stdout__.flush()
            except (AttributeError, OSError, ValueError):
                pass
            os.dup2(saved, fd)
            os.close(saved)


def emit(report, as_json: bool, junit: Optional[Path], summary: bool = False, detail: str = "full") -> None:
    """Write JUnit to its file (atomically) and the report (table or JSON) to stdout; exit
    with the report's code.  `summary`: one row per check plus the failed checks' tables
    (for `run`); `detail`: --json-detail.  A write that fails after the checks ran still
    delivers what it can and keeps the verdict: exit 1 stays 1; a passing run whose report
    could not be written exits 2, never 0."""
    problems = []
    if junit is not None:
        from gradcheck_cli.render import junit as junit_render

        try:
            junit_render.write(report, junit)
        except UserInputError as err:
            problems.append(err.render())
    try:
        if as_json:
            from gradcheck_cli.render import json_out

            write_stdout(json_out.render(report, detail) + "\n")
        elif summary:
            from gradcheck_cli.render import summary as summary_render

            summary_render.render(report)
        else:
            from gradcheck_cli.render import table

            table.render(report)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        problems.append(f"cannot write the report to stdout: {exc.strerror or exc}")
        stdout_to_devnull()
    for problem in problems:
        typer.echo(f"gradcheck: error: {problem}", err=True)
    code = report.exit_code
    raise typer.Exit(2 if problems and code == 0 else code)


def stdout_to_devnull() -> None:
    """After a failed write: what is left in stdout's buffer goes nowhere, quietly (the
    interpreter's last flush would otherwise complain about it)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def prepare_junit(junit: Optional[Path]) -> None:
    """An unwritable --junit path is found before any check runs (exit 2 at once)."""
    if junit is not None:
        from gradcheck_cli.output import prepare_file

        prepare_file(junit, "--junit")


def check_detail(detail: str) -> str:
    from gradcheck_cli.report import DETAILS

    if detail not in DETAILS:
        raise UserInputError(f"--json-detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    return detail


def progress(label: str, enabled: bool):
    """A progress callback drawing on stderr, only when stderr is a terminal."""
    if not enabled or not sys.stderr.isatty() or os.environ.get("NO_COLOR"):
        return None
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(file=sys.stderr), transient=True)
    task = bar.add_task(label, total=None)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)
        if done >= total:
            bar.stop()

    return update


def quiet_broken_pipe() -> None:
    """Python's signal docs, "Note on SIGPIPE": point stdout at devnull so the interpreter's
    final flush does not raise again, then exit."""
    stdout_to_devnull()
    sys.exit(1)


def prefetch_renderer(as_json: bool, junit: Optional[Path] = None) -> None:
    """Import the renderer the report needs in a background thread, while the worker runs
    the check: the parent waits on a pipe meanwhile, so these imports cost no wall time.
    (numpy and the report, which unpickling the result needs, are already loaded: `op`
    imports them to validate its options before it calls this.)"""
    import importlib
    import threading

    names = ["gradcheck_cli.render.json_out" if as_json else "gradcheck_cli.render.table"] + \
        (["gradcheck_cli.render.junit"] if junit is not None else [])

    def load() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 -- a head start only: the real import reports any problem
                return

    threading.Thread(target=load, name="gradcheck-prefetch", daemon=True).start()


def exit_now(code) -> None:
    """Exit with `code` (a SystemExit's) without the interpreter's teardown of every loaded
    module, which with torch, SymPy, numpy and rich loaded costs 0.03-0.1 s after the report
    is out.  First what a normal exit does that matters: the other non-daemon threads are
    joined, atexit handlers run (multiprocessing stops its server and removes its folder),
    stdout and stderr are flushed.  A flush that fails returns instead, and the caller
    exits the normal way (its errors are handled there).  The parent runs no user code,
    so nothing else waits for the teardown."""
    import atexit
    import threading

    code = exit_status(code)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None:  # not CPython: the normal way
        return
    run_exitfuncs()
    if not flush_std():
        return
    os._exit(code & 0xFF)
