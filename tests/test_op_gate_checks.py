"""The gate's checks beyond the Jacobian (issue 14): forward-mode AD (a Function's jvp),
undefined grad_outputs, a backward that answers differently under vmap, and real call
signatures from the command line.  Each bug class is a small Function written here; the
independent truth is torch.autograd.gradcheck with the matching option switched on
(check_forward_ad, check_undefined_grad, check_batched_grad), which must agree."""

from __future__ import annotations

import pytest
import torch

import gradcheck_cli
import op_zoo


def x64(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class Cube(torch.autograd.Function):
    """x**3 with its backward and its jvp (K = 3: right)."""

    K = 3.0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x**2

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * Cube.K * x**2


class CubeWrongJvp(Cube):
    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * 3.3 * x**2  # 10% off: only forward mode is wrong


class CubeSubtleJvp(Cube):
    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * 3.003 * x**2  # 0.1% off: inside torch's rtol 1e-3


class CubeNoJvp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


def torch_says(fn, x, **options) -> bool:
    try:
        return torch.autograd.gradcheck(fn, (x.clone().requires_grad_(True),), raise_exception=True, **options)
    except Exception:  # noqa: BLE001 -- any refusal is a failed check for torch
        return False


@pytest.mark.parametrize("mode", ["full", "fast"])
@pytest.mark.parametrize("fn,passes,torch_passes", [(Cube, True, True), (CubeWrongJvp, False, False),
                                                    (CubeSubtleJvp, False, True)],
                         ids=["right-jvp", "wrong-jvp", "subtle-jvp"])
def test_a_wrong_jvp_fails_as_jvp_mismatch(fn, passes, torch_passes, mode):
    x = x64(6)
    (check,) = gradcheck_cli.check_op(fn, x, mode=mode).checks
    assert check.passed is passes, [(d.code, d.message[:200]) for d in check.diagnostics]
    assert check.extra["forward_ad"] == "checked"
    assert ("jvp_mismatch" in check.codes()) is not passes
    # torch, with forward AD switched on, agrees on the clear cases; a 0.1% jvp error is inside its rtol 1e-3
    assert torch_says(fn.apply, x, check_forward_ad=True) is torch_passes


def test_an_op_without_forward_ad_gets_a_note_not_a_failure():
    (check,) = gradcheck_cli.check_op(CubeNoJvp, x64(4)).checks
    assert check.passed and "forward_ad_unsupported" in check.codes()
    assert check.extra["forward_ad"] == "unsupported"


def test_forward_over_reverse_is_checked_with_order_2():
    (check,) = gradcheck_cli.check_op(op_zoo.SinSquared, x64(5), order=2).checks
    assert check.passed, [(d.code, d.message[:200]) for d in check.diagnostics]
    assert "forward_over_reverse_mismatch" not in check.codes()


class TwoOutputs(torch.autograd.Function):
    """(2x, sin x); with materialize_grads off its backward gets None for an unused output."""

    @staticmethod
    def forward(ctx, x):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x)
        return 2 * x, torch.sin(x)

    @staticmethod
    def backward(ctx, g1, g2):
        (x,) = ctx.saved_tensors
        return g1 * 2 + g2 * torch.cos(x)  # crashes on None


class TwoOutputsHandled(TwoOutputs):
    @staticmethod
    def backward(ctx, g1, g2):
        (x,) = ctx.saved_tensors
        out = torch.zeros_like(x)
        if g1 is not None:
            out = out + g1 * 2
        if g2 is not None:
            out = out + g2 * torch.cos(x)
        return out


class TwoOutputsGarbage(TwoOutputs):
    @staticmethod
    def backward(ctx, g1, g2):  # an undefined gradient read as ones: wrong
        (x,) = ctx.saved_tensors
        g1 = torch.ones_like(x) if g1 is None else g1
        g2 = torch.ones_like(x) if g2 is None else g2
        return g1 * 2 + g2 * torch.cos(x)


@pytest.mark.parametrize("mode", ["full", "fast"])
@pytest.mark.parametrize("fn,passes", [(TwoOutputs, False), (TwoOutputsHandled, True), (TwoOutputsGarbage, False)],
                         ids=["crashes-on-none", "handles-none", "none-as-ones"])
def test_undefined_grad_outputs(fn, passes, mode):
    x = x64(4)
    (check,) = gradcheck_cli.check_op(fn, x, mode=mode).checks
    assert check.passed is passes, [(d.code, d.message[:200]) for d in check.diagnostics]
    assert ("undefined_grad" in check.codes()) is not passes
    assert torch_says(fn.apply, x, check_undefined_grad=True) is passes


def test_a_backward_that_differs_under_vmap_is_reported(monkeypatch):
    """A Python Function's backward runs row by row under vmap, so the bug class lives in
    C++ batching rules (and register_vmap rules of custom ops); here the batched backward
    call itself is made 1% off, as such a rule would make it."""
    from gradcheck_cli.op.batched import VJPMany

    plain = VJPMany._batched
    monkeypatch.setattr(VJPMany, "_batched", lambda self, block: plain(self, block) * 1.01)
    x = x64(8)
    (check,) = gradcheck_cli.check_op(op_zoo.TimesSum, x, mode="full").checks
    assert not check.passed and "batched_grad_mismatch" in check.codes()
    assert all(g.passed for g in check.gradients)  # the Jacobian itself was checked with plain calls
    monkeypatch.setattr(VJPMany, "_batched", plain)
    assert gradcheck_cli.check_op(op_zoo.TimesSum, x, mode="full").passed


