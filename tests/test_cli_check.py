"""`gradcheck check` from the command line: through typer's CliRunner (in process) and as
the installed console script and `python -m gradcheck_cli` (subprocesses, as users run it).

Numbers are judged against hand-derived truths (see test_check_api.seed_truth); here the
point is what the command prints, where it prints it, and its exit code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import strict_loads


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# the seed example by hand (float64 is enough at this tolerance): z = 2*6.7 + 1 = 14.4
SEED_DW, SEED_DB = 6.7 * sigmoid(14.4), sigmoid(14.4)


def by_wrt(check: dict) -> dict:
    return {g["wrt"]: g for g in check["gradients"]}


# ---- the seed example ------------------------------------------------------------------------------

def test_seed_float32_table(run_cli, seed_args):
    code, out, err = run_cli(*seed_args, "--dtype", "float32")
    assert code == 0, err
    assert err == ""  # tables go to stdout; nothing to say on stderr when all is well
    assert "14.3329" in out                       # the float32 loss
    assert "14.4000006" in out                    # beside the exact one
    assert "precision_loss" in out
    assert "PASS" in out
    assert "\x1b[" not in out                     # no escape codes when stdout is not a terminal
    for name in ("w", "b"):
        assert any(line.lstrip("│ ").startswith(name) for line in out.splitlines())


def test_seed_float32_json(run_cli, seed_args):
    code, out, err = run_cli(*seed_args, "--dtype", "float32", "--json")
    assert code == 0, err
    doc = strict_loads(out)
    (check,) = doc["checks"]
    assert check["dtype"] == "float32" and check["passed"] is True
    assert round(check["value"]["torch"], 4) == 14.3329
    assert abs(check["value"]["symbolic"] - 14.4000005574) < 1e-9
    assert "precision_loss" in {d["code"] for d in check["diagnostics"]}
    g = by_wrt(check)
    assert list(g) == ["w", "b"]
    for name, truth in (("w", SEED_DW), ("b", SEED_DB)):
        for method in ("autograd", "symbolic", "finite_difference"):
            assert abs(g[name][method] - truth) / truth < 1e-5, (name, method)


def test_seed_float64_json(run_cli, seed_args):
    code, out, err = run_cli(*seed_args, "--json")
    assert code == 0, err
    (check,) = strict_loads(out)["checks"]
    assert abs(check["value"]["torch"] - 14.4000005574) < 1e-9
    assert "precision_loss" not in {d["code"] for d in check["diagnostics"]}
    for name, truth in by_wrt(check).items():
        a, s, f = truth["autograd"], truth["symbolic"], truth["finite_difference"]
        assert abs(a - s) / abs(s) <= 1e-9
        assert abs(f - s) / abs(s) <= 1e-6
        assert abs(s - {"w": SEED_DW, "b": SEED_DB}[name]) <= 1e-9


def test_mean_of_squares(run_cli):
    code, out, err = run_cli("check", "mean(x1**2)", "--at", "x1=[1,2,3,4,5]", "--json")
    assert code == 0, err
    (g,) = strict_loads(out)["checks"][0]["gradients"]
    assert g["shape"] == [5]
    for method in ("autograd", "symbolic", "finite_difference"):
        assert g[method] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0], rel=1e-9)


def test_mean_of_squares_table_shows_every_element(run_cli):
    code, out, _ = run_cli("check", "mean(x1**2)", "--at", "x1=[1,2,3,4,5]")
    assert code == 0
    for v in ("0.4", "0.8", "1.6", "2"):
        assert v in out


# ---- options ---------------------------------------------------------------------------------------

def test_wrt_restricts(run_cli):
    code, out, _ = run_cli("check", "x*y*z", "--at", "x=1.5", "--at", "y=-2", "--at", "z=0.5", "--wrt", "z,x",
                           "--json")
    assert code == 0
    g = by_wrt(strict_loads(out)["checks"][0])
    assert list(g) == ["z", "x"]
    assert g["z"]["autograd"] == pytest.approx(-3.0) and g["x"]["autograd"] == pytest.approx(-1.0)


def test_broadcast_jacobian_shapes(run_cli):
    code, out, _ = run_cli("check", "w*x+b", "--at", "w=2", "--at", "x=[1,2,3]", "--at", "b=0.5", "--json")
    assert code == 0
    g = by_wrt(strict_loads(out)["checks"][0])
    assert g["w"]["shape"] == [3] and g["x"]["shape"] == [3, 3] and g["b"]["shape"] == [3]
    assert g["x"]["symbolic"] == [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]
    assert g["w"]["autograd"] == [1.0, 2.0, 3.0]


def test_detach_passes_with_stop_gradient(run_cli):
    code, out, _ = run_cli("check", "x*detach(x)", "--at", "x=3", "--json")
    assert code == 0
    (check,) = strict_loads(out)["checks"]
    (g,) = check["gradients"]
    assert g["autograd"] == 3.0 and g["symbolic"] == 3.0 and g["finite_difference"] == pytest.approx(6.0)
    assert "stop_gradient" in {d["code"] for d in check["diagnostics"]}


def test_where_masked_nan_exits_1(run_cli):
    code, out, _ = run_cli("check", "where(x > 0, sqrt(x), x)", "--at", "x=-1")
    assert code == 1
    assert "masked_nan" in out and "FAIL" in out


def test_kink_passes_with_a_diagnostic(run_cli):
    code, out, _ = run_cli("check", "relu(x)", "--at", "x=0")
    assert code == 0
    assert "non_differentiable" in out


def test_formula_option(run_cli):
    code, out, _ = run_cli("check", "x**3", "--at", "x=2", "--formula")
    assert code == 0 and "3*x**2" in out
    code, out, _ = run_cli("check", "x**3", "--at", "x=2", "--formula", "--json")
    assert strict_loads(out)["checks"][0]["gradients"][0]["formula"] == "3*x**2"


def test_seed_option_changes_generated_values(run_cli):
    def point(seed):
        _, out, _ = run_cli("check", "sum(x**2)", "--at", "x=randn(3)", "--seed", str(seed), "--json")
        return strict_loads(out)["checks"][0]["point"]["x"]

    assert point(3) == point(3)
    assert point(3) != point(4)


def test_no_color_and_plain_output(run_cli, seed_args):
    code, out, _ = run_cli(*seed_args, env={"NO_COLOR": "1"})
    assert code == 0 and "\x1b[" not in out


# ---- bad input: exit 2, one clear message on stderr, never a traceback ------------------------------------

BAD_INPUT = [
    ("unparsable", ["check", "sin(x", "--at", "x=1"], ["expected ')'", "column 6"]),
    ("unknown-function", ["check", "sinn(x)", "--at", "x=1"], ["unknown function 'sinn'", "did you mean sin?"]),
    ("attribute-access", ["check", "x.real", "--at", "x=1"], ["attribute access"]),
    ("caret-power", ["check", "x^2", "--at", "x=1"], ["use **"]),
    ("comparison-outside-where", ["check", "x < 1", "--at", "x=1"], ["first argument of where("]),
    ("missing-value", ["check", "x*y", "--at", "x=1"], ["no value for 'y'"]),
    ("value-given-twice", ["check", "x", "--at", "x=1", "--at", "x=2"], ["'x' is given twice"]),
    ("value-for-unused-name", ["check", "x", "--at", "x=1", "--at", "z=2"], ["'z'", "does not use"]),
    ("wrt-unknown", ["check", "x", "--at", "x=1", "--wrt", "q"], ["--wrt 'q'", "no variable 'q'"]),
    ("wrt-empty-name", ["check", "x", "--at", "x=1", "--wrt", "x,,y"], ["empty name"]),
    ("bad-dtype", ["check", "x", "--at", "x=1", "--dtype", "float8"], ["--dtype must be one of", "float8"]),
    ("bad-fd", ["check", "x", "--at", "x=1", "--fd", "magic"], ["--fd must be one of", "magic"]),
    ("bad-loss", ["check", "x", "--at", "x=1", "--loss", "hinge"], ["--loss must be one of", "hinge"]),
    ("loss-without-target", ["check", "x", "--at", "x=1", "--loss", "bce"], ["needs --target"]),
    ("target-without-loss", ["check", "x", "--at", "x=1", "--target", "0"], ["--target needs --loss"]),
    ("shape-mismatch", ["check", "x+y", "--at", "x=[1,2]", "--at", "y=[1,2,3]"],
     ["shapes [2] and [3] do not broadcast", "column 2"]),
    ("at-without-equals", ["check", "x", "--at", "x"], ["expected NAME=VALUE"]),
    ("bad-value", ["check", "x", "--at", "x=[1,2"], ["cannot read the value of 'x'"]),
    ("bad-generator", ["check", "x", "--at", "x=randx(2)"], ["unknown generator 'randx'"]),
    ("ragged", ["check", "sum(x)", "--at", "x=[[1,2],[3]]"], ["ragged"]),
    ("negative-size", ["check", "sum(x)", "--at", "x=randn(-2)"], ["whole numbers >= 0"]),
    ("constant-given-value", ["check", "x*pi", "--at", "x=1", "--at", "pi=3"], ["constant"]),
    ("no-variables", ["check", "2*pi"], ["no variables"]),
    ("negative-eps", ["check", "x", "--at", "x=1", "--eps", "-1"], ["--eps"]),
    ("bad-order", ["check", "x", "--at", "x=1", "--order", "3"], ["--order must be 1 or 2"]),
    ("huge-constant-power", ["check", "x*9**9**9**9", "--at", "x=1"], ["too large"]),
    ("non-ascii", ["check", "ｘ+1", "--at", "x=1"], ["U+FF58"]),
    ("json-mode-still-plain-error", ["check", "x", "--at", "x=1", "--dtype", "nope", "--json"], ["--dtype"]),
]


@pytest.mark.parametrize("args,needles", [pytest.param(a, n, id=i) for i, a, n in BAD_INPUT])
def test_bad_input_exits_2_with_a_message(run_cli, args, needles):
    code, out, err = run_cli(*args)
    assert code == 2
    if "--json" in args:  # stdout is the error document and nothing else (issue 15)
        assert json.loads(out)["error"]["message"] in err
    else:
        assert out == "", "errors go to stderr; stdout stays empty"
    assert "Traceback" not in err
    assert err.startswith("gradcheck: error: ")
    for needle in needles:
        assert needle in err
    assert "\x1b[" not in err


def test_parse_error_shows_a_caret_under_the_column(run_cli):
    code, _, err = run_cli("check", "sin(x", "--at", "x=1")
    assert code == 2
    lines = err.rstrip("\n").splitlines()
    assert lines[-2].strip() == "sin(x"
    assert lines[-1].index("^") == lines[-2].index("sin(x") + 5  # under column 6


@pytest.mark.parametrize("args", [["check", "x", "--at", "x=1", "--points", "abc"], ["check"], ["check", "--nope"]])
def test_usage_errors_exit_2_without_traceback(run_cli, args):
    code, out, err = run_cli(*args)
    assert code == 2
    assert "Traceback" not in out + err


def test_failing_check_exits_1(run_cli):
    code, out, err = run_cli("check", "log(x)", "--at", "x=-1")
    assert code == 1
    assert "FAIL" in out and "Traceback" not in out + err


# ---- the installed console script and python -m, as subprocesses ------------------------------------------

def console_script() -> str:
    found = shutil.which("gradcheck", path=str(Path(sys.executable).parent)) or shutil.which("gradcheck")
    if not found:
        pytest.fail("the gradcheck console script is not installed next to this interpreter")
    return found


def run_process(argv: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_console_script_seed_json():
    proc = run_process([console_script(), *("check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at",
                                            "w=2", "--at", "b=1", "--at", "x=6.7", "--wrt", "w,b", "--json")])
    assert proc.returncode == 0, proc.stderr
    doc = strict_loads(proc.stdout)
    assert abs(doc["checks"][0]["value"]["torch"] - 14.4000005574) < 1e-9
    assert "Traceback" not in proc.stderr


def test_console_script_bad_input():
    proc = run_process([console_script(), "check", "sin(x", "--at", "x=1"])
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "expected ')'" in proc.stderr and "column 6" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_dash_m_seed_float32_table():
    proc = run_process([sys.executable, "-m", "gradcheck_cli", "check", "sigmoid(w*x+b)", "--loss", "bce",
                        "--target", "0", "--at", "w=2", "--at", "b=1", "--at", "x=6.7", "--wrt", "w,b",
                        "--dtype", "float32"])
    assert proc.returncode == 0, proc.stderr
    assert "14.3329" in proc.stdout and "precision_loss" in proc.stdout
    assert "\x1b[" not in proc.stdout  # piped: plain text


def test_python_dash_m_bad_input():
    proc = run_process([sys.executable, "-m", "gradcheck_cli", "check", "x*y", "--at", "x=1", "--json"])
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"] == {"message": "no value for 'y' (give it with --at NAME=VALUE)",
                                                "kind": "input"}
    assert "no value for 'y'" in proc.stderr and "Traceback" not in proc.stderr
