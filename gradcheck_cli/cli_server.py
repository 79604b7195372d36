"""`gradcheck server start|stop|status`: the persistent worker server (suite/daemon.py,
suite/remote.py), thin commands like the rest of the CLI."""

from __future__ import annotations

import json
import math
import time

import typer

from gradcheck_cli.cli_io import TYPER_SETTINGS, JsonErrorGroup, fail
from gradcheck_cli.errors import UserInputError
from gradcheck_cli.output import write_stdout

server_app = typer.Typer(
    help="A persistent server: torch, SymPy and gradcheck imported once, so every later `gradcheck check`, `op`, "
         "`run` and `steps` in this environment runs in a process forked from it and skips their ~1.3 s import "
         "(opt-in; GRADCHECK_SERVER=off ignores it).",
    cls=JsonErrorGroup,
    **TYPER_SETTINGS,
)


def _describe(info: dict) -> str:
    up = time.time() - float(info.get("started", time.time()))
    idle = float(info.get("idle_timeout_s", 0))
    ends = f"exits after {idle / 60:g} min with nothing to do" if idle > 0 else "runs until `gradcheck server stop`"
    return (f"pid {info.get('pid')}, up {up:.0f} s, {info.get('served', 0)} workers started, "
            f"{info.get('workers_running', 0)} running, {info.get('commands', 0)} commands run, "
            f"{info.get('commands_running', 0)} running, peak {info.get('rss_mib', '?')} MiB; {ends}")


@server_app.command()
def start(idle_timeout: float = typer.Option(30.0, "--idle-timeout", metavar="MINUTES",
                                             help="exit after this long with no worker and no caller (0: never)"),
          as_json: bool = typer.Option(False, "--json", help="its status as JSON on stdout")) -> None:
    """Start this environment's server (imports torch and SymPy, then waits for callers)."""
    from gradcheck_cli.suite import remote

    if not math.isfinite(idle_timeout) or idle_timeout < 0:
        raise fail(UserInputError(f"--idle-timeout must be >= 0 minutes, got {idle_timeout:g}"), as_json)
    try:
        info, started = remote.start(idle_timeout)
    except UserInputError as err:
        raise fail(err, as_json) from None
    if as_json:
        write_stdout(json.dumps({**info, "started_now": started}) + "\n")
    else:
        typer.echo(f"gradcheck server {'started' if started else 'already running'}: {_describe(info)}")


@server_app.command()
def stop(wait: float = typer.Option(10.0, "--wait", metavar="SECONDS", help="how long to wait for it to exit "
                                    "(it takes no new caller at once; running workers finish first)"),
         as_json: bool = typer.Option(False, "--json", help="what was stopped, as JSON on stdout")) -> None:
    """Stop this environment's server (running workers finish first).  No server: says so, exit 0."""
    from gradcheck_cli.suite import remote

    if not math.isfinite(wait) or wait < 0:
        raise fail(UserInputError(f"--wait must be >= 0 seconds, got {wait:g}"), as_json)
    answer = remote.stop(wait)
    if as_json:
        write_stdout(json.dumps({"stopped": answer is not None, "pid": (answer or {}).get("pid"),
                                 "exited": (answer or {}).get("exited", False)}) + "\n")
    elif answer is None:
        typer.echo("gradcheck server: none running for this environment")
    elif answer["exited"]:
        typer.echo(f"gradcheck server stopped (pid {answer['pid']})")
    else:
        typer.echo(f"gradcheck server stopping (pid {answer['pid']}): it takes no new caller and exits when its "
                   f"{answer.get('workers_running', 0)} running worker(s) and {answer.get('commands_running', 0)} "
                   "running command(s) end")


@server_app.command()
def status(as_json: bool = typer.Option(False, "--json", help="the status as JSON on stdout")) -> None:
    """Whether a server serves this environment (exit 0) or not (exit 1)."""
    from gradcheck_cli.suite import remote

    try:
        remote.safe_directory()
    except FileNotFoundError:
        pass
    except UserInputError as err:
        raise fail(err, as_json) from None
    off = remote.disabled()
    info = None if off else remote.status()
    if as_json:
        write_stdout(json.dumps({"running": info is not None, **(info or {}),
                                 "socket": str(remote.socket_path()), "disabled": off}) + "\n")
    elif info is None:
        why = " (GRADCHECK_SERVER is off)" if off else ""
        typer.echo(f"gradcheck server: none running for this environment{why}")
    else:
        typer.echo(f"gradcheck server: running, {_describe(info)}")
    raise typer.Exit(0 if info is not None else 1)
