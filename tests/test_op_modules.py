"""nn.Modules under the gate (issue 14): gradients w.r.t. inputs AND parameters, named as
named_parameters() names them; the user's module untouched; buffers fixed; --init builds
classes and factories; a wrong parameter gradient is caught and named.  Independent truth:
torch's own nn modules (correct by torch's tests) must pass, and a Function written here
with a deliberately wrong backward must fail on exactly the parameter it breaks."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import gradcheck_cli
from gradcheck_cli.errors import UserInputError


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class MulWrongWeightGrad(torch.autograd.Function):
    """y = x * w (w broadcast over rows); the backward for w forgets to sum over the rows
    and takes the first row only: right for x, wrong for w."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, (g * x)[0]


class ScaleLayer(nn.Module):
    def __init__(self, n: int = 3):
        super().__init__()
        self.inner = nn.Linear(n, n)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return MulWrongWeightGrad.apply(self.inner(x), self.scale)


def codes_by_input(check) -> dict:
    out: dict = {}
    for d in check.diagnostics:
        out.setdefault(d.wrt, set()).add(d.code)
    return out


def test_a_wrong_parameter_gradient_is_caught_and_named():
    module = ScaleLayer()
    (check,) = gradcheck_cli.check_module(module, randn(4, 3)).checks
    assert not check.passed
    verdicts = {g.wrt: g.passed for g in check.gradients}
    assert verdicts == {"x": True, "inner.weight": True, "inner.bias": True, "scale": False}
    assert "gradient_mismatch" in codes_by_input(check)["scale"]


def _modules():
    torch.manual_seed(0)
    return [
        ("Linear", lambda: nn.Linear(3, 2), lambda dt: (randn(4, 3, dtype=dt),)),
        ("LayerNorm", lambda: nn.LayerNorm(4), lambda dt: (randn(3, 4, dtype=dt),)),
        ("MultiheadAttention", lambda: nn.MultiheadAttention(4, 2, batch_first=True),
         lambda dt: (randn(1, 3, 4, dtype=dt), randn(1, 3, 4, dtype=dt, seed=1), randn(1, 3, 4, dtype=dt, seed=2))),
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name,make,inputs", _modules(), ids=[m[0] for m in _modules()])
def test_torchs_own_modules_pass_with_every_parameter(name, make, inputs, dtype):
    module = make()
    params = dict(module.named_parameters())
    (check,) = gradcheck_cli.check_module(module, *inputs(dtype)).checks
    assert check.passed, [(d.code, d.message[:200]) for d in check.diagnostics]
    checked = {g.wrt for g in check.gradients}
    assert set(params) <= checked  # every parameter that requires grad, by its own name
    assert check.dtype == str(dtype).replace("torch.", "")


def test_the_users_module_is_untouched_and_buffers_are_fixed():
    module = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).float()
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    report = gradcheck_cli.check_module(module, randn(5, 3))  # float64 inputs: a float32 module checks in float64
    assert report.passed, [(d.code, d.message[:200]) for d in report.checks[0].diagnostics]
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)
    assert all(p.grad is None for p in module.parameters())
    wrt = {g.wrt for g in report.checks[0].gradients}
    assert "1.running_mean" not in wrt and {"0.weight", "1.weight", "1.bias"} <= wrt


def test_wrt_selects_and_frozen_parameters_are_not_differentiated():
    module = nn.Linear(3, 2).double()
    module.bias.requires_grad_(False)
    (check,) = gradcheck_cli.check_module(module, randn(4, 3)).checks
    assert [g.wrt for g in check.gradients] == ["input", "weight"]  # forward's parameter name; bias is frozen
    (check,) = gradcheck_cli.check_module(module, randn(4, 3), wrt=["weight"]).checks
    assert [g.wrt for g in check.gradients] == ["weight"] and check.passed


def test_check_op_on_a_module_checks_its_parameters_too():
    module = ScaleLayer().double()
    report = gradcheck_cli.check_op(module, randn(2, 3))
    assert not report.passed and "scale" in {g.wrt for g in report.checks[0].gradients}
    with pytest.raises(AssertionError):
        gradcheck_cli.assert_module(ScaleLayer(), randn(2, 3))


