"""JSON that scales (issue 15): one line per gradient, Jacobians past 262,144 entries as
their nonzero entries, inputs and outputs past 65,536 elements summarized, --json-detail
summary without arrays, and every report records the versions it was made with.

Truths: tanh' = 1 - tanh^2 and sin' = cos computed here, numpy's min/max of the input,
the versions the interpreter itself reports.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np
import pytest
import sympy
import torch

from cli_util import run_gradcheck
from gradcheck_cli import check_expression, check_op
from gradcheck_cli.render import json_out
from schema_util import validate_json_text, validate_report


@pytest.fixture(scope="module")
def tanh_2000():
    """The issue's example: `gradcheck check "tanh(x)" --at "x=randn(2000)" --json`."""
    result = run_gradcheck(["check", "tanh(x)", "--at", "x=randn(2000)", "--json"], timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_a_2000_element_check_is_small_and_one_line_per_gradient(tanh_2000):
    assert len(tanh_2000.stdout.encode()) < 5_000_000  # was 304 MB
    assert tanh_2000.stdout.count("\n") < 60  # the structure only: no number on a line of its own
    doc = validate_json_text(tanh_2000.stdout)
    (g,) = doc["checks"][0]["gradients"]
    gradient_line = [line for line in tanh_2000.stdout.splitlines() if '"wrt": "x"' in line]
    assert len(gradient_line) == 1 and json.loads(gradient_line[0].strip().rstrip(","))["wrt"] == "x"
    assert g["format"] == "entries" and g["jacobian_shape"] == [2000, 2000]


def test_the_entries_of_a_large_jacobian_are_the_true_derivative(tanh_2000):
    doc = json.loads(tanh_2000.stdout)
    check = doc["checks"][0]
    (g,) = check["gradients"]
    x = np.asarray(check["point"]["x"])  # 2000 elements: echoed in full
    assert x.shape == (2000,)
    entries = np.asarray(g["entries"])
    assert entries.shape == (2000, 2) and np.all(entries[:, 0] == entries[:, 1])  # the diagonal only
    truth = 1 - np.tanh(x[entries[:, 1]]) ** 2
    np.testing.assert_allclose(g["autograd"], truth, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(g["symbolic"], truth, rtol=1e-13, atol=1e-15)
    worst = g["worst"]
    assert worst["label"].startswith("out[") and abs(worst["autograd"] - truth[g["worst_index"][0]]) < 1e-15


def test_small_jacobians_stay_nested_lists():
    doc = check_expression("x*exp(y)", {"x": [1.0, 2.0], "y": [0.5, 1.0]}).to_dict()
    g = doc["checks"][0]["gradients"][0]
    assert "format" not in g and np.asarray(g["autograd"]).shape == (2, 2)
    np.testing.assert_allclose(np.diag(g["autograd"]), np.exp([0.5, 1.0]))


def test_summary_detail_has_no_arrays_and_names_the_worst_entries():
    report = check_expression("sum(x*x*x/(1+x*x))", {"x": [1.1, 2.3, 3.7, 0.3]}, dtype="float32", rtol=1e-9,
                              atol=1e-30)
    doc = validate_report(json.loads(json_out.render(report, "summary")))
    assert doc["detail"] == "summary"
    (g,) = doc["checks"][0]["gradients"]
    for key in ("autograd", "symbolic", "finite_difference", "fd_error_estimate"):
        assert key not in g
    assert g["failed_elements"] == 4 and len(g["worst_entries"]) == 4
    assert g["worst_entries"][0]["index"] == g["worst_index"] == g["worst"]["index"]
    x = np.float32([1.1, 2.3, 3.7, 0.3]).astype(np.float64)
    for entry in g["worst_entries"]:  # d/dx x^3/(1+x^2) = x^2 (x^2 + 3) / (1 + x^2)^2, at the float32 point
        xi = x[entry["index"][0]]
        assert entry["symbolic"] == pytest.approx(xi**2 * (xi**2 + 3) / (1 + xi**2) ** 2, rel=1e-12)
        assert entry["passed"] is False
    badness = [e["abs_error"] / (1e-30 + 1e-9 * abs(e["symbolic"])) for e in g["worst_entries"]]
    assert badness == sorted(badness, reverse=True)  # worst first, by error relative to the allowed error
    assert [d["code"] for d in doc["checks"][0]["diagnostics"]][0] == "gradient_mismatch"


def test_summary_detail_through_the_cli_validates():
    result = run_gradcheck(["check", "sum(sin(x))*y", "--at", "x=[0.5, 1.5]", "--at", "y=2", "--order", "2", "--json",
                            "--json-detail", "summary"])
    assert result.returncode == 0, result.stderr
    doc = validate_json_text(result.stdout)
    assert doc["checks"][0]["hessian"]["detail"] == "summary" and "autograd" not in doc["checks"][0]["hessian"]


def test_a_bad_json_detail_is_exit_2(run_cli):
    code, out, err = run_cli("check", "x", "--at", "x=1", "--json", "--json-detail", "everything")
    assert code == 2 and "--json-detail must be one of full, summary" in err
    assert json.loads(out)["error"]["kind"] == "input"


def test_large_inputs_and_outputs_are_summarized_not_echoed():
    """An op on 70,000 elements: its input and output are summaries (a 1e6-element report
    echoed both in full: 65 MB), the Jacobian a sample of entries."""
    x = torch.randn(70_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = check_op(torch.sin, x)
    text = json_out.render(report)
    assert len(text) < 100_000
    doc = validate_json_text(text)
    check = doc["checks"][0]
    point, value = check["point"]["x0"], check["value"]["torch"]
    assert point["format"] == value["format"] == "array_summary" and point["shape"] == [70_000]
    assert point["min"] == float(x.min()) and point["max"] == float(x.max())
    assert value["max"] == pytest.approx(float(torch.sin(x).max()), rel=1e-15)
    g = check["gradients"][0]
    pairs = np.asarray(g["entries"])
    np.testing.assert_allclose(np.asarray(g["autograd"])[pairs[:, 0] == pairs[:, 1]],
                               np.cos(x.numpy()[pairs[pairs[:, 0] == pairs[:, 1], 1]]), rtol=1e-14)


def test_every_report_records_the_versions_it_was_made_with():
    doc = check_expression("x**2", {"x": 1.0}).to_dict()
    assert doc["tool"] == {"gradcheck": "0.1.0", "torch": str(torch.__version__), "sympy": sympy.__version__,
                           "python": platform.python_version()}
    assert type(doc["tool"]["torch"]) is str


def test_the_versions_are_known_without_importing_torch():
    """The parent of `gradcheck op` / `run` never imports torch (its workers do)."""
    code = ("import sys; from gradcheck_cli.versions import tool_versions; v = tool_versions(); "
            "assert 'torch' not in sys.modules and 'sympy' not in sys.modules, sorted(sys.modules); print(v['torch'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(torch.__version__)


def test_op_reports_through_the_cli_carry_the_tool_block(tmp_path):
    result = run_gradcheck(["op", "torch:sin", "--at", "x=randn(3)", "--json"])
    assert result.returncode == 0, result.stderr
    doc = validate_json_text(result.stdout)
    assert doc["tool"]["torch"] == doc["checks"][0]["torch_version"] == str(torch.__version__)
