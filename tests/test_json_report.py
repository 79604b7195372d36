"""The JSON report (`--json`, schema_version 1): strict RFC 8259, the contract's keys and
types, non-finite numbers as strings, nothing else on stdout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import strict_loads
from gradcheck_cli import check_expression

CHECK_KEYS = {"name", "kind", "passed", "dtype", "point", "value", "gradients", "diagnostics"}
GRADIENT_KEYS = {"wrt", "shape", "autograd", "symbolic", "finite_difference", "max_abs_error", "max_rel_error",
                 "passed"}
NONFINITE = {"nan", "inf", "-inf"}


def nested_shape(v):
    """Shape of a nested list; a scalar (number, string, null) is ()."""
    if not isinstance(v, list):
        return ()
    inner = {nested_shape(x) for x in v}
    assert len(inner) == 1, "ragged nested list"
    return (len(v),) + inner.pop()


def leaves(v):
    if isinstance(v, list):
        for x in v:
            yield from leaves(x)
    else:
        yield v


def assert_contract(doc: dict) -> None:
    """The keys and types the contract promises (extra keys are allowed)."""
    assert doc["schema_version"] == 1
    assert isinstance(doc["passed"], bool)
    assert isinstance(doc["checks"], list) and doc["checks"]
    assert doc["passed"] == all(c["passed"] for c in doc["checks"])
    for check in doc["checks"]:
        assert CHECK_KEYS <= set(check), CHECK_KEYS - set(check)
        assert check["kind"] == "expression"
        assert isinstance(check["name"], str) and isinstance(check["passed"], bool)
        assert check["dtype"] in ("float64", "float32", "float16", "bfloat16")
        assert isinstance(check["point"], dict) and isinstance(check["value"], dict)
        assert {"torch", "symbolic"} <= set(check["value"])
        for d in check["diagnostics"]:
            assert isinstance(d["code"], str) and isinstance(d["message"], str) and d["message"]
        for g in check["gradients"]:
            assert GRADIENT_KEYS <= set(g), GRADIENT_KEYS - set(g)
            assert isinstance(g["wrt"], str) and isinstance(g["passed"], bool)
            assert isinstance(g["shape"], list) and all(isinstance(n, int) for n in g["shape"])
            for method in ("autograd", "symbolic", "finite_difference"):
                if g[method] is None:
                    continue
                assert nested_shape(g[method]) == tuple(g["shape"]), method
                for x in leaves(g[method]):
                    assert x is None or isinstance(x, float) or x in NONFINITE, (method, x)
            for err in ("max_abs_error", "max_rel_error"):
                assert isinstance(g[err], float) or g[err] in NONFINITE
            if not g["passed"]:
                assert not check["passed"]


def run_json(run_cli, *args) -> tuple[int, dict, str]:
    code, out, err = run_cli(*args, "--json")
    return code, strict_loads(out), out


# ---- strictness --------------------------------------------------------------------------------------

def test_strict_reader_rejects_nan_literals():
    """The reader used below really is strict (else the tests that use it prove nothing)."""
    with pytest.raises(ValueError):
        strict_loads('{"a": NaN}')
    with pytest.raises(ValueError):
        strict_loads('[Infinity]')
    with pytest.raises(ValueError):
        strict_loads('[-Infinity]')
    assert strict_loads('{"a": "nan"}') == {"a": "nan"}


@pytest.mark.parametrize("args", [
    ("check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2", "--at", "b=1", "--at", "x=6.7",
     "--wrt", "w,b", "--dtype", "float32"),
    ("check", "mean(x1**2)", "--at", "x1=[1,2,3,4,5]"),
    ("check", "sin(x)*y + x*sum(y**2)", "--at", "x=[[0.3,-1,2],[1.5,0,-0.5]]", "--at", "y=[0.7,-0.2,1.1]"),
    ("check", "relu(x)", "--at", "x=0"),
    ("check", "x*detach(x)", "--at", "x=3"),
    ("check", "where(x > 0, sqrt(x), x)", "--at", "x=-1"),
    ("check", "log(x)", "--at", "x=-1"),
    ("check", "1/x", "--at", "x=0"),
    ("check", "sum(x**2)", "--at", "x=randn(3000)", "--fd", "central"),
], ids=["seed-float32", "mean-squares", "jacobian", "kink", "detach", "masked-nan", "log-negative", "division-by-zero",
        "fd-sampled"])
def test_json_is_strict_and_matches_the_contract(run_cli, args):
    code, out, err = run_cli(*args, "--json")
    assert code in (0, 1), err
    doc = strict_loads(out)  # the whole of stdout is one JSON document: nothing else was printed
    assert out.lstrip().startswith("{") and out.rstrip().endswith("}")
    assert_contract(doc)
    assert code == (0 if doc["passed"] else 1)


def test_json_validates_against_the_published_schema(run_cli):
    from schema_util import validate_json_text

    code, out, _ = run_cli("check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2", "--at",
                           "b=1", "--at", "x=6.7", "--json", "--formula")
    assert code == 0
    validate_json_text(out)


# ---- non-finite numbers --------------------------------------------------------------------------------

def test_log_of_negative_reports_nan_as_a_string(run_cli):
    code, doc, out = run_json(run_cli, "check", "log(x)", "--at", "x=-1")
    assert code == 1
    assert "NaN" not in out
    (check,) = doc["checks"]
    assert doc["passed"] is False and check["passed"] is False
    assert check["value"]["torch"] == "nan"
    assert check["value"]["symbolic"] == "nan"
    (g,) = check["gradients"]
    assert g["finite_difference"] == "nan"
    assert "nonfinite" in {d["code"] for d in check["diagnostics"]}


def test_infinite_gradient_is_a_string(run_cli):
    code, doc, out = run_json(run_cli, "check", "sqrt(x)", "--at", "x=0")
    assert code == 1
    assert "Infinity" not in out
    (g,) = doc["checks"][0]["gradients"]
    assert g["autograd"] == "inf"


def test_masked_nan_in_json(run_cli):
    code, doc, _ = run_json(run_cli, "check", "where(x > 0, sqrt(x), x)", "--at", "x=-1")
    assert code == 1
    (check,) = doc["checks"]
    (g,) = check["gradients"]
    assert g["autograd"] == "nan" and g["symbolic"] == 1.0 and g["passed"] is False
    assert "masked_nan" in {d["code"] for d in check["diagnostics"]}


# ---- content ------------------------------------------------------------------------------------------

def test_seed_json_numbers(run_cli):
    code, doc, _ = run_json(run_cli, "check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2",
                            "--at", "b=1", "--at", "x=6.7", "--wrt", "w,b")
    assert code == 0
    (check,) = doc["checks"]
    assert check["name"] == "sigmoid(w*x+b)"
    assert check["point"] == {"w": 2.0, "b": 1.0, "x": 6.7}  # the target is not part of the point
    assert check["dtype"] == "float64" and check["passed"] is True
    assert [g["wrt"] for g in check["gradients"]] == ["w", "b"]
    assert all(g["shape"] == [] for g in check["gradients"])
    assert all(isinstance(g["autograd"], float) for g in check["gradients"])


def test_json_numbers_equal_the_api_numbers_exactly(run_cli):
    """JSON floats round-trip: the report's numbers are the engine's, bit for bit."""
    args = ("check", "sum(exp(x)*y)", "--at", "x=[0.1,-0.7,2.5]", "--at", "y=1.3")
    code, doc, _ = run_json(run_cli, *args)
    (api,) = check_expression("sum(exp(x)*y)", at={"x": [0.1, -0.7, 2.5], "y": 1.3}).checks
    assert code == 0
    for g_json, g_api in zip(doc["checks"][0]["gradients"], api.gradients):
        assert g_json["autograd"] == np.asarray(g_api.autograd).tolist()
        assert g_json["symbolic"] == np.asarray(g_api.symbolic).tolist()


def test_jacobian_nesting_is_output_then_input(run_cli):
    code, doc, _ = run_json(run_cli, "check", "a*b", "--at", "a=[[1],[2]]", "--at", "b=[3,4,5]")
    assert code == 0
    g = {x["wrt"]: x for x in doc["checks"][0]["gradients"]}
    assert g["a"]["shape"] == [2, 3, 2, 1] and nested_shape(g["a"]["autograd"]) == (2, 3, 2, 1)
    assert g["b"]["shape"] == [2, 3, 3]
    # d(a_i b_j)/d b_k = a_i [j == k]
    assert g["b"]["autograd"][1][2] == [0.0, 0.0, 2.0]
    assert g["a"]["autograd"][1][2] == [[0.0], [5.0]]


def test_sampled_finite_differences_are_null_where_not_computed(run_cli):
    code, doc, _ = run_json(run_cli, "check", "sum(x**2)", "--at", "x=randn(3000)", "--fd", "central")
    assert code == 0
    (check,) = doc["checks"]
    (g,) = check["gradients"]
    fd = g["finite_difference"]
    computed = [v for v in fd if v is not None]
    assert 16 <= len(computed) < 3000
    assert None in fd
    assert "fd_sampled" in {d["code"] for d in check["diagnostics"]}
    x = np.asarray(check["point"]["x"])
    np.testing.assert_allclose(g["symbolic"], 2 * x, rtol=1e-14)  # symbolic covers every element


def test_formula_in_json(run_cli):
    code, doc, _ = run_json(run_cli, "check", "sin(x)*x", "--at", "x=0.5", "--formula")
    assert code == 0
    assert doc["checks"][0]["gradients"][0]["formula"] == "x*cos(x) + sin(x)"


def test_to_dict_is_the_json_report():
    report = check_expression("x**2", at={"x": 3.0})
    doc = report.to_dict()
    assert_contract(doc)
    text = json.dumps(doc, allow_nan=False)
    assert strict_loads(text) == doc