MODULE_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    class Bad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x * w

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g * w, (g * x).sum(0) * 1.01

    class Gate(nn.Module):
        def __init__(self, n, bad=False):
            super().__init__()
            self.w = nn.Parameter(torch.ones(n) * 0.5)
            self.bad = bad

        def forward(self, x):
            return Bad.apply(x, self.w) if self.bad else x * self.w

    def make_gate():
        return Gate(3)

    def make(n, bad=False):
        return Gate(n, bad)

    gate = Gate(3)
''')


@pytest.fixture
def module_file(tmp_path):
    path = tmp_path / "gates.py"
    path.write_text(MODULE_FILE)
    return str(path)


@pytest.mark.parametrize("attr,extra,code", [
    ("gate", [], 0),                                   # an instance
    ("Gate", ["--init", "n=3"], 0),                    # a class, built with --init
    ("make", ["--init", "n=3"], 0),                    # a factory with arguments
    ("make_gate", [], 0),                              # a factory without any
    ("Gate", ["--init", "n=3", "--init", "bad=true"], 1),
], ids=["instance", "class", "factory", "zero-arg-factory", "bad-parameter-gradient"])
def test_modules_from_the_command_line(run_cli, strict_json, module_file, attr, extra, code):
    result = run_cli("op", f"{module_file}:{attr}", "--at", "x=randn(4, 3)", *extra, "--json")
    assert result.exit_code == code, result.stdout + result.stderr
    (check,) = strict_json(result.stdout)["checks"]
    assert [g["wrt"] for g in check["gradients"]] == ["x", "w"]
    assert {g["wrt"]: g["passed"] for g in check["gradients"]}["w"] is (code == 0)


def test_float32_module_class_checks_in_float64_and_weights_follow_the_seed(run_cli, strict_json):
    args = ["op", "torch.nn:Linear", "--init", "in_features=3", "--init", "out_features=2", "--at", "x=randn(4,3)",
            "--json"]
    first, second = run_cli(*args), run_cli(*args)
    assert first.exit_code == 0, first.stdout + first.stderr
    doc = strict_json(first.stdout)["checks"][0]
    assert doc["dtype"] == "float64" and [g["wrt"] for g in doc["gradients"]] == ["x", "weight", "bias"]
    assert doc["point"]["weight"] == strict_json(second.stdout)["checks"][0]["point"]["weight"]
    assert "global_state_changed" not in {d["code"] for d in doc["diagnostics"]}  # building it is not the op's doing


@pytest.mark.parametrize("args,message", [
    (["op", "torch.nn:Linear", "--at", "x=randn(4,3)"], "missing a required argument: 'in_features'"),
    (["op", "torch.nn:Linear", "--init", "in_feature=3", "--init", "out_features=2", "--at", "x=randn(4,3)"],
     "--init in_feature: no such keyword (did you mean in_features?)"),
    (["op", "torch.nn:Linear", "--init", "in_features=-3", "--init", "out_features=2", "--at", "x=randn(4,3)"],
     "building Linear(...) raised RuntimeError"),
    (["op", "torch:sin", "--init", "n=3", "--at", "x=randn(3)"], "--init: building sin(...) raised TypeError"),
    (["op", "torch.nn:LayerNorm", "--init", "normalized_shape=3", "--at", "weight=randn(2,3)"],
     "'weight' is a parameter of the module"),
    (["op", "torch.nn:LayerNorm", "--init", "normalized_shape=3", "--at", "x=randn(2,3)", "--wrt", "running"],
     "the op has no input 'running' (its inputs: x, weight, bias)"),
], ids=["class-without-init", "init-typo", "constructor-raises", "init-on-a-function", "name-clash", "wrt-typo"])
def test_module_input_errors_exit_2(run_cli, args, message):
    result = run_cli(*args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_spec_files_take_init(tmp_path, module_file, run_cli, strict_json):
    spec = tmp_path / "mods.toml"
    spec.write_text(textwrap.dedent(f'''
        [[check]]
        name = "gate"
        op = "{module_file}:Gate"
        init = {{ n = 3 }}
        at = {{ x = "randn(2, 3)" }}
    '''))
    result = run_cli("run", str(spec), "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert [g["wrt"] for g in strict_json(result.stdout)["checks"][0]["gradients"]] == ["x", "w"]


def test_check_module_refuses_an_input_named_like_a_parameter():
    with pytest.raises(UserInputError, match="'weight' is a parameter"):
        gradcheck_cli.check_module(nn.Linear(3, 2), randn(4, 3), names=["weight"])
