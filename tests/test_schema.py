"""The published JSON Schema (`gradcheck schema`) and every kind of report against it.

Each row runs a command with --json and validates stdout strictly (no bare NaN) against
gradcheck_cli/schema/report.schema.json plus the consistency rules of
tests/schema_util.py, then checks the one thing that row is about (the "nan" strings,
the Hessian, a null symbolic column, ...).  The validator itself is shown to reject
broken reports, so a schema that accepts everything cannot pass.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_util import run_gradcheck
from gradcheck_cli.cli import app
from schema_util import load_schema, semantic_errors, strict_loads, validate_json_text, validate_report

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"

SEED = ["sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2", "--at", "b=1", "--at", "x=6.7",
        "--wrt", "w,b"]


def invoke(args: list) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [str(a) for a in args] + ["--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1), f"exit {result.exit_code}: {result.stderr}"
    return result.exit_code, validate_json_text(result.stdout)


def codes(doc: dict, i: int = 0) -> set:
    return {d["code"] for d in doc["checks"][i]["diagnostics"]}


def strings_in(obj) -> set:
    if isinstance(obj, str):
        return {obj}
    if isinstance(obj, dict):
        return set().union(*(strings_in(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(strings_in(v) for v in obj)) if obj else set()
    return set()


def _seed32(doc):
    c = doc["checks"][0]
    assert c["dtype"] == "float32" and "precision_loss" in codes(doc)
    assert abs(c["value"]["torch"] - 14.3329) < 1e-3 and abs(c["value"]["symbolic"] - 14.4000005574) < 1e-8


def _seed64(doc):
    c = doc["checks"][0]
    assert c["dtype"] == "float64" and [g["wrt"] for g in c["gradients"]] == ["w", "b"]
    assert abs(c["gradients"][0]["symbolic"] - 6.6999962655) < 1e-9


def _jacobian(doc):
    grads = {g["wrt"]: g for g in doc["checks"][0]["gradients"]}
    assert grads["x"]["shape"] == [2, 3, 2, 3] and grads["y"]["shape"] == [2, 3, 3]


def _detach(doc):
    assert "stop_gradient" in codes(doc)
    g = doc["checks"][0]["gradients"][0]
    assert g["autograd"] == 0 and g["symbolic"] == 0 and g["finite_difference"] == pytest.approx(3)


def _masked_nan(doc):
    assert "masked_nan" in codes(doc) and "nan" in strings_in(doc["checks"][0]["gradients"][0]["autograd"])


def _log_negative(doc):
    c = doc["checks"][0]
    assert c["value"]["torch"] == "nan" and "nonfinite" in codes(doc)


def _hessian(doc):
    h = doc["checks"][0]["hessian"]
    assert h["autograd"] == [[18.0, 6.75], [6.75, 0.0]] and h["wrt"] == ["x", "y"]


def _hessian_tensor(doc):
    h = doc["checks"][0]["hessian"]
    assert h["labels"] == ["x[0]", "x[1]"] and h["autograd"] == [[6.0, 0.0], [0.0, 12.0]]


def _points(doc):
    assert doc["checks"][0]["points_checked"] == 4


def _kink(doc):
    assert "non_differentiable" in codes(doc)


def _formula(doc):
    assert isinstance(doc["checks"][0]["gradients"][0]["formula"], str)


def _dtype(name):
    def check(doc):
        assert doc["checks"][0]["dtype"] == name

    return check


def _mse_target(doc):
    c = doc["checks"][0]
    assert c["loss"] == "mse" and c["target"] == [0.5, 0.25]


def _sampled(doc):
    g = doc["checks"][0]["gradients"][0]
    assert "fd_sampled" in codes(doc) and None in g["finite_difference"] and g["shape"] == [3000]


def _division_by_zero(doc):
    c = doc["checks"][0]
    assert c["value"]["torch"] == "inf" and c["gradients"][0]["autograd"] == "inf" and "nonfinite" in codes(doc)


def _symbolic_null(doc):
    g = doc["checks"][0]["gradients"][0]
    assert g["symbolic"] is None and "symbolic_unavailable" in codes(doc)


EXPRESSIONS = [
    pytest.param(["check", *SEED, "--dtype", "float32"], 0, _seed32, id="seed-float32"),
    pytest.param(["check", *SEED], 0, _seed64, id="seed-float64"),
    pytest.param(["check", "tanh(x)*y", "--at", "x=randn(2,3)", "--at", "y=randn(3)"], 0, _jacobian,
                 id="tensor-jacobian"),
    pytest.param(["check", "detach(x)*y", "--at", "x=2", "--at", "y=3", "--wrt", "x"], 0, _detach, id="detach"),
    pytest.param(["check", "sum(where(x > 0, sqrt(x), 0*x))", "--at", "x=[-1,4]"], 1, _masked_nan,
                 id="where-masked-nan"),
    pytest.param(["check", "log(x)", "--at", "x=-1"], 1, _log_negative, id="log-at-minus-one"),
    pytest.param(["check", "x**3*y", "--at", "x=1.5", "--at", "y=2", "--order", "2"], 0, _hessian, id="order-2"),
    pytest.param(["check", "sum(x**3)", "--at", "x=[1,2]", "--order", "2"], 0, _hessian_tensor,
                 id="order-2-tensor"),
    pytest.param(["check", "sin(x)*y", "--at", "x=0.3", "--at", "y=1", "--points", "3"], 0, _points, id="points"),
    pytest.param(["check", "relu(x)", "--at", "x=0"], 0, _kink, id="kink"),
    pytest.param(["check", "x*exp(x)", "--at", "x=1", "--formula"], 0, _formula, id="formula"),
    pytest.param(["check", "x**2", "--at", "x=1.5", "--dtype", "float16"], 0, _dtype("float16"), id="float16"),
    pytest.param(["check", "x**2", "--at", "x=1.5", "--dtype", "bfloat16"], 0, _dtype("bfloat16"), id="bfloat16"),
    pytest.param(["check", "tanh(x)", "--loss", "mse", "--target", "[0.5,0.25]", "--at", "x=[1,2]"], 0, _mse_target,
                 id="mse-tensor-target"),
    pytest.param(["check", "sum(x*x)", "--at", "x=randn(3000)"], 0, _sampled, id="fd-sampled"),
    pytest.param(["check", "x/0", "--at", "x=1"], 1, _division_by_zero, id="division-by-zero-inf"),
]


def test_symbolic_null_report_validates(monkeypatch):
    """A report whose symbolic column is null (SymPy failed), through the CLI."""
    from gradcheck_cli.engines import symbolic

    def fail(*args, **kwargs):
        raise ValueError("SymPy cannot represent this")

    monkeypatch.setattr(symbolic, "build", fail)
    code, doc = invoke(["check", "sin(x)*y", "--at", "x=[0.5, 1]", "--at", "y=2"])
    assert code == 0
    _symbolic_null(doc)


@pytest.mark.parametrize("args, exit_code, about", EXPRESSIONS)
def test_expression_reports_validate(args, exit_code, about):
    code, doc = invoke(args)
    assert code == exit_code
    assert doc["checks"][0]["kind"] == "expression"
    about(doc)


# -- op checks ------------------------------------------------------------------------------

RAISING_OP = '''
import torch

class Broken(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("backward exploded")
'''


def _op_passes(doc):
    c = doc["checks"][0]
    assert c["kind"] == "op" and c["passed"] and c["gradients"][0]["wrt"] == "x"


def _op_fails(doc):
    c = doc["checks"][0]
    assert c["kind"] == "op" and not c["passed"] and not c["gradients"][0]["passed"]


def _op_raises(doc):
    c = doc["checks"][0]
    assert c["kind"] == "op" and not c["passed"]
    assert "backward exploded" in json.dumps(c)


OPS = [
    pytest.param(["op", "torch.nn.functional:softmax", "--at", "x=randn(3,4)", "--kw", "dim=-1"], 0, _op_passes,
                 id="op-softmax-kw"),
    pytest.param(["op", SAMPLES / "ops" / "swish.py:Swish", "--at", "x=randn(4,5)", "--reference",
                  "x*sigmoid(x)"], 0, _op_passes, id="op-swish-reference"),
    pytest.param(["op", SAMPLES / "specs_failing" / "ops" / "buggy_swish.py:BuggySwish", "--at", "x=[-2,-0.5,0,1.5]"],
                 1, _op_fails, id="op-buggy-backward"),
    pytest.param(["op", "torch:tanh", "--at", "x=randn(3)", "--order", "2"], 0, _op_passes, id="op-order-2"),
    pytest.param(["op", "{tmp}/broken.py:Broken", "--at", "x=randn(3)"], 1, _op_raises, id="op-raises"),
]


@pytest.mark.parametrize("args, exit_code, about", OPS)
def test_op_reports_validate(tmp_path, args, exit_code, about):
    (tmp_path / "broken.py").write_text(RAISING_OP, encoding="utf-8")
    code, doc = invoke([str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert code == exit_code
    about(doc)


# -- run reports ----------------------------------------------------------------------------


@pytest.mark.parametrize("args, exit_code", [
    pytest.param(["run", SAMPLES / "specs" / "seed.toml"], 0, id="run-seed"),
    pytest.param(["run", SAMPLES / "specs_failing"], 1, id="run-failing"),
    pytest.param(["run", SAMPLES / "specs" / "seed.toml", "--shard", "1/2"], 0, id="run-shard"),
])
def test_run_reports_validate(args, exit_code):
    code, doc = invoke(args)
    assert code == exit_code
    assert doc["meta"]["command"] == "run" and doc["meta"]["checks_run"] == len(doc["checks"])
    assert all("spec_file" in c for c in doc["checks"])


# -- the installed command and the schema itself --------------------------------------------


def test_installed_command_json_validates():
    """The real console script, real pipes: stdout is one strict JSON document, nothing else."""
    result = run_gradcheck(["check", *SEED, "--dtype", "float32", "--json"])
    assert result.returncode == 0, result.stderr
    doc = validate_json_text(result.stdout)
    assert doc["checks"][0]["name"] == "sigmoid(w*x+b)"


def test_gradcheck_schema_prints_the_published_file():
    import jsonschema

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    printed = json.loads(result.stdout)
    assert printed == load_schema()
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(printed)
    installed = json.loads((ROOT / "gradcheck_cli" / "schema" / "report.schema.json").read_text("utf-8"))
    # the file with its list of codes filled in from the one registry (gradcheck_cli/codes.py)
    from gradcheck_cli.codes import CODES

    code = printed["$defs"]["code"]
    assert code["enum"] == sorted(CODES) and set(code["x-gradcheck-codes"]) == set(CODES)
    installed["$defs"]["code"].update({"enum": code["enum"], "x-gradcheck-codes": code["x-gradcheck-codes"]})
    assert installed == printed


@pytest.fixture(scope="module")
def good_doc() -> dict:
    _, doc = invoke(["check", "tanh(x)*y", "--at", "x=[0.5, -1]", "--at", "y=2", "--order", "1"])
    return doc


def _break(path: list, value):
    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return mutate


BROKEN = [
    pytest.param(_break(["schema_version"], 2), "schema_version", id="schema-version-2"),
    pytest.param(_break(["passed"], KeyError), "passed", id="missing-passed"),
    pytest.param(_break(["checks", 0, "dtype"], "float8"), "float8", id="unknown-dtype"),
    pytest.param(_break(["checks", 0, "kind"], "function"), "function", id="unknown-kind"),
    pytest.param(_break(["checks", 0, "gradients", 0, "autograd", 0], "NaN"), "NaN", id="bad-nonfinite-string"),
    pytest.param(_break(["checks", 0, "gradients", 0, "max_abs_error"], None), "max_abs_error", id="null-error"),
    pytest.param(_break(["checks", 0, "gradients", 0, "shape"], [-1]), "shape", id="negative-shape"),
    pytest.param(_break(["checks", 0, "gradients", 0, "wrt"], KeyError), "wrt", id="missing-wrt"),
    pytest.param(_break(["checks", 0, "diagnostics"], [{"code": "Bad Code", "message": "m"}]), "Bad Code",
                 id="diagnostic-code-format"),
    pytest.param(_break(["checks", 0, "diagnostics"], [{"code": "nonfinite"}]), "message", id="diagnostic-no-message"),
    pytest.param(_break(["checks", 0, "gradients", 0, "autograd"], [1.0, 2.0, 3.0]), "shape",
                 id="tensor-shape-mismatch"),
    pytest.param(_break(["passed"], False), "top-level passed", id="passed-inconsistent"),
    pytest.param(_break(["checks", 0, "points_checked"], 0), "points_checked", id="zero-points"),
]


@pytest.mark.parametrize("mutate, fragment", BROKEN)
def test_validator_rejects_broken_reports(good_doc, mutate, fragment):
    doc = copy.deepcopy(good_doc)
    validate_report(copy.deepcopy(doc))  # the original is valid ...
    mutate(doc)
    with pytest.raises(AssertionError, match="report does not match") as info:  # ... the mutant is not
        validate_report(doc)
    assert fragment in str(info.value)


def test_strict_parsing_rejects_bare_nan():
    with pytest.raises(ValueError, match="NaN"):
        strict_loads('{"x": NaN}')
    with pytest.raises(AssertionError, match="not strict JSON"):
        validate_json_text('{"schema_version": 1, "passed": true, "checks": [], "x": Infinity}')


def test_semantic_rules_accept_the_real_report(good_doc):
    assert semantic_errors(good_doc) == []
