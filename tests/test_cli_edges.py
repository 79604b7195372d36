"""The command line's edges (issue 15): exit 2 with --json prints the error document on
every command, --device cuda[:N] is understood everywhere and refused clearly without the
device, --version, an expression starting with '-' (after '--'), and the bce_clamped
warning when bce's clamp silently zeroes the gradient."""

from __future__ import annotations

import json
import math
import platform

import pytest
import sympy
import torch

from cli_util import run_gradcheck
from schema_util import validate_json_text

SEED = ["--at", "w=2", "--at", "b=1", "--at", "x=6.7", "--wrt", "w,b"]
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[[check]]\nname = "sq"\nexpr = "x**2"\nat = { x = 1.5 }\n', encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[check]]\nname = "sq"\nexpr = "x**2"\nat = { x = 1.5 }\ncolour = "red"\n', encoding="utf-8")
    return path, bad


# ---- exit 2 with --json: the error document, on every command -------------------------------------

ERRORS = [
    # (arguments, error.kind, fragment of the message)
    (["check", "sin(x", "--at", "x=1"], "parse", "expected ')'"),
    (["check", "x*y", "--at", "x=1"], "input", "no value for 'y'"),
    (["check", "x", "--at", "x=1", "--bogus"], "usage", "No such option: --bogus"),
    (["check", "--at", "x=1"], "usage", "Missing argument"),
    (["op", "missing_file.py:F", "--at", "x=1"], "input", "not found"),
    (["op", "torch:sin", "--at", "x=1", "--mode", "slow"], "input", "--mode must be"),
    (["run", "{bad}"], "spec", "colour"),
    (["run", "{spec}", "--shard", "3/2"], "input", "shard"),
    (["steps", "sin(x", "--at", "x=1"], "parse", "expected ')'"),
    (["steps", "sin(x)", "--at", "x=1", "--bogus"], "usage", "No such option: --bogus"),
    (["steps", "sin(x)", "--at", "x=1", "--device", "tpu"], "input", "--device must be cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize("args, kind, fragment", ERRORS,
                         ids=["check-parse", "check-input", "check-usage", "check-missing-arg", "op-target",
                              "op-option", "run-spec", "run-shard", "steps-parse", "steps-usage", "steps-device"])
def test_exit_2_with_json_prints_the_error_document(spec, args, kind, fragment):
    args = [a.format(spec=spec[0], bad=spec[1]) for a in args]
    result = run_gradcheck(args + ["--json"])
    assert result.returncode == 2, result.stderr
    doc = validate_json_text(result.stdout)
    assert doc["schema_version"] == 1 and doc["passed"] is False and "checks" not in doc
    assert doc["error"]["kind"] == kind and fragment in doc["error"]["message"]
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert set(doc["tool"]) == {"gradcheck", "torch", "sympy", "python"}


def test_without_json_exit_2_keeps_stdout_empty():
    result = run_gradcheck(["check", "sin(x", "--at", "x=1"])
    assert result.returncode == 2 and result.stdout == "" and "expected ')'" in result.stderr


def test_a_parse_error_keeps_its_column():
    result = run_gradcheck(["check", "sin(x", "--at", "x=1", "--json"])
    assert json.loads(result.stdout)["error"]["column"] == 6


# ---- --device cuda[:N] ------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA (the refusal is what is tested)")
@pytest.mark.parametrize("args", [
    ["check", "x**2", "--at", "x=1", "--device", "cuda"],
    ["check", "x**2", "--at", "x=1", "--device", "cuda:1"],
    ["op", "torch:sin", "--at", "x=randn(3)", "--device", "cuda"],
    ["op", "torch:sin", "--at", "x=randn(3)", "--device", "cuda:0"],
    ["run", "{spec}", "--device", "cuda:2"],
    ["steps", "sin(x)", "--at", "x=1", "--device", "cuda"],
], ids=["check-cuda", "check-cuda1", "op-cuda", "op-cuda0", "run-cuda2", "steps-cuda"])
def test_cuda_without_a_gpu_is_exit_2_with_a_clear_message(spec, args):
    args = [a.format(spec=spec[0]) for a in args]
    result = run_gradcheck(args + ["--json"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device is available to torch here" in result.stderr and "Traceback" not in result.stderr
    assert validate_json_text(result.stdout)["error"]["kind"] == "device"


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cuda:-1", "CUDA"])
def test_a_device_that_is_not_cpu_cuda_or_cuda_n_is_refused(run_cli, device):
    code, out, err = run_cli("check", "x", "--at", "x=1", "--device", device)
    assert code == 2 and "--device must be cpu, cuda or cuda:N" in err


def test_cpu_still_works_and_is_the_default(run_cli):
    code, out, _ = run_cli("check", "x**2", "--at", "x=3", "--device", "cpu", "--json")
    assert code == 0 and json.loads(out)["checks"][0]["gradients"][0]["autograd"] == 6.0


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_n_runs_where_there_is_a_gpu(run_cli):  # pragma: no cover - GPU machines only
    code, out, err = run_cli("check", "sin(x)*y", "--at", "x=[0.5, 1.5]", "--at", "y=2", "--device", "cuda:0",
                             "--json")
    assert code == 0, err
    g = json.loads(out)["checks"][0]["gradients"][0]
    assert g["autograd"] == pytest.approx([2 * math.cos(0.5), 2 * math.cos(1.5)], rel=1e-12)


# ---- --version --------------------------------------------------------------------------------------

def test_version_names_gradcheck_torch_sympy_and_python():
    result = run_gradcheck(["--version"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "gradcheck 0.1.0"
    assert lines[1] == f"torch {torch.__version__}"
    assert lines[2] == f"sympy {sympy.__version__}"
    assert lines[3].startswith(f"Python {platform.python_version()}")


def test_help_lists_version(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "--version" in out


# ---- an expression starting with '-' ----------------------------------------------------------------

def test_an_expression_starting_with_a_dash_goes_after_double_dash(run_cli):
    code, out, err = run_cli("check", "--at", "x=2", "--json", "--", "-x**2")
    assert code == 0, err
    check = json.loads(out)["checks"][0]
    assert check["value"]["torch"] == -4.0 and check["gradients"][0]["autograd"] == -4.0  # d/dx -x^2 = -2x


@pytest.mark.parametrize("args", [["check", "-x", "--at", "x=1"], ["check", "-x*y", "--at", "x=1", "--at", "y=2"],
                                  ["steps", "-x", "--at", "x=1"]], ids=["check", "check-product", "steps"])
def test_a_leading_dash_says_how_to_write_it(args):
    result = run_gradcheck(args + ["--json"])
    assert result.returncode == 2
    assert "goes after '--'" in result.stderr and f"gradcheck {args[0]} [OPTIONS] -- '{args[1]}'" in result.stderr
    assert validate_json_text(result.stdout)["error"]["kind"] == "usage"


# ---- bce_clamped -------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, loss, at, target, advice", [
    ("w*x+b", ["--loss", "bce", "--target", "0"], SEED, None, "did you mean sigmoid(w*x + b)"),
    ("bce(p, y)", [], ["--at", "p=[-0.5, 0.3, 2]", "--at", "y=[0, 1, 1]", "--wrt", "p"], None,
     "2 of 3 elements of p lie outside it"),
    ("sigmoid(z)", ["--loss", "bce", "--target", "1"], ["--at", "z=40"], None, "bce_logits(z, target)"),
], ids=["forgot-sigmoid", "elementwise", "saturated-sigmoid"])
def test_an_active_bce_clamp_is_a_warning_with_the_fix(run_cli, expr, loss, at, target, advice):
    code, out, err = run_cli("check", expr, *loss, *at, "--json")
    assert code == 0, err  # the gradients are right for the expression as written ...
    check = json.loads(out)["checks"][0]
    (note,) = [d for d in check["diagnostics"] if d["code"] == "bce_clamped"]
    assert note["severity"] == "warning" and advice in note["message"]
    g = check["gradients"][0]
    clamped = [0, 2] if expr.startswith("bce(p") else None
    values = g["autograd"] if isinstance(g["autograd"], list) else [g["autograd"]]
    for i, v in enumerate(values):  # ... and exactly 0 where the clamp is active (clamp's derivative)
        if clamped is None or i in clamped:
            assert v == 0.0


@pytest.mark.parametrize("expr, args", [
    ("sigmoid(w*x+b)", ["--loss", "bce", "--target", "0"] + SEED),
    ("bce(p, y)", ["--at", "p=0.3", "--at", "y=1", "--wrt", "p"]),
], ids=["seed", "inside"])
def test_no_bce_clamped_inside_the_clamp(run_cli, expr, args):
    code, out, _ = run_cli("check", expr, *args, "--json")
    assert "bce_clamped" not in {d["code"] for d in json.loads(out)["checks"][0]["diagnostics"]}
