"""Tolerances as data, keyed by dtype (pure data: the CLI's --help reads it without numpy).

atol/rtol: how far autograd in that dtype may be from the float64 references,
elementwise: |a - r| <= atol + rtol·|r| (against finite differences, plus 3x their
error estimate).  value_rtol: how far the forward value may drift from the exact one
before `precision_loss` is reported.
"""

TOLERANCES = {
    "float64": {"atol": 1e-9, "rtol": 1e-7, "value_rtol": 1e-10},
    "float32": {"atol": 1e-5, "rtol": 1e-4, "value_rtol": 1e-4},
    "float16": {"atol": 1e-3, "rtol": 1e-2, "value_rtol": 1e-2},
    "bfloat16": {"atol": 1e-2, "rtol": 5e-2, "value_rtol": 5e-2},
}
DTYPES = tuple(TOLERANCES)
FD_SAFETY = 3.0  # multiples of the finite-difference error estimate allowed on top


def describe() -> str:
    """One line per dtype, for --help."""
    return "; ".join(f"{d}: atol {t['atol']:g}, rtol {t['rtol']:g}" for d, t in TOLERANCES.items())


FD_SCHEMES = ("auto", "central", "forward", "richardson", "complex")  # --fd
# op --mode; here beside --fd so that a spec file is validated without loading the op gate
OP_MODES = ("auto", "full", "fast")
DTYPE_EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}  # machine epsilon, the one table of it

# `gradcheck op`'s defaults: an op entry passes when |a - r| <= atol + rtol·|r| + scale·S +
# output·|f| + 3·fd_error (see op/verdict.py).  Kept here, as data, so `op --help` shows them.
OP_TOLERANCES = {  # output: 4 x the dtype's epsilon
    "float64": {"atol": 1e-12, "rtol": 1e-7, "scale": 1e-10, "output": 4 * DTYPE_EPS["float64"]},
    "float32": {"atol": 1e-6, "rtol": 1e-4, "scale": 1e-5, "output": 4 * DTYPE_EPS["float32"]},
    "float16": {"atol": 1e-3, "rtol": 1e-2, "scale": 1e-2, "output": 4 * DTYPE_EPS["float16"]},
    "bfloat16": {"atol": 1e-2, "rtol": 5e-2, "scale": 5e-2, "output": 4 * DTYPE_EPS["bfloat16"]},
}


# Low precision: besides the elementwise bound, the median of autograd / reference over the
# significant entries may be off 1 by at most this (or by 3 standard errors of it, when the
# entries scatter more): rounding scatters both ways, a systematic scale error does not.  In
# bfloat16 that catches a 2% scale error that the elementwise rtol 5e-2 lets through.
SYSTEMATIC = {"float16": 1.5 * DTYPE_EPS["float16"], "bfloat16": 1.5 * DTYPE_EPS["bfloat16"]}


def describe_op() -> str:
    """One line per dtype of `gradcheck op`'s defaults, for --help."""
    return "; ".join(f"{d}: atol {t['atol']:g}, rtol {t['rtol']:g}, scale {t['scale']:g}"
                     for d, t in OP_TOLERANCES.items())
