"""`gradcheck op` through the CLI (typer's CliRunner): exit codes 0/1/2, strict JSON that
matches the published schema, tables with the failing entry, and one-line user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from schema_util import validate_json_text

ROOT = Path(__file__).resolve().parents[1]
ZOO = str(Path(__file__).with_name("op_zoo.py"))
SWISH = str(ROOT / "samples" / "ops" / "swish.py")


def op_args(target, *rest):
    return ["op", target, *rest]


def test_sample_swish_with_reference_passes(run_cli):
    code, out, err = run_cli(*op_args(f"{SWISH}:Swish", "--at", "x=randn(4,5)", "--reference", "x*sigmoid(x)"))
    assert code == 0, out + err
    assert "PASS" in out and "out[" in out and " / x[" in out
    assert "Traceback" not in err


def test_softmax_with_kw(run_cli):
    code, out, err = run_cli(*op_args("torch.nn.functional:softmax", "--at", "x=randn(3,4)", "--kw", "dim=-1"))
    assert code == 0, out + err


def test_float32_sample_passes_with_defaults(run_cli):
    code, out, err = run_cli(*op_args(f"{SWISH}:Swish", "--at", "x=randn(4,5)", "--dtype", "float32",
                                      "--reference", "x*sigmoid(x)"))
    assert code == 0, out + err


@pytest.mark.parametrize("attr,at,extra,code_name", [
    ("SwishScaled", ["--at", "x=randn(3,4)"], [], "scale_error"),
    ("SwishAssumesContiguous", ["--at", "x=randn(3,4)"], [], "noncontiguous_grad_output"),
    ("ExpOverflow", ["--at", "x=[45.5, 47, 50]"], ["--dtype", "float32"], "nonfinite"),
    ("GeluTanh", ["--at", "x=randn(5)"], ["--reference", "x*0.5*(1+erf(x/sqrt(2)))"], "forward_mismatch"),
    ("RaisesInForward", ["--at", "x=randn(3)"], [], "op_error"),
    ("SinSquaredDetached", ["--at", "x=randn(2,2)"], ["--order", "2"], "double_backward_mismatch"),
], ids=["scale", "noncontiguous", "overflow", "forward", "raises", "order2"])
def test_buggy_ops_exit_1_with_strict_json(run_cli, attr, at, extra, code_name):
    code, out, err = run_cli(*op_args(f"{ZOO}:{attr}", *at, *extra, "--json"))
    assert code == 1, out + err
    doc = validate_json_text(out)
    check = doc["checks"][0]
    assert check["kind"] == "op" and not check["passed"] and not doc["passed"]
    assert code_name in {d["code"] for d in check["diagnostics"]}
    assert err == "" or "Traceback" not in err


def test_table_names_the_failing_entry(run_cli):
    code, out, _ = run_cli(*op_args(f"{ZOO}:SwishSignRegion", "--at", "x=[[0.5, -1.5], [2.0, -0.25]]"))
    assert code == 1
    assert "FAIL" in out and "wrong_sign" in out and "exactly where x < 0" in out.replace("\n", " ")


@pytest.mark.parametrize("args", [
    ["--at", "x=randn(40,60)", "--mode", "fast"],
    ["--at", "r=rand(3)", "--at", "t=randn(3)"],
    ["--at", "x=randn(2,3)", "--order", "2"],
    ["--at", "x=randn(4)", "--points", "2"],
], ids=["fast", "two-outputs", "order2", "points"])
def test_json_reports_validate_against_the_schema(run_cli, args):
    attr = "PolarPair" if "r=rand(3)" in args else ("SinSquared" if "--order" in args else "Swish")
    code, out, err = run_cli(*op_args(f"{ZOO}:{attr}", *args, "--json"))
    assert code == 0, out + err
    doc = validate_json_text(out)
    check = doc["checks"][0]
    assert [g["wrt"] for g in check["gradients"]] == [a.split("=")[0] for a in args[1::2] if "=" in a]
    if "--order" in args:
        assert check["hessian"]["passed"]
    if "--points" in args:
        assert check["points_checked"] == 3


def test_large_jacobian_json_lists_entries(run_cli):
    code, out, err = run_cli(*op_args(f"{ZOO}:Swish", "--at", "x=randn(600)", "--mode", "full", "--json"))
    assert code == 0, out + err
    g = validate_json_text(out)["checks"][0]["gradients"][0]
    assert g["format"] == "entries" and g["jacobian_shape"] == [600, 600]
    assert len(g["entries"]) == 600 and all(o == j for o, j in g["entries"])  # the diagonal only


def test_junit_file_for_a_failing_op(run_cli, tmp_path):
    junit = tmp_path / "op.xml"
    code, out, _ = run_cli(*op_args(f"{ZOO}:SwishScaled", "--at", "x=randn(3)", "--junit", str(junit)))
    assert code == 1
    text = junit.read_text()
    assert "<failure" in text and "out[" in text


@pytest.mark.parametrize("args,message", [
    (op_args("missing_op_file.py:F", "--at", "x=1"), "not found"),
    (op_args(f"{ZOO}:Nope", "--at", "x=1"), "has no attribute 'Nope'"),
    (op_args("no_such_mod_abc:f", "--at", "x=1"), "cannot import module"),
    (op_args("torch:sin", "--at", "x=1", "--kw", "k=(1"), "--kw k="),
    (op_args("torch:sin", "--at", "x=randn(3)", "--reference", "sin(y)"), "not an input"),
    (op_args("torch:sin", "--at", "x=randn(3)", "--reference", "sin(x"), "column"),
    (op_args("torch:sin", "--at", "x=randn(3)", "--wrt", "y"), "no input 'y'"),
    (op_args("torch:sin", "--at", "x=randn(3)", "--mode", "slow"), "--mode must be"),
    (op_args("torch:sin", "--at", "x=randn(3)", "--dtype", "int8"), "--dtype must be"),
    (op_args("torch:sin"), "needs the op's inputs"),
    (op_args("torch:sin", "--at", "x=randn(3)", "--mode", "full", "--order", "3"), "--order must be"),
], ids=["file", "attr", "module", "kw", "ref-name", "ref-parse", "wrt", "mode", "dtype", "no-at", "order"])
def test_user_errors_exit_2_with_one_message(run_cli, args, message):
    code, out, err = run_cli(*args, "--json")
    assert code == 2
    # --json: stdout is the error document only (issue 15), with the message stderr has
    doc = validate_json_text(out)
    assert "checks" not in doc and message in doc["error"]["message"] and doc["passed"] is False
    assert err.startswith("gradcheck: error:") and message in err and "Traceback" not in err


def test_import_error_of_the_op_module_is_exit_2(run_cli, tmp_path):
    bad = tmp_path / "kernel.py"
    bad.write_text("import triton_not_installed_here\n")
    code, out, err = run_cli(*op_args(f"{bad}:kernel", "--at", "x=1"))
    assert code == 2 and "triton_not_installed_here" in err and "Traceback" not in err


def test_cuda_unavailable_is_exit_2(run_cli):
    import torch

    if torch.cuda.is_available():
        code, out, err = run_cli(*op_args(f"{SWISH}:Swish", "--at", "x=randn(3)", "--device", "cuda"))
        assert code == 0, out + err
    else:
        code, _, err = run_cli(*op_args(f"{SWISH}:Swish", "--at", "x=randn(3)", "--device", "cuda"))
        assert code == 2 and "cuda" in err
