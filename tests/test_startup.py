"""`--help` stays instant: it must not import torch, sympy or numpy.

Stub packages that raise on import are put first on the path of a subprocess; any
help screen that touches them fails.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "sympy", "numpy", "mpmath")


@pytest.fixture(scope="module")
def stub_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("stubs")
    for name in HEAVY:
        pkg = root / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(f"raise ImportError('{name} was imported by a help screen')\n")
    return root


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["op", "--help"], ["run", "--help"],
                                  ["steps", "--help"], ["schema", "--help"]],
                         ids=["root", "check", "op", "run", "steps", "schema"])
def test_help_imports_no_heavy_module(stub_path, argv):
    env = {**os.environ, "PYTHONPATH": str(stub_path)}
    proc = subprocess.run([sys.executable, "-m", "gradcheck_cli", *argv], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    assert "was imported" not in proc.stderr


def test_stubs_really_block_imports(stub_path):
    """The stubs work: a command that needs torch does fail under them (the test can fail)."""
    env = {**os.environ, "PYTHONPATH": str(stub_path)}
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode != 0 and "was imported" in proc.stderr


def test_every_command_has_help_text():
    from typer.main import get_command

    from gradcheck_cli.cli import app

    group = get_command(app)
    assert set(group.commands) >= {"check", "op", "run", "steps", "schema"}
    for name, command in group.commands.items():
        assert command.help and len(command.help) > 20, name
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{name} {param.opts} has no help"


def _imported(argv: list) -> set:
    """Every module any process of `gradcheck ARGV` imported (python -X importtime reaches
    the workers' server and the workers, whose stderr comes back to the caller's)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "gradcheck_cli", *argv], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


SWISH = os.path.join(os.path.dirname(__file__), "..", "samples", "ops", "swish.py") + ":Swish"


def test_a_plain_op_check_imports_no_sympy_and_no_table_renderer_for_json():
    """Issue 16: `gradcheck op` without --reference leaves SymPy (~0.4 s) out of every process,
    and with --json the parent never loads rich; with --reference SymPy is there (the
    measurement sees it: the test can fail)."""
    plain = _imported(["op", SWISH, "--at", "x=randn(3)", "--mode", "full", "--json"])
    assert "torch" in plain and "gradcheck_cli.op.full" in plain  # the check really ran
    assert "sympy" not in plain and "rich" not in plain
    exact = _imported(["op", SWISH, "--at", "x=randn(3)", "--reference", "x*sigmoid(x)", "--json"])
    assert "sympy" in exact
