"""Shared fixtures: the CLI through typer's CliRunner, and a strict JSON reader."""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import pytest

import report_audit

# A developer's own `gradcheck server` must not serve the suite's checks (tests about
# workers would see the server's instead of the run's): off for this process and every
# gradcheck it starts; tests/test_server.py turns it on for its own servers.
os.environ["GRADCHECK_SERVER"] = "off"


class CliResult(NamedTuple):
    """What a CLI run left behind: unpacks as (exit_code, stdout, stderr)."""

    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli():
    """Run `gradcheck ARGS...` in-process; returns (exit_code, stdout, stderr).

    stdout and stderr are captured separately (this typer's CliRunner keeps them apart).
    An exception other than SystemExit escaping the command is exactly what a user would
    see as a traceback, so it is re-raised here and fails the test.
    """
    from typer.testing import CliRunner

    from gradcheck_cli.cli import app

    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None) -> CliResult:
        result = runner.invoke(app, list(args), env=env, catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name} (NaN/Infinity are not JSON)")


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as RFC 8259 does."""
    return json.loads(text, parse_constant=_reject_constant)


@pytest.fixture
def strict_json():
    """The strict JSON reader, as a fixture."""
    return strict_loads


SEED_ARGS = ("check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2", "--at", "b=1",
             "--at", "x=6.7", "--wrt", "w,b")


@pytest.fixture
def seed_args():
    """The seed notebook's example as CLI arguments (add --dtype and --json as needed)."""
    return list(SEED_ARGS)


@pytest.fixture(scope="session", autouse=True)
def _audit_every_report():
    """Every Report built and every JSON report made during the session is audited
    (tests/report_audit.py): registered codes, true severities, the published schema."""
    report_audit.install()
    yield


@pytest.fixture(autouse=True)
def _no_report_problems():
    """Fail the test that produced a report the audit found wrong."""
    start = len(report_audit.PROBLEMS)
    yield
    found = report_audit.PROBLEMS[start:]
    del report_audit.PROBLEMS[start:]
    if found:
        pytest.fail("reports made by this test are wrong:\n" + "\n".join(found[:10]), pytrace=False)
