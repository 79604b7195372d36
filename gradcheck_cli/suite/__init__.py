"""The suite runner: TOML spec files -> validated checks -> worker processes -> one Report.

    spec.py      finding and reading spec files, [defaults], CheckSpec
    validate.py  each key's type and range, with the user's message
    shard.py     --shard K/N by a stable hash of the check's name
    run.py       running a suite: preflight, scheduling, --fail-fast, interrupted runs
    workers.py   the worker processes: isolation, timeouts, crashes, signals
    child.py     a worker process's side: one job after another
    server.py    the workers' server's own setup (it lets go of stdout/stderr, exits at once)
    daemon.py    the persistent server (`gradcheck server`); remote.py, wire.py: its callers' side, its messages
    forward.py   a whole command handed to the persistent server; hosted.py: the server's side of it
    runner.py    one check in this process (a worker's): Runner
    failures.py  the reports of checks that did not finish
    stream.py    the JUnit file kept up to date while checks run
"""

from __future__ import annotations

import importlib

# what each public name is loaded from, on first use (PEP 562): `gradcheck` reaches
# forward.py and remote.py through this package before deciding anything, and must not
# pay for the runner's imports on its way
_WHERE = {"RunResult": "run", "run_paths": "run", "run_specs": "run", "Runner": "runner", "parse_shard": "shard",
          "select_shard": "shard", "shard_of": "shard", "CheckSpec": "spec", "discover": "spec", "load": "spec",
          "load_file": "spec", "read_toml": "spec"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
