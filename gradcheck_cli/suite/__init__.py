"""The suite runner: TOML spec files -> validated checks -> one Report.

    spec.py      finding and reading spec files, [defaults], CheckSpec
    validate.py  each key's type and range, with the user's message
    shard.py     --shard K/N by a stable hash of the check's name
    runner.py    running the checks, in process or in --jobs worker processes
"""

from __future__ import annotations

from gradcheck_cli.suite.runner import Runner, run_paths, run_specs
from gradcheck_cli.suite.shard import parse_shard, select_shard, shard_of
from gradcheck_cli.suite.spec import CheckSpec, discover, load, load_file, read_toml

__all__ = ["CheckSpec", "Runner", "discover", "load", "load_file", "parse_shard", "read_toml", "run_paths",
           "run_specs", "select_shard", "shard_of"]
