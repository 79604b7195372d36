"""Output discipline: no escape codes off a terminal or under NO_COLOR, a quiet exit when
the reader closes the pipe early, and `--json` stdout that stays one strict JSON
document even when torch, NumPy or SymPy warn.

The colour tests are shown able to fail: on a real pseudo-terminal, without NO_COLOR,
the same command does print escape codes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings

import pytest
from typer.testing import CliRunner

from cli_util import clean_env, gradcheck_command, run_gradcheck, terminal_output
from gradcheck_cli.cli import app
from schema_util import validate_json_text

ESC = "\x1b"
SMALL = ["check", "sin(x)*y", "--at", "x=0.5", "--at", "y=2"]


def run_in_pty(args: list[str], env: dict, timeout: float = 120) -> tuple[int, str, str]:
    """Run with stdout on a pseudo-terminal (what a user's shell gives it): (exit code,
    stdout, stderr) as text."""
    returncode, shown, err = terminal_output(args, env, timeout=timeout)
    return returncode, shown.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace")


# -- colour -------------------------------------------------------------------------------


def test_piped_table_has_no_escape_codes():
    result = run_gradcheck(SMALL)
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout and "d/d" in result.stdout
    assert ESC not in result.stdout and ESC not in result.stderr


@pytest.mark.parametrize("no_color, coloured", [
    pytest.param(None, True, id="terminal-colour"),
    pytest.param("1", False, id="terminal-NO_COLOR"),
])
def test_terminal_colour_follows_no_color(no_color, coloured):
    env = clean_env(TERM="xterm-256color")
    if no_color is not None:
        env["NO_COLOR"] = no_color
    returncode, stdout, stderr = run_in_pty(SMALL, env)
    assert returncode == 0, stderr
    assert "PASS" in stdout
    assert (ESC in stdout) is coloured, repr(stdout[:300])
    assert ESC not in stderr


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("isatty, no_color, coloured", [
    pytest.param(True, None, True, id="tty"),
    pytest.param(True, "1", False, id="tty-NO_COLOR=1"),
    pytest.param(True, "anything", False, id="tty-NO_COLOR=anything"),
    pytest.param(True, "", True, id="tty-NO_COLOR-empty-is-unset"),  # no-color.org: only a non-empty value
    pytest.param(False, None, False, id="not-a-tty"),
])
def test_make_console_colour_rules(monkeypatch, isatty, no_color, coloured):
    """The rule itself, on the table renderer, without a process per case."""
    from gradcheck_cli.checker import check_expression
    from gradcheck_cli.render import table

    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    out = FakeTerminal() if isatty else io.StringIO()
    report = check_expression("relu(x) + x**2", {"x": 0.0})  # a diagnostic line too: coloured text
    table.render(report, table.make_console(out))
    text = out.getvalue()
    assert "PASS" in text
    assert (ESC in text) is coloured, repr(text[:200])


def test_help_through_a_pipe_is_plain():
    result = run_gradcheck(["check", "--help"])
    assert result.returncode == 0
    assert "--json" in result.stdout and ESC not in result.stdout


# -- the reader closes the pipe early ------------------------------------------------------


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_reader_gone_before_output(unbuffered):
    """The harshest early close: nobody is reading when the first byte is written."""
    env = clean_env()
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(gradcheck_command() + ["schema"], stdout=write_end, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=env, timeout=60)
    finally:
        os.close(write_end)
    stderr = proc.stderr.decode("utf-8", errors="replace")
    assert stderr == "", stderr  # no traceback, no "Exception ignored ... BrokenPipeError"
    assert proc.returncode == 1  # Python's own convention for EPIPE (signal docs, "Note on SIGPIPE")


@pytest.mark.parametrize("args, unbuffered", [
    # 2 MB of JSON: the writer is blocked on a full pipe when `head` exits.  Unbuffered is the
    # stricter case (a partial write used to be dropped silently: exit 0, truncated JSON);
    # the buffered path is covered by test_reader_gone_before_output.
    pytest.param(["check", "tanh(x)", "--at", "x=randn(160)", "--json"], True, id="json-PYTHONUNBUFFERED"),
    # A table of a few lines fits in the pipe: written whole before `head -1` exits, that is
    # a success (status 0), so a table through `head -1` raced the pipe (issue 15).  The
    # table's reader exits at once instead, seconds before gradcheck writes anything.
    pytest.param(["check", "sum(x*x)", "--at", "x=randn(50)"], False, id="table"),
])
def test_pipe_into_head_exits_quietly(tmp_path, args, unbuffered):
    """`gradcheck ... | head -1` in a real shell: head prints the first line, gradcheck's
    stderr stays empty, and its exit status is 1 (the reader left), never a traceback, a
    signal death or a silent 0 with truncated output."""
    env = clean_env()
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    command = " ".join(_quote(a) for a in gradcheck_command() + args)
    reader = "head -1" if "--json" in args else "head -c 0"  # see the table row above
    script = f'{command} 2>"{tmp_path}/err" | {reader}; echo "status=${{PIPESTATUS[0]}}"'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, env=env, timeout=120)
    out = proc.stdout.decode("utf-8", errors="replace").splitlines()
    stderr = (tmp_path / "err").read_text("utf-8", errors="replace")
    assert stderr == "", stderr
    assert out[-1] == "status=1", out
    if "--json" in args:
        assert out == ["{", "status=1"], out


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# -- warnings under --json ------------------------------------------------------------------


def test_warnings_under_json_go_into_diagnostics_process():
    """NumPy warns at x = inf; with every warning forced on, stdout is still pure JSON and
    the warnings are diagnostics, not lines on stderr."""
    env = clean_env(PYTHONWARNINGS="always")
    result = run_gradcheck(["check", "x*y", "--at", "x=inf", "--at", "y=2", "--json"], env=env)
    assert result.returncode == 1, result.stderr
    doc = validate_json_text(result.stdout)
    codes = [d["code"] for d in doc["checks"][0]["diagnostics"]]
    assert "warning" in codes and "nonfinite" in codes
    assert "Warning" not in result.stderr, result.stderr


def test_torch_and_sympy_warnings_become_diagnostics(monkeypatch):
    """Warnings raised inside autograd (torch) and inside the SymPy model (SymPy's own
    deprecation warning class) end up as `warning` diagnostics; stdout is only JSON."""
    from sympy.utilities.exceptions import SymPyDeprecationWarning

    from gradcheck_cli.engines import autograd, symbolic

    real_run, real_build = autograd.run, symbolic.build

    def noisy_run(*args, **kwargs):
        warnings.warn("torch: a UserWarning from the backward pass", UserWarning)
        return real_run(*args, **kwargs)

    def noisy_build(*args, **kwargs):
        warnings.warn(SymPyDeprecationWarning("old sympy API", deprecated_since_version="1.0",
                                              active_deprecations_target="x"))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(autograd, "run", noisy_run)
    monkeypatch.setattr(symbolic, "build", noisy_build)
    result = CliRunner().invoke(app, ["check", "exp(x)*y", "--at", "x=0.5", "--at", "y=2", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = validate_json_text(result.stdout)
    messages = [d["message"] for d in doc["checks"][0]["diagnostics"] if d["code"] == "warning"]
    assert any("UserWarning: torch: a UserWarning" in m for m in messages), messages
    assert any("SymPyDeprecationWarning" in m and "old sympy API" in m for m in messages), messages
    assert "Warning" not in result.stderr


def test_user_error_with_json_writes_only_the_error_document_to_stdout():
    """Exit 2 with --json: stdout is the error document (issue 15: `... --json | jq` must not
    silently yield nothing), stderr the human message."""
    result = CliRunner().invoke(app, ["check", "x^2", "--at", "x=1", "--json"])
    assert result.exit_code == 2
    doc = validate_json_text(result.stdout)
    assert set(doc) >= {"schema_version", "error"} and "checks" not in doc
    assert doc["error"]["kind"] == "parse" and "use ** for powers" in doc["error"]["message"]
    assert "use ** for powers" in result.stderr


if sys.platform == "win32":  # pragma: no cover - pty and bash pipelines are POSIX
    pytestmark = pytest.mark.skip("POSIX terminals and pipes")
