"""Complex ops (issue 12): `gradcheck op --dtype complex128|complex64`, complex values on
the command line, and torch's own complex ops checked beside torch.autograd.gradcheck.

A complex input or output is checked through its real view (real and imaginary parts as a
last dimension of 2): that real Jacobian holds both Wirtinger derivatives, which is what
torch.autograd.gradcheck checks for complex functions.  The independent truth for each op
here is torch.autograd.gradcheck on the same op and point (its own complex machinery),
and for the bug, the conjugate the backward forgot, derived by hand in the docstring.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import gradcheck_cli
from schema_util import validate_report

OPS = textwrap.dedent('''
    import torch

    class Square(torch.autograd.Function):
        """z**2: grad_in = grad_out * conj(2 z) (torch's convention for complex gradients)."""

        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return z * z

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g * (2 * z).conj()

    class SquareNoConj(Square):
        """The classic complex bug: grad_out * 2 z, the conjugate forgotten.  With z = a + ib,
        the real Jacobian of z**2 is [[2a, -2b], [2b, 2a]]; the forgotten conjugate flips the
        sign of every b entry, so the bug is invisible exactly where b = 0."""

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g * 2 * z

    def mixed(z, w):
        """A complex input and a real one into a real output: |z|**2 * w."""
        return (z.abs() ** 2) * w
''')


@pytest.fixture
def ops(tmp_path):
    (tmp_path / "cops.py").write_text(OPS)
    return tmp_path / "cops.py"


def op_json(run_cli, strict_json, path, name, *args):
    code, out, err = run_cli("op", f"{path}:{name}", *args, "--json")
    return code, (strict_json(out) if out.strip() else None), err


@pytest.mark.parametrize("dtype", ["complex128", "complex64"])
def test_a_correct_complex_op_passes_and_the_forgotten_conjugate_fails(run_cli, strict_json, ops, dtype):
    code, doc, _ = op_json(run_cli, strict_json, ops, "Square", "--at", "z=randn(3)", "--dtype", dtype)
    assert code == 0, doc
    validate_report(doc)
    (check,) = doc["checks"]
    assert check["dtype"] == dtype
    assert check["gradients"][0]["input_shape"] == [3, 2]  # the real view: (real, imaginary)
    assert "complex_as_real" in {d["code"] for d in check["diagnostics"]}
    code, doc, _ = op_json(run_cli, strict_json, ops, "SquareNoConj", "--at", "z=randn(3)", "--dtype", dtype)
    assert code == 1
    assert "gradient_mismatch" in {d["code"] for d in doc["checks"][0]["diagnostics"]}


def test_torch_gradcheck_agrees_on_both_verdicts(ops):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cops_for_torch", ops)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    z = torch.tensor([0.5 + 1j, -1.25 - 0.5j], dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(mod.Square.apply, (z,))
    assert not torch.autograd.gradcheck(mod.SquareNoConj.apply, (z,), raise_exception=False)
    assert gradcheck_cli.check_op(mod.Square, z).passed
    assert not gradcheck_cli.check_op(mod.SquareNoConj, z).passed


def test_randn_draws_both_parts_and_complex_gives_them_exactly(run_cli, strict_json, ops):
    _, doc, _ = op_json(run_cli, strict_json, ops, "Square", "--at", "z=randn(4)", "--dtype", "complex128")
    drawn = np.array(doc["checks"][0]["point"]["z"])
    assert drawn.shape == (4, 2) and np.all(drawn[:, 1] != 0)
    _, doc, _ = op_json(run_cli, strict_json, ops, "Square", "--at", "z=complex([1, 2], [0.5, -1])",
                        "--dtype", "complex128")
    (check,) = doc["checks"]
    assert check["point"]["z"] == [[1.0, 0.5], [2.0, -1.0]]
    # z**2 at 1 + 0.5i and 2 - i, by hand: 0.75 + 1i and 3 - 4i
    assert np.allclose(np.array(check["value"]["torch"]).reshape(-1), [0.75, 1.0, 3.0, -4.0])


def test_a_point_on_the_real_axis_is_named_because_it_hides_the_conjugate_bug(run_cli, strict_json, ops):
    code, doc, _ = op_json(run_cli, strict_json, ops, "SquareNoConj", "--at", "z=[1, 2]", "--dtype", "complex128")
    (check,) = doc["checks"]
    codes = {d["code"] for d in check["diagnostics"]}
    assert code == 0 and "complex_on_real_axis" in codes  # passes there, as the docstring derives, and says so
    code, doc, _ = op_json(run_cli, strict_json, ops, "SquareNoConj", "--at", "z=complex([1, 2], [0.5, 0])",
                           "--dtype", "complex128")
    assert code == 1 and "complex_on_real_axis" not in {d["code"] for d in doc["checks"][0]["diagnostics"]}


def test_complex_and_real_inputs_together(ops):
    from gradcheck_cli.op.api import check_op_target

    report = check_op_target(f"{ops}:mixed", [("z", "complex([1, -2], [0.5, 3])"), ("w", "[2, 3]")],
                                           [], dtype="complex128")
    (check,) = report.checks
    assert report.passed, [d.message for d in check.diagnostics]
    # --dtype complex128 makes every input complex, w = 2 + 0i and 3 + 0i too
    dw = next(g for g in check.gradients if g.wrt == "w")
    assert dw.input_shape == (2, 2) and check.dtype == "complex128"


@pytest.mark.parametrize("args,needle", [
    (("--at", "z=complex([1, 2], [1, 0])"), "need a complex dtype"),
    (("--at", "z=complex([1, 2], [1])", "--dtype", "complex128"), "must match"),
    (("--at", "z=complex([1, 2])", "--dtype", "complex128"), "expected ','"),
    (("--at", "z=randn(2)", "--dtype", "complex128", "--reference", "z*z"), "--reference"),
    (("--at", "z=randn(2)", "--dtype", "complex32"), "--dtype must be one of"),
])
def test_complex_input_errors_are_exit_2_with_one_message(run_cli, ops, args, needle):
    code, out, err = run_cli("op", f"{ops}:Square", *args)
    assert code == 2 and needle in err and "Traceback" not in err + out


def test_expressions_stay_real(run_cli):
    code, _, err = run_cli("check", "x**2", "--at", "x=2", "--dtype", "complex128")
    assert code == 2 and "--dtype must be one of" in err


def test_check_op_makes_real_tensors_complex_under_a_complex_dtype():
    x = torch.tensor([0.5, -1.0], dtype=torch.float64)
    report = gradcheck_cli.check_op(torch.exp, x, dtype="complex128")
    (check,) = report.checks
    assert report.passed and check.dtype == "complex128"
    assert check.gradients[0].input_shape == (2, 2) and "complex_on_real_axis" in check.codes()


def _cz(*values, dtype=torch.complex128):
    return torch.tensor(values, dtype=dtype, requires_grad=True)


TORCH_OPS = [  # (name, op, inputs): torch's own complex ops, checked beside torch's own gradcheck
    ("fft.fft", torch.fft.fft, (_cz(0.5 + 1j, -1.0 + 0.25j, 2.0 - 0.5j, 0.1 + 0.2j),)),
    ("fft.ifft", torch.fft.ifft, (_cz(0.5 + 1j, -1.0 + 0.25j, 2.0 - 0.5j),)),
    ("fft.rfft (real in, complex out)", torch.fft.rfft,
     (torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=torch.float64, requires_grad=True),)),
    ("abs (complex in, real out)", torch.abs, (_cz(0.5 + 1j, -1.0 + 0.25j),)),
    ("angle", torch.angle, (_cz(0.5 + 1j, -1.0 + 0.25j),)),
    ("log", torch.log, (_cz(0.5 + 1j, -1.0 + 0.25j),)),
    ("sin", torch.sin, (_cz(0.5 + 1j, -1.0 + 0.25j),)),
    ("conj_physical", torch.conj_physical, (_cz(0.5 + 1j, -1.0 + 0.25j),)),
    ("view_as_real", torch.view_as_real, (_cz(0.5 + 1j, -1.0 + 0.25j),)),
    ("polar", torch.polar, (torch.tensor([1.5, 0.5], dtype=torch.float64, requires_grad=True),
                            torch.tensor([0.3, -2.0], dtype=torch.float64, requires_grad=True))),
    ("linalg.det", torch.linalg.det, (torch.tensor([[1 + 1j, 2 - 0.5j], [0.25j, 3 + 0j]], dtype=torch.complex128,
                                                   requires_grad=True),)),
    ("matmul", torch.matmul, (torch.tensor([[1 + 1j, 2 - 0.5j], [0.25j, 3 + 0j]], dtype=torch.complex128,
                                           requires_grad=True), _cz(0.5 - 1j, 2 + 0.5j))),
]


@pytest.mark.parametrize("name,fn,inputs", TORCH_OPS, ids=[t[0] for t in TORCH_OPS])
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_torch_complex_ops_pass_as_they_pass_torch_gradcheck(name, fn, inputs, mode):
    assert torch.autograd.gradcheck(fn, inputs)  # the independent verdict: correct
    report = gradcheck_cli.check_op(fn, *inputs, mode=mode)
    (check,) = report.checks
    assert report.passed, [d.message for d in check.diagnostics]
    assert "complex_as_real" in check.codes()


def test_complex64_is_checked_in_single_precision():
    z = _cz(0.5 + 1j, -1.0 + 0.25j, dtype=torch.complex64)
    report = gradcheck_cli.check_op(torch.exp, z)
    (check,) = report.checks
    assert report.passed and check.dtype == "complex64"
