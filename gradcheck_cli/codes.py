"""The one registry of diagnostic codes: what each code means and its default severity.

Every diagnostic a report carries has a code listed here; the published JSON Schema
(`gradcheck schema`) takes its list of codes from this table, and the test suite fails
on any report carrying a code that is not here.  Adding a code is one line in CODES.

Severity is the truth of one report:

* ``failure``: this diagnostic failed the check (exit 1).  Where a code is raised the
  caller says whether it failed the check (op checks: ``Point.fail`` vs ``Point.note``);
  the default below is what the code means when nothing is said.
* ``warning``: the check did not fail on it, but a user should look at it.
* ``info``: what the tool did (a fallback, a sample, a rounding it allowed for).

``crash`` marks the failures that mean the check could not run to its end (the op
raised, the worker died, the check timed out): JUnit writes them as ``<error>``, not
``<failure>``.
"""

from __future__ import annotations

from typing import NamedTuple

SEVERITIES = ("failure", "warning", "info")


class Code(NamedTuple):
    severity: str  # the default: failure | warning | info
    meaning: str  # one line, for the schema and --help texts
    crash: bool = False  # the check could not finish: JUnit <error>


F, W, I = SEVERITIES  # noqa: E741  (short names keep each registry row on one line)

CODES: dict[str, Code] = {
    # -- failures: the gradient (or the op) is wrong -------------------------------------------------
    "gradient_mismatch": Code(F, "autograd is out of tolerance against the reference on some elements"),
    "hessian_mismatch": Code(F, "--order 2: the Hessian (double backward) is out of tolerance"),
    "nonfinite": Code(F, "autograd, or the forward value, is NaN or infinite where a finite number is expected"),
    "masked_nan": Code(F, "a NaN gradient from the branch where() did not take (0 * nan is nan)"),
    "scale_error": Code(F, "autograd is a constant multiple of the reference on every entry"),
    "wrong_sign": Code(F, "autograd has the opposite sign of the reference on some or all entries"),
    "broadcast_reduction": Code(F, "the backward averages where it must sum over a broadcast dimension (or "
                                   "sums once too often)"),
    "swapped_gradients": Code(F, "two inputs' gradients are each other's"),
    "missing_gradient": Code(F, "the backward returned None for an input the output depends on"),
    "gradient_leak": Code(F, "autograd puts gradient on input elements no seeded output depends on"),
    "nondeterministic": Code(F, "the op gives different results on identical inputs"),
    "input_mutated": Code(F, "the op changed an input in place"),
    "noncontiguous_grad_output": Code(F, "the backward is wrong for a non-contiguous grad_output"),
    "zero_grad_output": Code(F, "the backward gives a nonzero gradient for a zero grad_output"),
    "grad_output_ignored": Code(F, "the backward does not scale with grad_output"),
    "vjp_mismatch": Code(F, "a vector-Jacobian product disagrees with the Jacobian"),
    "one_hot_mismatch": Code(F, "a one-hot grad_output's gradient disagrees with the Jacobian's row"),
    "projection_mismatch": Code(F, "--mode fast: a random projection v^T J u disagrees with the reference"),
    "double_backward_mismatch": Code(F, "--order 2: double backward disagrees with finite differences of the "
                                        "backward"),
    "forward_mismatch": Code(F, "the op's forward differs from --reference"),
    "wrong_shape": Code(F, "the backward returned a gradient of the wrong shape"),
    "wrong_gradient_metadata": Code(F, "the backward returned a gradient of the wrong dtype or device"),
    "bad_output": Code(F, "the op returned something that is not a floating tensor or a tuple of them"),
    "jvp_mismatch": Code(F, "forward-mode AD (the op's jvp) disagrees with the Jacobian or with the backward"),
    "forward_over_reverse_mismatch": Code(F, "--order 2: forward-mode AD through the backward disagrees with "
                                             "finite differences of the backward"),
    "undefined_grad": Code(F, "the backward crashes or is wrong when some grad_outputs are undefined (None)"),
    "batched_grad_mismatch": Code(F, "the backward gives other numbers under vmap (batched grad_outputs) than "
                                     "in a plain call"),
    "fake_kernel_mismatch": Code(F, "a custom operator's fake (meta) kernel is missing or disagrees with the "
                                    "real kernel's shapes, dtypes, devices or strides"),
    "schema_violation": Code(F, "a custom operator mutates or aliases an argument its schema does not declare"),
    "autograd_not_registered": Code(F, "an operator has no autograd formula: its gradients stop or raise"),
    "compile_mismatch": Code(F, "a custom operator under torch.compile(backend='aot_eager') differs from eager"),
    # -- failures: the check could not run to its end ------------------------------------------------
    "op_error": Code(F, "the op raised (in forward, backward or a later call)", crash=True),
    "double_backward_error": Code(F, "--order 2: double backward raised or cannot run", crash=True),
    "worker_crashed": Code(F, "the worker process running the check died (its exit status or signal)", crash=True),
    "timeout": Code(F, "the check ran past its --timeout and was stopped", crash=True),
    "internal_error": Code(F, "gradcheck itself failed on this check", crash=True),
    # -- warnings: not failed, worth a look ----------------------------------------------------------
    "reference_disagreement": Code(W, "symbolic and finite differences disagree with each other"),
    "non_differentiable": Code(W, "a kink at or within a step of the point: any value between the one-sided "
                                  "slopes is accepted"),
    "precision_loss": Code(W, "the dtype's forward value is far from the exact one"),
    "bce_clamped": Code(W, "bce's clamp of p to [1e-7, 1-1e-7] is active: gradients through p are 0"),
    "warning": Code(W, "a Python warning raised while the check ran"),
    "no_dependence": Code(W, "the output does not depend on a differentiated variable: its gradient is 0"),
    "hessian_unavailable": Code(W, "--order 2 was asked for but the Hessian could not be checked"),
    "nondeterministic_within_tolerance": Code(W, "repeated backward runs differ, within tolerance"),
    "global_state_changed": Code(W, "the op changed process-wide state, which was restored"),
    "reference_low_precision": Code(W, "the op cannot run in float64: finite differences use the op's dtype"),
    "output_dtype": Code(W, "an output's dtype differs from the inputs'"),
    "output_device": Code(W, "an output's device differs from the inputs'"),
    "complex_on_real_axis": Code(W, "complex inputs with imaginary part 0 everywhere"),
    "empty_output": Code(W, "the op's output has no elements: nothing to compare"),
    # -- info: what the tool did -------------------------------------------------------------------
    "stop_gradient": Code(I, "finite differences see through detach(); the check compares with symbolic"),
    "symbolic_unavailable": Code(I, "no exact derivative: symbolic is null, the verdict rests on finite "
                                    "differences"),
    "fd_fallback": Code(I, "the finite-difference scheme asked for cannot apply; another is used"),
    "fd_sampled": Code(I, "finite differences were computed for a seeded sample of elements"),
    "input_rounded": Code(I, "the dtype cannot represent an input exactly; references use the rounded point"),
    "within_torch_tolerance": Code(I, "every failing entry is within torch.autograd.gradcheck's default "
                                      "tolerance"),
    "none_gradient_zero": Code(I, "the backward returned None, read as zeros (and zeros are right)"),
    "non_differentiable_output": Code(I, "outputs that do not require grad are not checked"),
    "nonfinite_input": Code(I, "infinite or NaN input elements are not stepped"),
    "buffer_mutated": Code(I, "a non-differentiated buffer was updated in place (like running statistics)"),
    "complex_as_real": Code(I, "complex tensors are checked as real and imaginary parts"),
    "forward_noise": Code(I, "the forward is noisy beyond rounding; finite differences allow for it"),
    "order2_sampled": Code(I, "double backward checked on a seeded sample of input elements"),
    "forward_ad_unsupported": Code(I, "the op has no forward-mode AD: JVPs were not checked"),
    "registration_checked": Code(I, "a custom operator's registration checks (as torch.library.opcheck) ran"),
}

REGISTRY_FILE = "gradcheck_cli/codes.py"


def known(code: str) -> bool:
    return code in CODES


def default_severity(code: str) -> str:
    """The registry's severity for `code` ("warning" for a code it does not know: the test
    suite fails on those, see unknown_code_message)."""
    entry = CODES.get(code)
    return entry.severity if entry is not None else W


def note_severity(code: str) -> str:
    """The severity of a diagnostic recorded as a note (it did not fail the check)."""
    severity = default_severity(code)
    return W if severity == F else severity


def is_crash(code: str) -> bool:
    entry = CODES.get(code)
    return bool(entry and entry.crash)


def unknown_code_message(code: str) -> str:
    """What the test suite says about a code the registry does not know: where to add it."""
    return (f"diagnostic code {code!r} is not in the registry: add one line to CODES in {REGISTRY_FILE}, e.g.\n"
            f"    {code!r}: Code(F, \"what it means, in one line\"),\n"
            "with F (it fails the check), W (a warning) or I (what the tool did) as its default severity")