# ---- real call signatures from the command line ------------------------------------------------

def test_int_targets_and_tensor_keywords_run_from_the_cli(run_cli, strict_json):
    result = run_cli("op", "torch.nn.functional:cross_entropy", "--at", "logits=randn(4, 3)", "--at",
                     "y=int([0, 2, 1, 2])", "--kw", "weight=tensor([0.2, 0.3, 0.5])", "--kw",
                     "label_smoothing=0.1", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    (check,) = strict_json(result.stdout)["checks"]
    assert [g["wrt"] for g in check["gradients"]] == ["logits"]  # the int target and the kw tensor are not
    assert check["point"]["y"] == [0, 2, 1, 2]


def test_a_tensor_keyword_is_differentiated_when_wrt_names_it(run_cli, strict_json):
    result = run_cli("op", "torch.nn.functional:layer_norm", "--at", "x=randn(3, 4)", "--kw", "normalized_shape=[4]",
                     "--kw", "weight=randn(4)", "--kw", "bias=randn(4)", "--wrt", "x,weight,bias", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert [g["wrt"] for g in strict_json(result.stdout)["checks"][0]["gradients"]] == ["x", "weight", "bias"]


@pytest.mark.parametrize("args,message", [
    (["torch.nn.functional:softmax", "--at", "x=randn(3)", "--kw", "dimm=0"],
     "--kw dimm: no such keyword (did you mean dim?)"),
    (["torch:sin", "--at", "x=randn(3)", "--at", "y=randn(3)"], "too many positional arguments"),
    (["torch.nn.functional:cross_entropy", "--at", "x=randn(3, 2)"], "missing a required argument: 'target'"),
    (["torch.nn.functional:cross_entropy", "--at", "x=randn(3, 2)", "--at", "y=int([0, 1, 1])", "--wrt", "y"],
     "'y' is an integer or boolean tensor"),
    (["torch:sin", "--at", "x=int([1, 2])"], "needs at least one floating-point input"),
], ids=["kw-typo", "too-many", "too-few", "wrt-int", "only-ints"])
def test_signature_errors_exit_2_before_anything_runs(run_cli, args, message):
    result = run_cli("op", *args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_python_api_checks_the_signature_too():
    with pytest.raises(gradcheck_cli.UserInputError, match="no such keyword"):
        gradcheck_cli.check_op(torch.nn.functional.softmax, x64(3), kwargs={"dimm": 0})


# ---- tolerance truth in low precision ------------------------------------------------------------

def swish_scaled(k: float):
    class SwishK(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * torch.sigmoid(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            s = torch.sigmoid(x)
            return g * (s + x * s * (1 - s)) * k

    return SwishK


@pytest.mark.parametrize("mode", ["full", "fast"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("k,passes", [(1.0, True), (1.02, False), (0.98, False), (1.045, False)],
                         ids=["correct", "2%-high", "2%-low", "4.5%-high"])
def test_a_systematic_scale_error_is_caught_in_low_precision(k, passes, dtype, mode):
    """Each entry of a 2% (or 4.5%) scale error is within the elementwise bfloat16 tolerance
    (rtol 5e-2); the median of autograd / reference over the entries is not."""
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3)).to(dtype)
    (check,) = gradcheck_cli.check_op(swish_scaled(k), x, mode=mode).checks
    assert check.passed is passes, [(d.code, d.message[:200]) for d in check.diagnostics]
    if not passes:
        assert "scale_error" in check.codes()


LOW_PRECISION_OPS = [  # torch's own ops: correct, so they must pass in bfloat16 and float16
    ("gelu", torch.nn.functional.gelu, {}), ("silu", torch.nn.functional.silu, {}),
    ("softmax", torch.nn.functional.softmax, {"dim": -1}), ("log_softmax", torch.nn.functional.log_softmax, {"dim": -1}),
    ("tanh", torch.tanh, {}), ("sigmoid", torch.sigmoid, {}), ("exp", torch.exp, {}),
    ("layer_norm", torch.nn.functional.layer_norm, {"normalized_shape": [5]}),
    ("softplus", torch.nn.functional.softplus, {}), ("mish", torch.nn.functional.mish, {}),
    ("elu", torch.nn.functional.elu, {}), ("cumsum", torch.cumsum, {"dim": 1}),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name,fn,kwargs", LOW_PRECISION_OPS, ids=[o[0] for o in LOW_PRECISION_OPS])
def test_correct_ops_pass_in_low_precision(name, fn, kwargs, dtype):
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(5)).to(dtype)
    (check,) = gradcheck_cli.check_op(fn, x, kwargs=kwargs).checks
    assert check.passed, [(d.code, d.message[:200]) for d in check.diagnostics]
