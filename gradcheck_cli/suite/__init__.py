"""The suite runner: TOML spec files -> validated checks -> worker processes -> one Report.

    spec.py      finding and reading spec files, [defaults], CheckSpec
    validate.py  each key's type and range, with the user's message
    shard.py     --shard K/N by a stable hash of the check's name
    run.py       running a suite: preflight, scheduling, --fail-fast, interrupted runs
    workers.py   the worker processes: isolation, timeouts, crashes, signals
    child.py     a worker process's side: one job after another
    server.py    the workers' server's own setup (it lets go of stdout/stderr, exits at once)
    runner.py    one check in this process (a worker's): Runner
    failures.py  the reports of checks that did not finish
    stream.py    the JUnit file kept up to date while checks run
"""

from __future__ import annotations

from gradcheck_cli.suite.run import RunResult, run_paths, run_specs
from gradcheck_cli.suite.runner import Runner
from gradcheck_cli.suite.shard import parse_shard, select_shard, shard_of
from gradcheck_cli.suite.spec import CheckSpec, discover, load, load_file, read_toml

__all__ = ["CheckSpec", "RunResult", "Runner", "discover", "load", "load_file", "parse_shard", "read_toml",
           "run_paths", "run_specs", "select_shard", "shard_of"]
