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


DUMPING_OP = """
import os, sys
import torch

def swish(x):
    with open(os.environ["GRADCHECK_TEST_MODULES"], "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    return x * torch.sigmoid(x)
"""


def _imported(argv: list, folder) -> set:
    """Every module imported by the parent of `gradcheck ARGV` (python -X importtime, on its
    stderr) and by the worker that ran the op, its server's included (the op writes out
    its process's sys.modules: the server's stderr is /dev/null)."""
    op = folder / "dumping.py"
    op.write_text(DUMPING_OP)
    dump = folder / "modules.txt"
    env = {**os.environ, "GRADCHECK_TEST_MODULES": str(dump)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "gradcheck_cli", "op", f"{op}:swish", *argv],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    parent = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return parent | set(dump.read_text().split())


def test_a_plain_op_check_imports_no_sympy_and_no_table_renderer_for_json(tmp_path):
    """Issue 16: `gradcheck op` without --reference leaves SymPy (~0.4 s) out of every process,
    and with --json the parent never loads rich; with --reference SymPy is there (the
    measurement sees it: the test can fail)."""
    plain = _imported(["--at", "x=randn(3)", "--mode", "full", "--json"], tmp_path)
    assert "torch" in plain and "gradcheck_cli.op.full" in plain  # the check really ran
    assert "sympy" not in plain and "rich" not in plain
    exact = _imported(["--at", "x=randn(3)", "--reference", "x*sigmoid(x)", "--json"], tmp_path)
    assert "sympy" in exact


@pytest.mark.parametrize("argv, started", [
    (["op", "m.py:f", "--at", "x=1"], [False]),
    (["op", "m.py:f", "--at", "x=1", "--reference", "x*2"], [True]),
    (["op", "m.py:f", "--reference=x*2"], [True]),
    (["run", "specs/"], [True]),
    (["op", "--help"], []),
    (["run", "-h"], []),
    (["check", "x**2", "--at", "x=1"], []),
    (["--version"], []),
    ([], []),
])
def test_op_and_run_start_the_server_before_typer_parses(monkeypatch, argv, started):
    """The workers' server (torch's import: most of `op`'s and `run`'s start-up) starts before
    the command line is parsed, with SymPy exactly when the command will want it."""
    from gradcheck_cli import cli
    from gradcheck_cli.suite import workers

    calls = []
    monkeypatch.setattr(workers, "warm_up", lambda symbolic=True: calls.append(symbolic))
    cli.start_server_early(argv)
    assert calls == started


def test_the_quick_exit_leaves_no_temporary_folder_and_keeps_the_exit_code(tmp_path):
    """main() ends with os._exit after the report (cli_io.exit_now): multiprocessing's own
    cleanup must still run (its server's folder under TMPDIR removed), and the code is the
    report's."""
    from cli_util import clean_env, run_gradcheck

    spec = tmp_path / "s.toml"
    spec.write_text('[[check]]\nname = "ok"\nexpr = "x**2"\nat = { x = 3 }\n\n'
                    '[[check]]\nname = "op"\nop = "torch:tanh"\nat = { x = "randn(3)" }\n')
    temp = tmp_path / "tmp"
    temp.mkdir()
    done = run_gradcheck(["run", str(spec), "--jobs", "2"], env=clean_env(TMPDIR=str(temp)))
    assert done.returncode == 0, done.stderr
    assert "PASS" in done.stdout and done.stdout.endswith("\n")
    assert list(temp.iterdir()) == []
    failed = run_gradcheck(["check", "x**2", "--at", "x=3", "--atol", "-1"], env=clean_env(TMPDIR=str(temp)))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
