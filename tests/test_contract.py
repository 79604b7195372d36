"""The contract (/work/shared/CONTRACT.md), item by item: every command, option, value
form, expression element, JSON field, diagnostic code, exit code, spec key, op target
form and Python API call it promises, each checked against an independent truth
(hand-derived derivatives, torch's own autograd on torch's own ops, the equivalent
command line) so that a regression in any of them fails here.

Most checks run in-process through typer's CliRunner (the `run_cli` fixture re-raises
any exception that would have been a traceback); the few that need real file
descriptors, a terminal or the installed console script run it in a subprocess.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import gradcheck_cli
from cli_util import clean_env, run_gradcheck, terminal_output

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"

# ---- a small set of ops, written for these tests (independent of tests/op_zoo.py) ---------

OPS_SOURCE = '''
import torch

class Cube(torch.autograd.Function):
    """y = x**3, dy/dx = 3 x**2."""
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g

class Polar(torch.autograd.Function):
    """A tuple output: (r cos t, r sin t)."""
    @staticmethod
    def forward(ctx, r, t):
        ctx.save_for_backward(r, t)
        return r * torch.cos(t), r * torch.sin(t)
    @staticmethod
    def backward(ctx, gu, gv):
        r, t = ctx.saved_tensors
        return gu * torch.cos(t) + gv * torch.sin(t), -gu * r * torch.sin(t) + gv * r * torch.cos(t)

class Outer:
    class Inner:
        Cube = Cube

def first_minus_twice_second(first, second):
    return first - 2 * second

def mul(a, b):
    return a * b

def with_kwargs(x, *, alpha=1.0, flag=False, mode="plain", dims=None):
    # the op checks that --kw values arrive as the Python types the contract names
    assert isinstance(alpha, float) and isinstance(flag, bool) and isinstance(mode, str), (alpha, flag, mode)
    assert dims == [1, 2], dims
    return alpha * x * (2 if flag else 1) * (x if mode == "square" else 1)

class WrongGrad(Cube):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x * g

class NonDeterministic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x
    @staticmethod
    def backward(ctx, g):
        return 2 * g + 1e-3 * torch.rand_like(g)

def mutates(x):
    x.data.add_(0.5)
    return x * 2

def doubles(x):
    return 2 * x

def raises_in_forward(x):
    raise ValueError("boom in forward")

class RaisesInBackward(Cube):
    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom in backward")

def noisy(x):
    print("the op printed this")
    return 2 * x
'''


@pytest.fixture(scope="module")
def ops_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("contract_ops")
    (folder / "cops.py").write_text(OPS_SOURCE)
    (folder / "broken.py").write_text("import a_module_that_does_not_exist_xyz\n")
    return folder


@pytest.fixture
def in_ops_dir(ops_dir, monkeypatch) -> Path:
    monkeypatch.chdir(ops_dir)
    return ops_dir


def _json(run_cli, strict_json, *args):
    code, out, err = run_cli(*args, "--json")
    return code, strict_json(out), err


def _check(report: dict) -> dict:
    return report["checks"][0]


def _codes(check: dict) -> list:
    return [d["code"] for d in check["diagnostics"]]


# ---- commands and options ----------------------------------------------------------------

SHARED = ["--at", "--wrt", "--dtype", "--fd", "--eps", "--atol", "--rtol", "--points", "--seed", "--order",
          "--json", "--junit"]
OPTIONS = ([("check", o) for o in SHARED + ["--loss", "--target"]]
           + [("op", o) for o in SHARED + ["--reference", "--mode", "--device", "--kw"]]
           + [("run", o) for o in ["--shard", "--jobs", "--json", "--junit", "--dtype", "--fd", "--eps", "--atol",
                                   "--rtol", "--points", "--seed", "--order"]]
           + [("steps", o) for o in ["--plot", "--at", "--wrt", "--fd", "--json"]])


@pytest.mark.parametrize("command,option", OPTIONS, ids=[f"{c}{o}" for c, o in OPTIONS])
def test_every_command_has_its_options(run_cli, command, option):
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and f"{option} " in out


def test_python_dash_m_is_the_same_program():
    proc = subprocess.run([sys.executable, "-m", "gradcheck_cli", "--help"], capture_output=True, text=True,
                          env=clean_env(), timeout=60)
    assert proc.returncode == 0
    for command in ("check", "op", "run", "steps"):
        assert command in proc.stdout


def test_help_documents_default_tolerances_per_dtype_for_check_and_op(run_cli):
    from gradcheck_cli.tolerances import OP_TOLERANCES, TOLERANCES

    check_help = " ".join(run_cli("check", "--help").stdout.split())
    op_help = " ".join(run_cli("op", "--help").stdout.split())
    for dtype in TOLERANCES:
        assert f"{dtype}: atol {TOLERANCES[dtype]['atol']:g}, rtol {TOLERANCES[dtype]['rtol']:g}" in check_help
        # op uses its own defaults: its --help must show those, not check's
        assert f"{dtype}: atol {OP_TOLERANCES[dtype]['atol']:g}, rtol {OP_TOLERANCES[dtype]['rtol']:g}" in op_help


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_dtype_values(run_cli, strict_json, dtype):
    code, rep, _ = _json(run_cli, strict_json, "check", "x**3", "--at", "x=1.5", "--dtype", dtype)
    c = _check(rep)
    assert code == 0 and c["dtype"] == dtype
    assert c["gradients"][0]["autograd"] == pytest.approx(6.75)  # 3 x**2, exact in every dtype at 1.5


@pytest.mark.parametrize("fd,scheme", [("auto", "complex"), ("central", "central"), ("forward", "forward"),
                                       ("richardson", "richardson"), ("complex", "complex")])
def test_fd_values(run_cli, strict_json, fd, scheme):
    code, rep, _ = _json(run_cli, strict_json, "check", "sin(x)*exp(x)", "--at", "x=0.7", "--fd", fd)
    c = _check(rep)
    exact = math.exp(0.7) * (math.sin(0.7) + math.cos(0.7))
    assert code == 0 and c["fd_scheme"] == scheme
    assert c["gradients"][0]["finite_difference"] == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("scheme,h,expected", [
    # the documented rule: each element x is stepped by exactly H*max(1, |x|)
    ("forward", 1e-3, lambda x, h: (math.exp(x + h) - math.exp(x)) / h),
    ("central", 1e-2, lambda x, h: (math.exp(x + h) - math.exp(x - h)) / (2 * h)),
], ids=["forward", "central"])
def test_eps_is_the_step(run_cli, strict_json, scheme, h, expected):
    x = 0.5
    _, rep, _ = _json(run_cli, strict_json, "check", "exp(x)", "--at", f"x={x}", "--fd", scheme, "--eps", str(h))
    assert _check(rep)["gradients"][0]["finite_difference"] == pytest.approx(expected(x, h), rel=1e-9)


def test_atol_rtol_set_the_tolerance(run_cli, strict_json):
    # float16 exp(3.3): autograd is ~7e-3 off the exact derivative, inside the float16 defaults
    code, rep, _ = _json(run_cli, strict_json, "check", "exp(x)", "--at", "x=3.3", "--dtype", "float16")
    assert code == 0
    code, rep, _ = _json(run_cli, strict_json, "check", "exp(x)", "--at", "x=3.3", "--dtype", "float16",
                         "--atol", "0", "--rtol", "1e-9")
    g = _check(rep)["gradients"][0]
    assert code == 1 and g["tolerance"]["atol"] == 0 and g["tolerance"]["rtol"] == 1e-9 and not g["passed"]


def test_points_and_seed_report_the_worst_point(run_cli, strict_json):
    args = ("check", "sum(x*sigmoid(x))", "--at", "x=randn(3)", "--points", "5", "--seed", "3")
    _, rep, _ = _json(run_cli, strict_json, *args)
    _, again, _ = _json(run_cli, strict_json, *args)
    c = _check(rep)
    assert c["points_checked"] == 6 and c["point"] == _check(again)["point"]  # seeded: same numbers
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    xs = c["point"]["x"]
    # the numbers are the reported point's: d/dx sum(x sigmoid(x)) = s + x s (1 - s)
    assert c["gradients"][0]["autograd"] == pytest.approx([sig(v) + v * sig(v) * (1 - sig(v)) for v in xs])
    assert c["value"]["torch"] == pytest.approx(sum(v * sig(v) for v in xs))
    _, other, _ = _json(run_cli, strict_json, *args[:-1], "4")
    assert _check(other)["point"] != c["point"]
    _, none, _ = _json(run_cli, strict_json, *args[:4])
    assert "points_checked" not in _check(none)


@pytest.mark.parametrize("wrt,order", [(None, ["x", "y"]), ("y,x", ["y", "x"])], ids=["first-appearance", "wrt"])
def test_order_2_hessian_in_wrt_order(run_cli, strict_json, wrt, order):
    # f = x**2 y + sin(y) x at x=1.5, y=0.5, given in the other order with --at
    args = ["check", "x**2*y + sin(y)*x", "--at", "y=0.5", "--at", "x=1.5", "--order", "2"]
    code, rep, _ = _json(run_cli, strict_json, *args, *(["--wrt", wrt] if wrt else []))
    c = _check(rep)
    x, y = 1.5, 0.5
    second = {("x", "x"): 2 * y, ("x", "y"): 2 * x + math.cos(y), ("y", "x"): 2 * x + math.cos(y),
              ("y", "y"): -math.sin(y) * x}
    expected = [[second[(a, b)] for b in order] for a in order]
    assert code == 0 and [g["wrt"] for g in c["gradients"]] == order
    for method in ("autograd", "symbolic", "finite_difference"):
        assert np.allclose(c["hessian"][method], expected, rtol=1e-8), method


def test_junit_file(run_cli, tmp_path):
    path = tmp_path / "report.xml"
    code, _, _ = run_cli("op", str(SAMPLES / "ops" / "buggy.py") + ":SwishStaleConstant", "--at", "x=randn(2, 3)",
                         "--junit", str(path))
    root = ET.parse(path).getroot()
    assert code == 1 and root.get("tests") == "1" and root.get("failures") == "1"
    assert root.find(".//failure") is not None


def test_json_is_alone_on_stdout(run_cli, strict_json):
    code, out, err = run_cli("check", "x**2", "--at", "x=3", "--json")
    assert strict_json(out)["schema_version"] == 1 and out.lstrip().startswith("{")


@pytest.mark.parametrize("loss,value,grad_w", [
    # loss(EXPR, target=1) with EXPR = w*x, w=0.3, x=0.5, so p = z = 0.15; d/dw = dloss/dp * x
    ("none", 0.15, 0.5),
    ("bce", -math.log(0.15), -1 / 0.15 * 0.5),
    ("bce_logits", math.log1p(math.exp(-0.15)), -0.5 / (1 + math.exp(0.15))),
    ("mse", (0.15 - 1) ** 2, 2 * (0.15 - 1) * 0.5),
], ids=["none", "bce", "bce_logits", "mse"])
def test_loss_and_target(run_cli, strict_json, loss, value, grad_w):
    args = ["check", "w*x", "--at", "w=0.3", "--at", "x=0.5"] + (["--loss", loss, "--target", "1"]
                                                                 if loss != "none" else [])
    code, rep, _ = _json(run_cli, strict_json, *args)
    c = _check(rep)
    assert code == 0 and [g["wrt"] for g in c["gradients"]] == ["w", "x"]  # the target is not differentiated
    assert c["value"]["symbolic"] == pytest.approx(value, rel=1e-12)
    assert c["gradients"][0]["autograd"] == pytest.approx(grad_w, rel=1e-12)


def test_bce_clamps_exactly_as_the_seed_notebook(run_cli, strict_json):
    # p = sigmoid(6.7*2+1) rounds to 1 - 5.6e-7 < 1 - 1e-7: no clamp, loss -log(1-p) = 14.4000...
    _, rep, _ = _json(run_cli, strict_json, "check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0",
                      "--at", "w=2", "--at", "b=1", "--at", "x=6.7", "--wrt", "w,b", "--dtype", "float32")
    c = _check(rep)
    z = 2 * 6.7 + 1
    assert c["value"]["symbolic"] == pytest.approx(-math.log(1 - 1 / (1 + math.exp(-z))), rel=1e-9)
    assert c["value"]["torch"] == pytest.approx(14.3329, abs=1e-4) and "precision_loss" in _codes(c)
    # past the clamp, p' = 1 - 1e-7: the loss is -log(1e-7) and the gradient is 0
    _, rep, _ = _json(run_cli, strict_json, "check", "p", "--loss", "bce", "--target", "0", "--at", "p=0.99999999")
    c = _check(rep)
    assert c["value"]["symbolic"] == pytest.approx(-math.log(1e-7), rel=1e-9)
    assert c["gradients"][0]["autograd"] == 0


# ---- values ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("2", 2.0), ("-1.5e-3", -1.5e-3), ("[1,2,3]", [1.0, 2.0, 3.0]), ("[[1,2],[3,4]]", [[1.0, 2.0], [3.0, 4.0]]),
    ("zeros(2, 2)", [[0.0, 0.0], [0.0, 0.0]]), ("ones(3)", [1.0, 1.0, 1.0]),
    ("linspace(0, 1, 5)", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("randn(2, 3)", (2, 3)), ("rand(4)", (4,)), ("randn()", ()),
])
def test_value_language(run_cli, strict_json, text, expected):
    code, rep, _ = _json(run_cli, strict_json, "check", "sum(x*x)", "--at", f"x={text}")
    got = _check(rep)["point"]["x"]
    assert code == 0
    if isinstance(expected, tuple):
        assert np.shape(got) == expected
        if text.startswith("rand("):
            assert np.all((np.asarray(got) >= 0) & (np.asarray(got) < 1))
        _, again, _ = _json(run_cli, strict_json, "check", "sum(x*x)", "--at", f"x={text}")
        _, seeded, _ = _json(run_cli, strict_json, "check", "sum(x*x)", "--at", f"x={text}", "--seed", "7")
        assert _check(again)["point"]["x"] == got and _check(seeded)["point"]["x"] != got
    else:
        assert got == expected


@pytest.mark.parametrize("text", ["[1,[2]]", "randn(-1)", "foo(2)", "randn(2", "linspace(0,1)", "[]", "1e400"])
def test_bad_values_exit_2(run_cli, text):
    code, out, err = run_cli("check", "sum(x*x)", "--at", f"x={text}")
    assert code == 2 and out == "" and err.startswith("gradcheck: error:") and "'x'" in err


# ---- the expression language -------------------------------------------------------------

X, Y, P = [0.3, -0.7, 1.4], [0.8, 0.25, -1.1], [0.2, 0.6, 0.9]


def _torch_functions():
    import torch
    import torch.nn.functional as F

    return [
        ("abs(x)", torch.abs, {"x": X}), ("sqrt(p)", torch.sqrt, {"p": P}), ("exp(x)", torch.exp, {"x": X}),
        ("log(p)", torch.log, {"p": P}), ("log1p(x)", torch.log1p, {"x": X}), ("expm1(x)", torch.expm1, {"x": X}),
        ("sin(x)", torch.sin, {"x": X}), ("cos(x)", torch.cos, {"x": X}), ("tan(x)", torch.tan, {"x": X}),
        ("asin(p)", torch.asin, {"p": P}), ("acos(p)", torch.acos, {"p": P}), ("atan(x)", torch.atan, {"x": X}),
        ("sinh(x)", torch.sinh, {"x": X}), ("cosh(x)", torch.cosh, {"x": X}), ("tanh(x)", torch.tanh, {"x": X}),
        ("sigmoid(x)", torch.sigmoid, {"x": X}), ("softplus(x)", F.softplus, {"x": X}),
        ("relu(x)", torch.relu, {"x": X}), ("erf(x)", torch.erf, {"x": X}),
        ("atan2(y, x)", torch.atan2, {"y": Y, "x": X}), ("minimum(x, y)", torch.minimum, {"x": X, "y": Y}),
        ("maximum(x, y)", torch.maximum, {"x": X, "y": Y}),
        ("clamp(x, -0.5, 1)", lambda x: torch.clamp(x, -0.5, 1), {"x": X}),
        ("sum(x*y)", lambda x, y: torch.sum(x * y), {"x": X, "y": Y}),
        ("mean(x**2)", lambda x: torch.mean(x**2), {"x": X}), ("prod(x)", torch.prod, {"x": X}),
        ("norm(x)", torch.linalg.vector_norm, {"x": X}), ("logsumexp(x)", lambda x: torch.logsumexp(x, 0), {"x": X}),
        ("dot(x, y)", torch.dot, {"x": X, "y": Y}),
        ("bce(p, y)", lambda p, y: F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y), {"p": P, "y": [0, 1, 0.3]}),
        ("bce_logits(x, y)", F.binary_cross_entropy_with_logits, {"x": X, "y": [0, 1, 0.3]}),
        ("mse(x, y)", F.mse_loss, {"x": X, "y": Y}),
        ("x - y / 2 + (-x) * +y ** 2", lambda x, y: x - y / 2 + (-x) * (+y) ** 2, {"x": X, "y": Y}),
        ("where(x < y, x**2, y)", lambda x, y: torch.where(x < y, x**2, y), {"x": X, "y": Y}),
        ("where(x <= y, x**2, y)", lambda x, y: torch.where(x <= y, x**2, y), {"x": X, "y": Y}),
        ("where(x > y, x**2, y)", lambda x, y: torch.where(x > y, x**2, y), {"x": X, "y": Y}),
        ("where(x >= y, x**2, y)", lambda x, y: torch.where(x >= y, x**2, y), {"x": X, "y": Y}),
        ("pi*x + e*y", lambda x, y: math.pi * x + math.e * y, {"x": X, "y": Y}),
        ("x*detach(x)", lambda x: x * x.detach(), {"x": X}),
    ]


def test_the_function_table_covers_the_contract():
    from gradcheck_cli.expr.functions import FUNCTIONS

    listed = ("abs sqrt exp log log1p expm1 sin cos tan asin acos atan sinh cosh tanh sigmoid softplus relu erf "
              "atan2 minimum maximum clamp sum mean prod norm logsumexp dot bce bce_logits mse detach where").split()
    assert set(listed) <= set(FUNCTIONS)
    exprs = " ".join(case[0] for case in _torch_functions())
    for name in listed:
        assert f"{name}(" in exprs, name  # and every one is checked below


FUNCTION_IDS = [case[0] for case in _torch_functions()]


@pytest.mark.parametrize("index", range(len(FUNCTION_IDS)), ids=FUNCTION_IDS)
def test_each_function_against_torch_autograd(index):
    import torch

    expr, fn, at = _torch_functions()[index]
    names = list(at)
    leaves = [torch.tensor(at[n], dtype=torch.float64) for n in names]
    c = _check(gradcheck_cli.check_expression(expr, at=at).to_dict())
    assert c["passed"], c["diagnostics"]
    for g in c["gradients"]:
        k = names.index(g["wrt"])
        truth = torch.autograd.functional.jacobian(
            lambda t: fn(*[t if j == k else leaves[j] for j in range(len(leaves))]), leaves[k]).numpy()
        assert np.allclose(g["autograd"], truth, rtol=1e-12, atol=1e-14)
        if "detach" in expr:
            assert "stop_gradient" in _codes(c)  # finite differences see through detach
        else:
            assert np.allclose(g["symbolic"], truth, rtol=1e-10, atol=1e-12)
            assert np.allclose(g["finite_difference"], truth, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("expr,at,fragment", [
    ("x**2 +", ["x=1"], "column"),
    ("__import__('os')", ["x=1"], "not part of the expression language"),
    ("x.real", ["x=1"], "attribute access"),
    ("lambda: x", ["x=1"], "not part of the expression language"),
    ("foo(x)", ["x=1"], "unknown function 'foo'"),
    ("x < 1", ["x=1"], "only allowed as the first argument of where"),
    ("where(x, x, 1)", ["x=1"], "must be a comparison"),
    ("x*y", ["x=1"], "no value for 'y'"),
    ("x*pi", ["x=1", "pi=3"], "'pi' is a constant"),
    ("x*e", ["x=1", "e=3"], "'e' is a constant"),
    ("sum(x+y)", ["x=[1,2]", "y=[1,2,3]"], "do not broadcast"),
], ids=["syntax", "dunder", "attribute", "lambda", "unknown-function", "bare-comparison", "where-needs-comparison",
        "missing-value", "pi-is-constant", "e-is-constant", "broadcast"])
def test_expression_errors_exit_2_with_one_message(run_cli, expr, at, fragment):
    args = ["check", expr]
    for a in at:
        args += ["--at", a]
    code, out, err = run_cli(*args)
    assert code == 2 and out == "" and fragment in err and err.startswith("gradcheck: error:")
    assert "Traceback" not in err


def test_parse_error_shows_the_position(run_cli):
    _, _, err = run_cli("check", "x ** * 2", "--at", "x=1")
    lines = err.splitlines()
    assert "column 6" in lines[0] and lines[1].strip() == "x ** * 2" and lines[2].index("^") == lines[1].index("*") + 3


def test_broadcasting_follows_pytorch_and_jacobians_are_output_plus_input_shape():
    import torch

    a, b = [[1.0], [2.0]], [0.5, -1.0, 3.0]
    c = _check(gradcheck_cli.check_expression("a*b + sin(a)", at={"a": a, "b": b}).to_dict())
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda A, B: A * B + torch.sin(A), (ta, tb))
    for g, j in zip(c["gradients"], jac):
        assert g["shape"] == [2, 3] + list(np.shape(a if g["wrt"] == "a" else b))
        for method in ("autograd", "symbolic", "finite_difference"):
            assert np.shape(g[method]) == tuple(j.shape) and np.allclose(g[method], j.numpy()), method
    scalar = _check(gradcheck_cli.check_expression("sum(a*b)", at={"a": a, "b": 2.0}).to_dict())
    assert [(g["wrt"], g["shape"], g["autograd"]) for g in scalar["gradients"]] == [("a", [2, 1], [[2.0], [2.0]]),
                                                                                  ("b", [], 3.0)]


# ---- the JSON report ---------------------------------------------------------------------

def test_report_shape_schema_version_1(run_cli, strict_json):
    _, rep, _ = _json(run_cli, strict_json, "check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0",
                      "--at", "w=2", "--at", "b=1", "--at", "x=6.7", "--wrt", "w,b")
    assert rep["schema_version"] == 1 and rep["passed"] is True
    c = _check(rep)
    for key in ("name", "kind", "passed", "dtype", "point", "value", "gradients", "diagnostics"):
        assert key in c, key
    assert c["name"] == "sigmoid(w*x+b)" and c["kind"] == "expression" and c["point"] == {"w": 2.0, "b": 1.0,
                                                                                        "x": 6.7}
    assert set(c["value"]) >= {"torch", "symbolic"}
    for g in c["gradients"]:
        for key in ("wrt", "shape", "autograd", "symbolic", "finite_difference", "max_abs_error", "max_rel_error",
                    "passed"):
            assert key in g, key
    # d/dw of -log(1 - sigmoid(z)) = sigmoid(z) * x
    assert c["gradients"][0]["symbolic"] == pytest.approx(6.7 / (1 + math.exp(-14.4)), rel=1e-12)


def test_nonfinite_numbers_are_strings(run_cli, strict_json):
    code, rep, _ = _json(run_cli, strict_json, "check", "log(x)", "--at", "x=0")
    c = _check(rep)
    assert code == 1 and c["value"]["torch"] == "-inf" and c["gradients"][0]["autograd"] == "inf"
    assert "nonfinite" in _codes(c)
    _, rep, _ = _json(run_cli, strict_json, "check", "x", "--at", "x=nan")
    assert _check(rep)["point"]["x"] == "nan"


def test_null_symbolic_comes_with_its_reason():
    c = _check(gradcheck_cli.check_expression("sum(exp(sin(x))*cos(x)**3)", at={"x": "randn(20)"},
                                              symbolic_budget=1e-6).to_dict())
    assert c["gradients"][0]["symbolic"] is None and c["value"]["symbolic"] is None
    assert "symbolic_unavailable" in _codes(c) and c["passed"]


def test_op_report_one_gradient_per_input_named_by_at(run_cli, strict_json, in_ops_dir):
    # --at order is the positional order: first=5, second=1 gives 5 - 2 = 3
    code, rep, _ = _json(run_cli, strict_json, "op", "cops.py:first_minus_twice_second", "--at", "q=5.0",
                         "--at", "p=1.0", "--reference", "q - 2*p")
    c = _check(rep)
    assert code == 0 and c["kind"] == "op" and c["value"]["torch"] == 3.0
    assert [(g["wrt"], g["autograd"]) for g in c["gradients"]] == [("q", 1.0), ("p", -2.0)]


@pytest.mark.parametrize("wrt,order", [(None, ["a", "b"]), ("b,a", ["b", "a"])], ids=["at-order", "wrt-order"])
def test_op_order_2_hessian_in_wrt_order(run_cli, strict_json, in_ops_dir, wrt, order):
    args = ["op", "cops.py:mul", "--at", "a=[1.0, 2.0]", "--at", "b=[3.0, 5.0]", "--order", "2",
            "--reference", "a*b"]
    code, rep, _ = _json(run_cli, strict_json, *args, *(["--wrt", wrt] if wrt else []))
    c = _check(rep)
    jac = {"a": [[3.0, 0.0], [0.0, 5.0]], "b": [[1.0, 0.0], [0.0, 2.0]]}  # d(a*b)/da = diag(b), /db = diag(a)
    assert code == 0 and [g["wrt"] for g in c["gradients"]] == order
    assert [g["autograd"] for g in c["gradients"]] == [jac[w] for w in order]
    assert c["hessian"]["labels"] == [f"{w}[{i}]" for w in order for i in range(2)]


def test_op_points_checked(run_cli, strict_json, in_ops_dir):
    _, rep, _ = _json(run_cli, strict_json, "op", "cops.py:Cube", "--at", "x=randn(3)", "--points", "4")
    c = _check(rep)
    x = np.asarray(c["point"]["x"])
    assert c["points_checked"] == 5 and np.allclose(c["gradients"][0]["autograd"], np.diag(3 * x**2))


# ---- diagnostic codes and exit codes -----------------------------------------------------

DIAGNOSTICS = [
    # (code, command line, exit code)
    ("non_differentiable", ["check", "relu(x)", "--at", "x=0"], 0),
    ("non_differentiable", ["check", "relu(x)", "--at", "x=1e-7"], 0),
    ("stop_gradient", ["check", "x**2 + detach(x**2)", "--at", "x=1"], 0),
    ("precision_loss", ["check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2", "--at", "b=1",
                        "--at", "x=6.7", "--dtype", "float32"], 0),
    ("nonfinite", ["check", "exp(x)", "--at", "x=800"], 1),
    ("reference_disagreement", ["check", "sqrt(x)", "--at", "x=0"], 1),
    ("masked_nan", ["check", "where(x > 0, sqrt(x), 0*x)", "--at", "x=[-1, 4]"], 1),
    ("nondeterministic", ["op", "cops.py:NonDeterministic", "--at", "x=randn(3)"], 1),
    ("input_mutated", ["op", "cops.py:mutates", "--at", "x=randn(3)"], 1),
    ("noncontiguous_grad_output", ["op", str(SAMPLES / "ops" / "buggy.py") + ":SwishFlatKernel", "--at",
                                   "x=randn(2, 3)"], 1),
    ("forward_mismatch", ["op", "cops.py:doubles", "--at", "x=randn(3)", "--reference", "3*x"], 1),
    ("gradient_mismatch", ["op", "cops.py:WrongGrad", "--at", "x=randn(3)", "--reference", "x**3"], 1),
    ("op_error", ["op", "cops.py:raises_in_forward", "--at", "x=randn(3)"], 1),
    ("op_error", ["op", "cops.py:RaisesInBackward", "--at", "x=randn(3)"], 1),
]


@pytest.mark.parametrize("code,args,exit_code", DIAGNOSTICS,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(DIAGNOSTICS)])
def test_diagnostic_codes_and_exit_codes(run_cli, strict_json, in_ops_dir, code, args, exit_code):
    got, rep, _ = _json(run_cli, strict_json, *args)
    assert code in _codes(_check(rep))
    assert got == exit_code and rep["passed"] is (exit_code == 0)


USER_ERRORS = [
    ["check", "x", "--at", "x=1", "--no-such-option"],
    ["check", "x", "--at", "x=1", "--dtype", "float128"],
    ["check", "x", "--at", "x=1", "--fd", "bogus"],
    ["check", "x", "--at", "x=1", "--order", "3"],
    ["check", "x", "--at", "x=1", "--points", "-1"],
    ["check", "x", "--at", "x=1", "--seed", "-1"],
    ["check", "x", "--at", "x=1", "--eps", "0"],
    ["check", "x", "--at", "x=1", "--atol", "-1"],
    ["check", "x", "--at", "x=1", "--loss", "hinge", "--target", "0"],
    ["check", "x", "--at", "x=1", "--loss", "bce"],
    ["check", "x", "--at", "x=1", "--wrt", "y"],
    ["check", "x", "--at", "x=1", "--junit", "/dev/null/report.xml"],
    ["op", "cops.py:Cube", "--at", "x=randn(3)", "--mode", "slow"],
    ["op", "cops.py:Cube", "--at", "x=randn(3)", "--device", "tpu"],
    ["op", "cops.py:Cube", "--at", "x=randn(3)", "--seed", "-1"],
    ["op", "cops.py:Cube", "--at", "x=randn(3)", "--reference", "x**"],
    ["op", "cops.py:Nope", "--at", "x=randn(3)"],
    ["op", "missing.py:f", "--at", "x=randn(3)"],
    ["op", "broken.py:f", "--at", "x=randn(3)"],
    ["op", "no_such_module_xyz.mod:f", "--at", "x=randn(3)"],
    ["op", "cops.py:Cube"],
    ["op", "cops.py:with_kwargs", "--at", "x=randn(3)", "--kw", "dims=[1, a]"],
    ["run", "no-such-spec.toml"],
    ["run", str(SAMPLES / "specs"), "--shard", "4/3"],
    ["run", str(SAMPLES / "specs"), "--jobs", "0"],
    ["steps", "sin(x)", "--at", "x=1", "--seed", "-1"],
    ["steps", "sin(x)", "--at", "x=1", "--plot", "chart.txt"],
]


@pytest.mark.parametrize("args", USER_ERRORS, ids=[" ".join(a[:1] + a[-2:]) for a in USER_ERRORS])
def test_user_errors_exit_2_with_one_message_and_no_traceback(run_cli, in_ops_dir, args):
    code, out, err = run_cli(*args)  # run_cli re-raises anything that would be a traceback
    assert code == 2 and out == "" and err.strip() and "Traceback" not in err


def test_no_traceback_from_the_console_script(ops_dir):
    # the real entry point, for the two errors that used to escape as tracebacks
    for args in (["check", "x", "--at", "x=1", "--seed", "-1"],
                 ["check", "x", "--at", "x=1", "--junit", "/dev/null/r.xml"]):
        result = run_gradcheck(args, cwd=ops_dir)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("gradcheck: error:") and result.stdout == ""


# ---- stdout, stderr, colour --------------------------------------------------------------

def test_tables_to_stdout_messages_to_stderr(run_cli):
    code, out, err = run_cli("check", "x**2", "--at", "x=3")
    assert code == 0 and "autograd" in out and "PASS" in out and err == ""
    code, out, err = run_cli("check", "x**2 +", "--at", "x=3")
    assert code == 2 and out == "" and "column" in err


def test_what_an_op_prints_goes_to_stderr_and_module_targets_import_from_the_current_folder(ops_dir):
    # console script, real file descriptors: `module:ATTR` from the current folder (as under
    # python -m), and the op's own print() must not corrupt the JSON on stdout
    result = run_gradcheck(["op", "cops:noisy", "--at", "x=[1.0, 2.0]", "--json"], cwd=ops_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["checks"][0]["passed"] is True
    assert "the op printed this" in result.stderr


def test_what_an_op_prints_stays_off_stdout_in_process(run_cli, strict_json, in_ops_dir):
    code, out, err = run_cli("op", "cops.py:noisy", "--at", "x=[1.0, 2.0]", "--json")
    assert code == 0 and strict_json(out)["passed"] is True and "the op printed this" in err


def test_no_colour_when_piped_or_no_color():
    args = ["check", "x**2", "--at", "x=3"]
    piped = run_gradcheck(args)
    assert "\x1b" not in piped.stdout
    assert b"\x1b[" in terminal_output(args, clean_env(TERM="xterm"))[1]  # a terminal gets colour, so the test can fail
    assert b"\x1b" not in terminal_output(args, clean_env(TERM="xterm", NO_COLOR="1"))[1]


# ---- spec files --------------------------------------------------------------------------

def _strip(check: dict) -> dict:
    drop = ("duration_s", "worker_peak_rss_mib", "name", "spec_file", "op", "calls")
    return {k: v for k, v in check.items() if k not in drop}


def test_every_spec_key_means_its_option(run_cli, strict_json, ops_dir, tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "cops.py").write_text(OPS_SOURCE)
    (tmp_path / "expr.toml").write_text(textwrap.dedent('''
        [[check]]
        name = "seed-bce"
        expr = "sigmoid(w*x+b)"
        loss = "bce"
        target = 0
        at = { w = 2.0, b = 1.0, x = 6.7 }
        wrt = ["w", "b"]
        dtype = "float32"

        [[check]]
        name = "all-keys"
        expr = "sum(x**2*w)"
        at = { x = "randn(3)", w = 0.5 }
        wrt = ["w", "x"]
        fd = "central"
        eps = 1e-5
        atol = 1e-8
        rtol = 1e-6
        points = 2
        seed = 4
        order = 2
        '''))
    (sub / "ops.toml").write_text(textwrap.dedent('''
        [[check]]
        name = "op-keys"
        op = "cops.py:with_kwargs"        # relative to this spec file
        at = { x = "randn(3)" }
        kw = { alpha = 2.0, flag = true, mode = "square", dims = [1, 2] }
        reference = "4*x*x"
        mode = "full"
        device = "cpu"
        dtype = "float32"

        [[check]]
        name = "module-target"
        op = "torch:sin"
        at = { x = "randn(3)" }
        reference = "sin(x)"
        wrt = ["x"]
        fd = "central"
        eps = 1e-6
        atol = 1e-9
        rtol = 1e-6
        points = 1
        seed = 3
        order = 2
        '''))
    monkeypatch.chdir(ops_dir)  # a different folder: the op path resolves against the spec file
    code, rep, err = _json(run_cli, strict_json, "run", str(tmp_path))
    assert code == 0, err
    got = {c["name"]: c for c in rep["checks"]}
    same_as = {
        "seed-bce": ["check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2.0", "--at", "b=1.0",
                     "--at", "x=6.7", "--wrt", "w,b", "--dtype", "float32"],
        "all-keys": ["check", "sum(x**2*w)", "--at", "x=randn(3)", "--at", "w=0.5", "--wrt", "w,x", "--fd",
                     "central", "--eps", "1e-5", "--atol", "1e-8", "--rtol", "1e-6", "--points", "2", "--seed", "4",
                     "--order", "2"],
        "op-keys": ["op", "cops.py:with_kwargs", "--at", "x=randn(3)", "--kw", "alpha=2.0", "--kw", "flag=true",
                    "--kw", "mode=square", "--kw", "dims=[1, 2]", "--reference", "4*x*x", "--mode", "full",
                    "--device", "cpu", "--dtype", "float32"],
        "module-target": ["op", "torch:sin", "--at", "x=randn(3)", "--reference", "sin(x)", "--wrt", "x", "--fd",
                          "central", "--eps", "1e-6", "--atol", "1e-9", "--rtol", "1e-6", "--points", "1", "--seed",
                          "3", "--order", "2"],
    }
    assert set(got) == set(same_as)
    for name, args in same_as.items():
        _, cli, _ = _json(run_cli, strict_json, *args)
        assert _strip(got[name]) == _strip(_check(cli)), name


@pytest.mark.parametrize("key", ["tolerance", "wrtt", "expression"])
def test_unknown_spec_key_is_named(run_cli, tmp_path, key):
    (tmp_path / "s.toml").write_text(f'[[check]]\nname = "a"\nexpr = "x"\nat = {{ x = 1 }}\n{key} = 1\n')
    code, out, err = run_cli("run", str(tmp_path / "s.toml"))
    assert code == 2 and out == "" and f"unknown key '{key}'" in err


@pytest.mark.parametrize("body,fragment", [
    ('[[check]]\nname = "a"\nat = { x = 1 }\n', "missing key 'expr' or 'op'"),
    ('[[check]]\nname = "a"\nexpr = "x"\nop = "m:f"\nat = { x = 1 }\n', "not both"),
    ('[[check]]\nname = "a"\nexpr = "x +"\nat = { x = 1 }\n', "column"),
    ('[[check]\nexpr = "x"\n', "not valid TOML"),
    ('[[check]]\nname = "a"\nop = "no_such_module_xyz:f"\nat = { x = 1 }\n', "no_such_module_xyz"),
], ids=["no-expr-or-op", "both", "bad-expr", "toml-syntax", "unimportable-op"])
def test_bad_spec_files_exit_2(run_cli, tmp_path, body, fragment):
    (tmp_path / "s.toml").write_text(body)
    code, out, err = run_cli("run", str(tmp_path / "s.toml"))
    assert code == 2 and out == "" and fragment in err


def test_shards_are_disjoint_stable_and_cover_every_check(run_cli, strict_json):
    def names(*extra):
        code, rep, _ = _json(run_cli, strict_json, "run", str(SAMPLES / "specs" / "seed.toml"), "--allow-empty",
                             *extra)
        assert code == 0
        return [c["name"] for c in rep["checks"]]

    everything = names()
    shards = [names("--shard", f"{k}/3") for k in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(everything)  # disjoint and complete
    assert names("--shard", "2/3") == shards[1]  # stable


def test_jobs_give_the_same_report(run_cli, strict_json):
    spec = str(SAMPLES / "specs" / "seed.toml")
    _, one, _ = _json(run_cli, strict_json, "run", spec)
    _, two, _ = _json(run_cli, strict_json, "run", spec, "--jobs", "2")
    assert [_strip(c) for c in one["checks"]] == [_strip(c) for c in two["checks"]]


def test_folders_are_searched_and_a_failure_exits_1(run_cli, strict_json):
    code, rep, _ = _json(run_cli, strict_json, "run", str(SAMPLES / "specs_failing"))
    assert code == 1 and rep["passed"] is False and rep["checks"][0]["kind"] == "op"


# ---- op targets --------------------------------------------------------------------------

@pytest.mark.parametrize("target,at,reference", [
    ("cops.py:Cube", ["x=[0.5, -2.0]"], "x**3"),                     # Function subclass, through .apply
    ("cops.py:Outer.Inner.Cube", ["x=[0.5, -2.0]"], "x**3"),         # dotted ATTR
    ("cops.py:Polar", ["r=[1.0, 2.0]", "t=[0.3, 0.5]"], "r*cos(t); r*sin(t)"),  # tuple output
    ("cops.py:mul", ["a=[1.0, 2.0]", "b=[3.0, 5.0]"], "a*b"),        # a plain callable
    ("torch:sin", ["x=[0.5, -2.0]"], "sin(x)"),                       # module:ATTR
    ("torch.nn.functional:softplus", ["x=[0.5, -2.0]"], "softplus(x)"),
], ids=["function-subclass", "dotted-attr", "tuple-output", "callable", "module", "dotted-module"])
def test_op_targets(run_cli, strict_json, in_ops_dir, target, at, reference):
    args = ["op", target, "--reference", reference]
    for a in at:
        args += ["--at", a]
    code, rep, _ = _json(run_cli, strict_json, *args)
    c = _check(rep)
    assert code == 0 and c["kind"] == "op" and c["forward"]["passed"] is True
    assert [g["wrt"] for g in c["gradients"]] == [a.split("=")[0] for a in at]
    assert all(g["symbolic"] is not None for g in c["gradients"])


def test_op_tuple_output_jacobian_values(run_cli, strict_json, in_ops_dir):
    _, rep, _ = _json(run_cli, strict_json, "op", "cops.py:Polar", "--at", "r=[2.0]", "--at", "t=[0.5]")
    grads = {g["wrt"]: np.ravel(g["autograd"]) for g in _check(rep)["gradients"]}
    r, t = 2.0, 0.5
    assert np.allclose(grads["r"], [math.cos(t), math.sin(t)])
    assert np.allclose(grads["t"], [-r * math.sin(t), r * math.cos(t)])


@pytest.mark.parametrize("kw", [
    ["alpha=2", "flag=true", "mode=square", "dims=[1, 2]"],          # a bare string; 2 is an int...
    ["alpha=2.0", "flag=true", "mode='square'", "dims=[1,2]"],       # a quoted string
    ["alpha=2.0", "flag=true", 'mode="square"', "dims=[1, 2]"],
], ids=["bare", "single-quoted", "double-quoted"])
def test_kw_values_arrive_as_is(run_cli, strict_json, in_ops_dir, kw):
    args = ["op", "cops.py:with_kwargs", "--at", "x=[0.5, -1.0]", "--reference", "4*x*x"]
    for k in kw:
        args += ["--kw", k]
    code, rep, _ = _json(run_cli, strict_json, *args)
    c = _check(rep)
    if kw[0] == "alpha=2":  # ...which the op rejects: passed as is, never converted
        assert code == 1 and "op_error" in _codes(c)
    else:
        assert code == 0 and c["kwargs"]["mode"] == "square" and c["kwargs"]["flag"] is True


def test_the_contracts_softmax_kw_example(run_cli):
    code, out, _ = run_cli("op", "torch.nn.functional:softmax", "--at", "x=randn(3,4)", "--kw", "dim=-1")
    assert code == 0 and "PASS" in out


@pytest.mark.parametrize("mode,fmt", [("full", None), ("fast", "entries"), ("auto", None)])
def test_op_modes(run_cli, strict_json, in_ops_dir, mode, fmt):
    code, rep, _ = _json(run_cli, strict_json, "op", "cops.py:Cube", "--at", "x=randn(4, 5)", "--mode", mode,
                         "--reference", "x**3")
    c = _check(rep)
    assert code == 0 and c["gradients"][0].get("format") == fmt
    bad, rep, _ = _json(run_cli, strict_json, "op", "cops.py:WrongGrad", "--at", "x=randn(4, 5)", "--mode", mode)
    assert bad == 1 and "gradient_mismatch" in _codes(_check(rep))


# ---- steps -------------------------------------------------------------------------------

def test_steps_chart_json_and_svg(run_cli, strict_json, tmp_path):
    code, out, _ = run_cli("steps", "sin(x)", "--at", "x=1", "--json")
    doc = strict_json(out)
    assert code == 0 and doc["schema_version"] == 1 and doc["curves"][0]["exact_derivative"] == pytest.approx(
        math.cos(1.0))
    svg = tmp_path / "chart.svg"
    code, _, _ = run_cli("steps", "sin(x)", "--at", "x=1", "--plot", str(svg))
    assert code == 0 and svg.read_text().lstrip().startswith("<svg")


# ---- the Python API, exactly as the contract writes it -----------------------------------

def test_python_api_as_written(ops_dir):
    import importlib.util

    import torch

    report = gradcheck_cli.check_expression("sigmoid(w*x+b)", at={"w": 2.0, "b": 1.0, "x": 6.7},
                                            wrt=["w", "b"], loss="bce", target=0.0)
    assert report.passed is True
    doc = report.to_dict()
    assert doc["schema_version"] == 1 and [g["wrt"] for g in doc["checks"][0]["gradients"]] == ["w", "b"]
    from gradcheck_cli.render import json_out

    assert json.loads(json_out.render(report)) == json.loads(json.dumps(doc, allow_nan=False))

    spec = importlib.util.spec_from_file_location("contract_cops", ops_dir / "cops.py")
    cops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cops)
    x = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)
    report = gradcheck_cli.check_op(cops.Cube, x, reference=None, order=1)
    assert report.passed and report.to_dict()["checks"][0]["kind"] == "op"
    bad = gradcheck_cli.check_op(cops.WrongGrad, x, reference=None, order=1)
    assert bad.passed is False

    gradcheck_cli.assert_expression("x**2", at={"x": 3.0})
    with pytest.raises(AssertionError) as info:
        gradcheck_cli.assert_expression("exp(x)", at={"x": 3.3}, dtype="float16", atol=0, rtol=1e-9)
    assert "autograd" in str(info.value) and "\x1b" not in str(info.value)  # the rendered table, plain
    gradcheck_cli.assert_op(cops.Cube, x)
    with pytest.raises(AssertionError) as info:
        gradcheck_cli.assert_op(cops.WrongGrad, x)
    assert "gradient_mismatch" in str(info.value)
