"""Reports as checks end: the JUnit file is rewritten (atomically) while the run goes on,
so a CI job killed from outside still leaves the checks that finished; each check's
testcase is rendered once.  The final report is written by the command as usual."""

from __future__ import annotations

import sys
import time
from pathlib import Path

MIN_INTERVAL_S = 1.0  # between two rewrites of the file while checks are running


class ReportStream:
    """Keeps `path` holding a JUnit report of the checks finished so far."""

    def __init__(self, path: Path, interval: float = MIN_INTERVAL_S):
        self.path = Path(path)
        self.interval = interval
        self.cache: dict = {}
        self.last = 0.0
        self.failed = False

    def update(self, results: list) -> None:
        """The checks finished so far, in suite order.  A write that fails is said once on
        stderr and not tried again until the final report (which says so again)."""
        now = time.monotonic()
        if self.failed or now - self.last < self.interval:
            return
        self.last = now
        from gradcheck_cli.errors import UserInputError
        from gradcheck_cli.output import write_atomically
        from gradcheck_cli.render.junit import render
        from gradcheck_cli.report import Report

        try:
            write_atomically(self.path, render(Report(tuple(results)), cache=self.cache),
                             "--junit")
        except UserInputError as err:
            self.failed = True
            sys.stderr.write(f"gradcheck: warning: {err.message}; the run goes on\n")
