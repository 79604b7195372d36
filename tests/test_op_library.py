"""torch.library custom operators under the gate (issue 14): the registration checks
torch.library.opcheck makes, each with its own code, and torch.library.opcheck's own
verdict on the same operators asserted beside ours (the independent truth).  Targets by
name: torch.ops.NS.NAME and NS::NAME, after the file that registers them."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch.library import custom_op, opcheck

import gradcheck_cli


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, g):
    (x,) = ctx.saved_tensors
    return g * torch.cos(x)


def _backward_when_compiled_is_twice(ctx, g):
    (x,) = ctx.saved_tensors
    return g * torch.cos(x) * (2.0 if torch.compiler.is_compiling() else 1.0)


def _sin(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x)


def _sin_mutating(x: torch.Tensor) -> torch.Tensor:
    y = torch.sin(x)
    x.mul_(1.001)  # not declared in mutates_args
    return y


def _define(name: str, body, fake="same", autograd=_backward):
    op = custom_op(f"gctest::{name}", mutates_args=())(body)
    if fake == "same":
        op.register_fake(lambda x: torch.empty_like(x))
    elif fake is not None:
        op.register_fake(fake)
    if autograd is not None:
        op.register_autograd(autograd, setup_context=_setup)
    return op


OPS = {
    "correct": (_define("sin", _sin), None),
    "fake-shape": (_define("sin_badfake", _sin, fake=lambda x: x.new_empty(x.shape[0] + 1)), "fake_kernel_mismatch"),
    "no-fake": (_define("sin_nofake", _sin, fake=None), "fake_kernel_mismatch"),
    "undeclared-mutation": (_define("sin_mutating", _sin_mutating), "schema_violation"),
    "no-autograd": (_define("sin_noautograd", _sin, autograd=None), "autograd_not_registered"),
    "compiled-backward-differs": (_define("sin_compiled", _sin, autograd=_backward_when_compiled_is_twice),
                                  "compile_mismatch"),
}
OPCHECK_AGREES = {"correct", "fake-shape", "no-fake", "undeclared-mutation", "no-autograd"}


def x64():
    return torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("case", list(OPS))
def test_registration_checks_find_what_opcheck_finds(case):
    op, code = OPS[case]
    (check,) = gradcheck_cli.check_op(op, x64()).checks
    ran = check.extra["registration"]
    assert set(ran) == {"operator", "fake_kernel", "schema", "autograd", "compile"}
    assert "registration_checked" in check.codes()
    if code is None:
        assert check.passed, [(d.code, d.message[:200]) for d in check.diagnostics]
        assert all(v == "passed" for k, v in ran.items() if k != "operator")
    else:
        assert not check.passed and code in check.codes()
    if case in OPCHECK_AGREES:  # torch's own tool, on the same operator and input
        if code is None:
            opcheck(op, (x64(),))
        else:
            with pytest.raises(Exception):
                opcheck(op, (x64(),))


def test_an_operator_without_autograd_is_named_once():
    op, _ = OPS["no-autograd"]
    (check,) = gradcheck_cli.check_op(op, x64()).checks
    assert [d.code for d in check.diagnostics].count("autograd_not_registered") == 1
    assert check.extra["registration"]["autograd"] == "failed"


def test_torch_ops_names_reach_the_same_operator():
    for target in (torch.ops.gctest.sin, torch.ops.gctest.sin.default):
        (check,) = gradcheck_cli.check_op(target, x64()).checks
        assert check.passed and check.extra["registration"]["operator"] == "gctest::sin"


def test_torchs_own_operators_get_no_registration_checks():
    (check,) = gradcheck_cli.check_op(torch.ops.aten.sin, x64()).checks
    assert check.passed and "registration" not in check.extra


LIBRARY_FILE = textwrap.dedent('''
    import torch

    @torch.library.custom_op("gctcli::scale", mutates_args=())
    def scale(x: torch.Tensor, k: float) -> torch.Tensor:
        return x * k

    @scale.register_fake
    def _(x, k):
        return torch.empty_like(x)

    def _setup(ctx, inputs, output):
        ctx.k = inputs[1]

    def _backward(ctx, g):
        return g * ctx.k, None

    scale.register_autograd(_backward, setup_context=_setup)
''')


@pytest.fixture(scope="module")
def library_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lib") / "gctcli_ops.py"
    path.write_text(LIBRARY_FILE)
    return str(path)


@pytest.mark.parametrize("form", ["{file}:gctcli::scale", "{file}:torch.ops.gctcli.scale",
                                  "{file}:gctcli::scale.default", "{file}:scale"])
def test_operator_targets_from_the_command_line(run_cli, strict_json, library_file, form):
    result = run_cli("op", form.format(file=library_file), "--at", "x=randn(3)", "--kw", "k=2.5", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    (check,) = strict_json(result.stdout)["checks"]
    assert check["registration"]["operator"] == "gctcli::scale"
    assert check["registration"]["compile"] == "passed"


@pytest.mark.parametrize("target,message", [
    ("gctcli_never::nothing", "no operator gctcli_never::nothing is registered with torch; give the file"),
    ("{file}:gctcli::scale.nosuch", "has no overload 'nosuch'"),
    ("{file}:gctcli::scale", "cannot be called with 1 positional input(s) (x) and keyword(s) kk"),
], ids=["unregistered", "overload", "schema-keyword"])
def test_operator_target_errors_exit_2(run_cli, library_file, target, message):
    result = run_cli("op", target.format(file=library_file), "--at", "x=randn(3)", "--kw", "kk=2.5")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
