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
