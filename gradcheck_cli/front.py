"""The `gradcheck` command's entry point: the whole command goes to the persistent server
when one serves this environment (suite/forward.py: it starts with torch and SymPy already
imported), else it runs here (cli.main).  Imports nothing heavy before that choice."""

from __future__ import annotations

import sys


def main() -> None:
    from gradcheck_cli.suite.forward import exit_like, hand_over

    status = hand_over(sys.argv)
    if status is not None:
        exit_like(status)
    from gradcheck_cli.cli import main as run_here

    run_here()
