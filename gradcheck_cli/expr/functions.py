"""ONE table of every function the expression language knows.

Each row says, in one place: how many arguments, the torch form autograd and finite
differences evaluate, the SymPy form the symbolic engine differentiates, where the
function has kinks, and whether it is real-analytic (so complex-step differences apply).
The local derivative is written next to each row, as micrograd writes it next to each op.

Complex steps go through torch's own complex forms, or through `complex_torch` where torch
has none (expr/complex_forms.py: erf, atan2; logsumexp and norm are complex-safe in their one
form, the Reducer's).  A function that is
analytic except at a kink (norm at the zero vector, atan2 at the origin) is `analytic`
with `kinks`: at a point on its kink, finite differences fall back to richardson
(finite_diff.kinks_at).

Nothing here imports torch or sympy at import time: `gradcheck --help` must stay instant.
Builders receive the modules they need when they are called.

Kink conventions.  Where a function has no derivative (relu at 0, clamp at its bounds,
minimum(a, a)), torch picks a value: relu'(0) = 0, abs'(0) = 0, clamp passes 1 at its
bounds, minimum/maximum split 1/2 each.  The SymPy forms below are written as Piecewise
with the same strict inequalities so the symbolic column uses torch's conventions too,
while central finite differences give the two-sided average.  `KINK_CONVENTIONS` says so
in every report that meets a kink.

Structured functions (matmul, transpose, outer, reductions over a dim, softmax, the
class losses, reshape, cat, stack) move elements between positions.  Their torch forms
receive `L` (engines/torch_structured.py) and tensors laid out as (batch, *shape); their
SymPy forms receive `T` (engines/sympy_tensor.py) and numpy arrays of SymPy expressions,
one per element; `shape` (shape_rules.py) gives the result's shape or says why there is
none.  Literal parameters written after the operands (a dim, reshape's sizes,
leaky_relu's slope) are `params`: never tensors, never differentiated.

Reductions with a dim keep the reduced dimension (keepdim=True), so `x - mean(x, 1)`
broadcasts; without one they reduce to a scalar.  var and std use torch's default
correction=1 (unbiased, n - 1); max and min are torch.amax / amin (ties share the
gradient evenly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from gradcheck_cli.expr import complex_forms as CF
from gradcheck_cli.expr import ir
from gradcheck_cli.expr import shape_rules as rules

CONSTANTS = ("pi", "e")

BCE_EPS = 1e-7  # the seed notebook's clamp: p' = clamp(p, 1e-7, 1 - 1e-7)

KINK_CONVENTIONS = (
    "autograd and symbolic use torch's conventions at kinks (relu'(0)=0, abs'(0)=0, clamp passes 1 "
    "at its bounds, minimum/maximum split 1/2, where follows the branch taken; leaky_relu'(0) is its slope, "
    "hardtanh passes 0 at its bounds, max/min over ties split evenly); finite differences see the two-sided "
    "average"
)


@dataclass(frozen=True)
class Params:
    """Literal parameters written after a function's operands (dims, sizes, a slope)."""

    names: tuple  # the keywords the torch and SymPy forms receive
    counts: tuple = (0, 1)  # how many may be written; () means one or more (reshape's sizes)
    kind: str = "int"  # 'int': whole-number literals, optionally negative; 'number': any numeric literal

    def bind(self, values: tuple) -> dict:
        """The keyword arguments for the literal values as written."""
        if not self.counts:
            return {self.names[0]: tuple(values)}
        return dict(zip(self.names, values))


@dataclass(frozen=True)
class FunctionSpec:
    """One row of the table."""

    name: str
    arity: int
    kind: str  # 'elementwise' | 'reduction' | 'select' | 'stop' | 'structured'
    signature: str
    derivative: str  # the local derivative, for people (and --help)
    torch: Callable  # elementwise/select/stop: (torch, *tensors); reduction: (torch, ctx, *tensors)
    sympy: Callable  # (sp, fns, *exprs) -> per-element SymPy expression (reductions: the summand)
    reducer: Optional[str] = None  # reductions: 'sum' | 'mean' | 'prod' | 'logsumexp'
    post: Optional[Callable] = None  # reductions: (sp, r) applied to the reduced value (norm: sqrt)
    kinks: Optional[Callable] = None  # (torch, *tensors) -> signed offsets, zero exactly at a kink
    kink_text: str = ""
    analytic: bool = True  # complex-step differences give the derivative
    complex_torch: Optional[Callable] = None  # complex-safe form when torch's own lacks complex support
    domain: str = ""  # where the function is real, for messages about nan
    params: Optional[Params] = None  # literal parameters after the operands
    variadic: bool = False  # cat/stack: `arity` or more operands, then an optional integer literal (the dim)
    shape: Optional[Callable] = None  # structured: (shapes, kinds, **params) -> the result's shape
    axis: str = ""  # reductions over a dim: which one (sum, mean, prod, logsumexp, norm, amax, amin, var, std)
    index_form: str = ""  # structured: the result in index notation (for --formula)
    vjp: tuple = ()  # structured: the gradient each operand receives, from G (the result's), for --formula
    class_target: bool = False  # the second operand may hold class indices (cross_entropy, nll)

    def bound(self, node) -> dict:
        """The literal parameters of a call, as keyword arguments."""
        return self.params.bind(node.params) if self.params and node.params else {}


def structured(node) -> bool:
    """Whether a node moves elements between positions (matmul, a reduction over a dim,
    softmax, indexing, ...): such nodes are not elementwise, and the symbolic engine
    expands them element by element."""
    if isinstance(node, ir.Index):
        return True
    if isinstance(node, ir.Binary):
        return node.op == "@"
    if isinstance(node, ir.Call):
        spec = FUNCTIONS[node.func]
        return spec.kind == "structured" or bool(spec.axis and node.params)
    return False


def spec_of(node) -> FunctionSpec | None:
    """The table row a node computes with (a call's, or matmul's for '@')."""
    if isinstance(node, ir.Call):
        return FUNCTIONS[node.func]
    if isinstance(node, ir.Binary) and node.op == "@":
        return FUNCTIONS["matmul"]
    return None


def _bce_elem_torch(torch, p, y):
    """The seed notebook's loss, elementwise: -(y log p' + (1-y) log(1-p')), p' clamped."""
    pc = torch.clamp(p, BCE_EPS, 1 - BCE_EPS)
    return -(y * torch.log(pc) + (1 - y) * torch.log(1 - pc))


def _bce_elem_sympy(sp, fns, p, y):
    eps = sp.Rational(1, 10**7)
    pc = sp.Piecewise((eps, p < eps), (1 - eps, p > 1 - eps), (p, True))
    return -(y * sp.log(pc) + (1 - y) * sp.log(1 - pc))


def _bce_logits_elem_torch(torch, z, y):
    z, y = torch.broadcast_tensors(z, y)
    return torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")


def _norm_post_sympy(sp, r):
    """sqrt of the sum of squares, with torch's convention at 0: the gradient there is 0, not nan."""
    from gradcheck_cli.engines.sympy_functions import norm_sqrt

    return norm_sqrt(r)


def _norm_kink(torch, x):
    """The norm's kink is the zero vector: the offset is the largest |element| of each batch row
    (kinks are recorded on finite differences' batches, whose first dimension is the row)."""
    if x.ndim == 0:
        return (x.abs(),)
    return (x.abs().reshape(x.shape[0], -1).amax(dim=1),)


DIM = Params(("dim",))  # an optional dim (an integer literal, negative from the end)


def _row(name, arity, kind, signature, derivative, torch, sympy, **kw) -> FunctionSpec:
    return FunctionSpec(name, arity, kind, signature, derivative, torch, sympy, **kw)


def _along_dim(name, axis, signature, derivative, shape, index_form, vjp, **kw) -> FunctionSpec:
    """A structured reduction over an optional dim (max, min, var, std): one operand, DIM,
    not analytic.  The engines evaluate every row with an `axis` through L.reduce / T.reduce
    (torch_eval._structured, sympy_tensor._structured), so its torch and SymPy forms are
    those same calls."""
    return _row(name, 1, "structured", signature, derivative,
                lambda t, L, x, dim=None: L.reduce(axis, x, dim), lambda sp, T, x, dim=None: T.reduce(axis, x, dim),
                params=DIM, axis=axis, shape=shape, analytic=False, index_form=index_form, vjp=vjp, **kw)


_ROWS = [
    # ---- elementwise, one argument -------------------------------------------------------
    _row("abs", 1, "elementwise", "abs(x)", "sign(x); torch takes 0 at x = 0",
         lambda t, x: t.abs(x), lambda sp, f, x: sp.Abs(x),
         kinks=lambda t, x: (x,), kink_text="abs has a kink at 0", analytic=False),
    _row("sqrt", 1, "elementwise", "sqrt(x)", "1 / (2 sqrt(x))",
         lambda t, x: t.sqrt(x), lambda sp, f, x: sp.sqrt(x), domain="x >= 0"),
    _row("exp", 1, "elementwise", "exp(x)", "exp(x)",
         lambda t, x: t.exp(x), lambda sp, f, x: sp.exp(x)),
    _row("log", 1, "elementwise", "log(x)", "1 / x",
         lambda t, x: t.log(x), lambda sp, f, x: sp.log(x), domain="x > 0"),
    _row("log1p", 1, "elementwise", "log1p(x)", "1 / (1 + x)",
         lambda t, x: t.log1p(x), lambda sp, f, x: f.log1p(x), domain="x > -1"),
    _row("expm1", 1, "elementwise", "expm1(x)", "exp(x)",
         lambda t, x: t.expm1(x), lambda sp, f, x: f.expm1(x)),
    _row("sin", 1, "elementwise", "sin(x)", "cos(x)",
         lambda t, x: t.sin(x), lambda sp, f, x: sp.sin(x)),
    _row("cos", 1, "elementwise", "cos(x)", "-sin(x)",
         lambda t, x: t.cos(x), lambda sp, f, x: sp.cos(x)),
    _row("tan", 1, "elementwise", "tan(x)", "1 + tan(x)^2",
         lambda t, x: t.tan(x), lambda sp, f, x: sp.tan(x)),
    _row("asin", 1, "elementwise", "asin(x)", "1 / sqrt(1 - x^2)",
         lambda t, x: t.asin(x), lambda sp, f, x: sp.asin(x), domain="-1 <= x <= 1"),
    _row("acos", 1, "elementwise", "acos(x)", "-1 / sqrt(1 - x^2)",
         lambda t, x: t.acos(x), lambda sp, f, x: sp.acos(x), domain="-1 <= x <= 1"),
    _row("atan", 1, "elementwise", "atan(x)", "1 / (1 + x^2)",
         lambda t, x: t.atan(x), lambda sp, f, x: sp.atan(x)),
    _row("sinh", 1, "elementwise", "sinh(x)", "cosh(x)",
         lambda t, x: t.sinh(x), lambda sp, f, x: sp.sinh(x)),
    _row("cosh", 1, "elementwise", "cosh(x)", "sinh(x)",
         lambda t, x: t.cosh(x), lambda sp, f, x: sp.cosh(x)),
    _row("tanh", 1, "elementwise", "tanh(x)", "1 - tanh(x)^2",
         lambda t, x: t.tanh(x), lambda sp, f, x: sp.tanh(x)),
    _row("sigmoid", 1, "elementwise", "sigmoid(x)", "sigmoid(x) (1 - sigmoid(x))",
         lambda t, x: t.sigmoid(x), lambda sp, f, x: f.sigmoid(x)),
    _row("softplus", 1, "elementwise", "softplus(x)", "sigmoid(x); torch returns x itself above x = 20",
         lambda t, x: t.nn.functional.softplus(x), lambda sp, f, x: f.softplus(x),
         complex_torch=lambda t, x: t.log1p(t.exp(x))),
    _row("relu", 1, "elementwise", "relu(x)", "1 for x > 0, else 0 (torch: 0 at x = 0)",
         lambda t, x: t.relu(x), lambda sp, f, x: sp.Piecewise((x, x > 0), (0, True)),
         kinks=lambda t, x: (x,), kink_text="relu has a kink at 0", analytic=False),
    _row("erf", 1, "elementwise", "erf(x)", "2/sqrt(pi) exp(-x^2)",
         lambda t, x: t.special.erf(x), lambda sp, f, x: sp.erf(x),
         complex_torch=lambda t, x: CF.erf(t, x)),  # torch has no complex erf: its series, to third order
    _row("gelu", 1, "elementwise", "gelu(x)", "Phi(x) + x phi(x) (the exact, erf form)",
         lambda t, x: t.nn.functional.gelu(x), lambda sp, f, x: x * (1 + sp.erf(x / sp.sqrt(2))) / 2,
         analytic=False),  # analytic, but torch has no complex gelu
    _row("silu", 1, "elementwise", "silu(x)", "sigmoid(x) (1 + x (1 - sigmoid(x)))",
         lambda t, x: t.nn.functional.silu(x), lambda sp, f, x: x * f.sigmoid(x),
         complex_torch=lambda t, x: x / (1 + t.exp(-x))),
    _row("leaky_relu", 1, "elementwise", "leaky_relu(x[, slope])",
         "1 for x > 0, else the slope (default 0.01; torch takes the slope at x = 0)",
         lambda t, x, slope=0.01: t.nn.functional.leaky_relu(x, slope),
         lambda sp, f, x, slope=0.01: sp.Piecewise((x, x > 0), (f.exact(slope) * x, True)),
         kinks=lambda t, x, slope=0.01: (x,), kink_text="leaky_relu has a kink at 0", analytic=False,
         params=Params(("slope",), (0, 1), "number")),
    _row("elu", 1, "elementwise", "elu(x)", "1 for x > 0, else exp(x) (alpha 1: continuous at 0)",
         lambda t, x: t.nn.functional.elu(x), lambda sp, f, x: sp.Piecewise((x, x > 0), (f.expm1(x), True)),
         # the derivative is continuous at 0, the second is not: a stencil across 0 loses its order
         kinks=lambda t, x: (x,), kink_text="elu's second derivative jumps at 0", analytic=False),
    _row("hardtanh", 1, "elementwise", "hardtanh(x)", "1 for -1 < x < 1, else 0 (torch passes 0 at the bounds)",
         lambda t, x: t.nn.functional.hardtanh(x),
         lambda sp, f, x: sp.Piecewise((-1, x <= -1), (1, x >= 1), (x, True)),
         kinks=lambda t, x: (x + 1, x - 1), kink_text="hardtanh has kinks at -1 and 1", analytic=False),
    # ---- elementwise, several arguments --------------------------------------------------
    _row("atan2", 2, "elementwise", "atan2(y, x)", "d/dy = x/(x^2+y^2), d/dx = -y/(x^2+y^2)",
         lambda t, y, x: t.atan2(y, x), lambda sp, f, y, x: sp.atan2(y, x),
         kinks=lambda t, y, x: (t.maximum(y.abs(), x.abs()),), kink_text="atan2 has a kink at the origin",
         complex_torch=lambda t, y, x: CF.atan2(t, y, x)),  # analytic off the origin; torch has no complex atan2
    _row("minimum", 2, "elementwise", "minimum(a, b)", "1 to the smaller argument; torch splits 1/2 at a = b",
         lambda t, a, b: t.minimum(a, b),
         lambda sp, f, a, b: sp.Piecewise((a, a < b), (b, a > b), ((a + b) / 2, True)),
         kinks=lambda t, a, b: (a - b,), kink_text="minimum has a kink where a = b", analytic=False),
    _row("maximum", 2, "elementwise", "maximum(a, b)", "1 to the larger argument; torch splits 1/2 at a = b",
         lambda t, a, b: t.maximum(a, b),
         lambda sp, f, a, b: sp.Piecewise((a, a > b), (b, a < b), ((a + b) / 2, True)),
         kinks=lambda t, a, b: (a - b,), kink_text="maximum has a kink where a = b", analytic=False),
    _row("clamp", 3, "elementwise", "clamp(x, lo, hi)",
         "1 for lo <= x <= hi (torch passes 1 at the bounds), else 0; the bound taken gets 1",
         lambda t, x, lo, hi: t.clamp(x, lo, hi),
         # torch computes min(max(x, lo), hi): with lo > hi the result is hi everywhere, and
         # hi gets the gradient (clamp_backward_min_max), so that case is tested first.
         lambda sp, f, x, lo, hi: sp.Piecewise((hi, (x > hi) | (hi < lo)), (lo, x < lo), (x, True)),
         kinks=lambda t, x, lo, hi: (x - lo, x - hi), kink_text="clamp has kinks at lo and hi",
         analytic=False),
    # ---- selection and stop-gradient -------------------------------------------------------
    _row("where", 3, "select", "where(cond, a, b)", "a's derivative where cond holds, else b's",
         lambda t, cond, a, b: t.where(cond, a, b),
         lambda sp, f, cond, a, b: sp.Piecewise((a, cond), (b, True)),
         kink_text="where switches branches where its comparison's sides are equal", analytic=False),
    _row("detach", 1, "stop", "detach(e)", "0: e is treated as a constant",
         lambda t, x: x.detach(), lambda sp, f, x: f.detach(x)),
    # ---- reductions to a scalar ------------------------------------------------------------
    _row("sum", 1, "reduction", "sum(x[, dim])", "1 for every element",
         lambda t, ctx, x: ctx.sum(x), lambda sp, f, x: x, reducer="sum", params=DIM, axis="sum", shape=rules.reduce,
         index_form="sum(x, d)[..., 0, ...] = sum_k x[..., k, ...]",
         vjp=('{G} repeated along dim {dim}',)),
    _row("mean", 1, "reduction", "mean(x[, dim])", "1/N for every element",
         lambda t, ctx, x: ctx.mean(x), lambda sp, f, x: x, reducer="mean", params=DIM, axis="mean", shape=rules.reduce,
         index_form="mean(x, d)[..., 0, ...] = (1/n) sum_k x[..., k, ...]",
         vjp=('{G} / n repeated along dim {dim} (n: its size)',)),
    _row("prod", 1, "reduction", "prod(x[, dim])", "the product of the other elements",
         lambda t, ctx, x: ctx.prod(x), lambda sp, f, x: x, reducer="prod", params=DIM, axis="prod", shape=rules.reduce,
         index_form="prod(x, d)[..., 0, ...] = prod_k x[..., k, ...]",
         vjp=('{G} * prod({0}, {dim}) / {0} (the product of the others)',)),
    _row("norm", 1, "reduction", "norm(x[, dim])", "x / norm(x) (the 2-norm); torch takes 0 at x = 0",
         lambda t, ctx, x: ctx.norm(x), lambda sp, f, x: x**2, reducer="sum",
         post=_norm_post_sympy, kinks=_norm_kink, kink_text="norm has a kink where every element is 0",
         params=DIM, axis="norm", shape=rules.reduce,
         index_form="norm(x, d)[..., 0, ...] = sqrt(sum_k x[..., k, ...]^2)",
         vjp=('{G} * {0} / norm({0}, {dim})',)),
    _row("logsumexp", 1, "reduction", "logsumexp(x[, dim])", "softmax(x)",
         lambda t, ctx, x: ctx.logsumexp(x), lambda sp, f, x: x, reducer="logsumexp",
         params=DIM, axis="logsumexp", shape=rules.reduce,
         index_form="logsumexp(x, d)[..., 0, ...] = log sum_k exp(x[..., k, ...])",
         vjp=('{G} * softmax({0}, {dim})',)),
    _row("dot", 2, "reduction", "dot(a, b)", "d/da = b, d/db = a",
         lambda t, ctx, a, b: ctx.dot(a, b), lambda sp, f, a, b: a * b, reducer="sum"),
    # ---- losses (mean over elements) -------------------------------------------------------
    _row("bce", 2, "reduction", "bce(p, y)",
         "(p' - y) / (p' (1 - p')) / N inside the clamp, 0 outside (p' = clamp(p, 1e-7, 1-1e-7))",
         lambda t, ctx, p, y: ctx.mean(_bce_elem_torch(t, p, y)), _bce_elem_sympy, reducer="mean",
         kinks=lambda t, p, y: (p - BCE_EPS, p - (1 - BCE_EPS)),
         kink_text="bce clamps p to [1e-7, 1-1e-7] and has kinks there", analytic=False),
    _row("bce_logits", 2, "reduction", "bce_logits(z, y)", "(sigmoid(z) - y) / N",
         lambda t, ctx, z, y: ctx.mean(_bce_logits_elem_torch(t, z, y)),
         lambda sp, f, z, y: sp.Max(z, 0) - z * y + f.log1p(sp.exp(-sp.Abs(z))), reducer="mean",
         complex_torch=lambda t, ctx, z, y: ctx.mean((1 - y) * z + t.log1p(t.exp(-z)))),
    _row("mse", 2, "reduction", "mse(a, b)", "d/da = 2 (a - b) / N",
         lambda t, ctx, a, b: ctx.mean((a - b) ** 2), lambda sp, f, a, b: (a - b) ** 2, reducer="mean"),
    # ---- structured: elements move between positions (T: sympy_tensor, L: torch_structured) ----
    _row("matmul", 2, "structured", "A @ B or matmul(A, B)",
         "d/dA = G @ B^T, d/dB = A^T @ G (G: the gradient of the result; vectors promoted as torch.matmul does)",
         lambda t, L, a, b: L.matmul(a, b), lambda sp, T, a, b: T.matmul(a, b), shape=rules.matmul,
         index_form="(A @ B)[..., i, j] = sum_k A[..., i, k] B[..., k, j]",
         vjp=('{G} @ {1}^T', '{0}^T @ {G}')),
    _row("transpose", 1, "structured", "transpose(x[, dim0, dim1]) or x.T",
         "the gradient transposed back (the last two dims unless dims are given; 0-d and 1-d: identity)",
         lambda t, L, x, dim0=-2, dim1=-1: L.transpose(x, dim0, dim1),
         lambda sp, T, x, dim0=-2, dim1=-1: T.transpose(x, dim0, dim1),
         params=Params(("dim0", "dim1"), (0, 2)), shape=rules.transpose,
         index_form="x.T[..., i, j] = x[..., j, i]",
         vjp=('transpose({G})',)),
    _row("outer", 2, "structured", "outer(a, b)", "d/da_i = sum_j G_ij b_j, d/db_j = sum_i G_ij a_i",
         lambda t, L, a, b: L.outer(a, b), lambda sp, T, a, b: T.outer(a, b), shape=rules.outer,
         index_form="outer(a, b)[i, j] = a[i] b[j]",
         vjp=('{G} @ {1}', '{G}^T @ {0}')),
    _along_dim("max", "amax", "max(x[, dim])",
               "1/k to each of the k elements that attain the maximum (torch.amax), 0 to the others", rules.reduce,
               "max(x, d)[..., 0, ...] = max_k x[..., k, ...]",
               ('{G} split evenly among the maxima of {0} along dim {dim}',),
               kink_text="max has a kink where elements tie for the maximum"),
    _along_dim("min", "amin", "min(x[, dim])",
               "1/k to each of the k elements that attain the minimum (torch.amin), 0 to the others", rules.reduce,
               "min(x, d)[..., 0, ...] = min_k x[..., k, ...]",
               ('{G} split evenly among the minima of {0} along dim {dim}',),
               kink_text="min has a kink where elements tie for the minimum"),
    _along_dim("var", "var", "var(x[, dim])", "2 (x - mean) / (n - 1)  (torch's correction=1, unbiased)",
               rules.variance, "var(x, d)[..., 0, ...] = sum_k (x[..., k, ...] - mean)^2 / (n - 1)",
               ('{G} * 2 ({0} - mean({0}, {dim})) / (n - 1)',)),
    _along_dim("std", "std", "std(x[, dim])", "(x - mean) / ((n - 1) std)  (torch's correction=1, unbiased)",
               rules.variance, "std(x, d)[..., 0, ...] = sqrt(var(x, d))",
               ('{G} * ({0} - mean({0}, {dim})) / ((n - 1) std({0}, {dim}))',)),
    _row("softmax", 1, "structured", "softmax(x[, dim])", "s * (G - sum_k G_k s_k) along dim (s: the softmax)",
         lambda t, L, x, dim=-1: L.softmax(x, dim), lambda sp, T, x, dim=-1: T.softmax(x, dim),
         params=DIM, shape=rules.along, analytic=False,
         index_form="softmax(x, d)[..., j, ...] = exp(x[..., j, ...]) / sum_k exp(x[..., k, ...])",
         vjp=('s * ({G} - sum({G} * s, {dim})), s = softmax({0}, {dim})',)),
    _row("log_softmax", 1, "structured", "log_softmax(x[, dim])", "G - softmax(x) sum_k G_k along dim",
         lambda t, L, x, dim=-1: L.log_softmax(x, dim), lambda sp, T, x, dim=-1: T.log_softmax(x, dim),
         params=DIM, shape=rules.along, analytic=False,
         index_form="log_softmax(x, d)[..., j, ...] = x[..., j, ...] - log sum_k exp(x[..., k, ...])",
         vjp=('{G} - softmax({0}, {dim}) * sum({G}, {dim})',)),
    _row("cross_entropy", 2, "structured", "cross_entropy(logits, target)",
         "(softmax(logits) - onehot(target)) / N, or (softmax(logits) - p) / N for probabilities p "
         "(d/dp = -log_softmax(logits) / N)",
         lambda t, L, z, y: L.cross_entropy(z, y), lambda sp, T, z, y: T.cross_entropy(z, y),
         shape=rules.cross_entropy, analytic=False, class_target=True,
         index_form="cross_entropy(z, y) = (1/N) sum_i (logsumexp_c z[i, c] - z[i, y[i]])",
         vjp=('{G} * (softmax({0}) - t) / N, t = onehot({1}) (class indices) or {1} (probabilities)',
              '{G} * -log_softmax({0}) / N (probabilities only)')),
    _row("nll", 2, "structured", "nll(logp, target)", "-onehot(target) / N (torch's nll_loss, mean)",
         lambda t, L, lp, y: L.nll(lp, y), lambda sp, T, lp, y: T.nll(lp, y), shape=rules.nll, analytic=False,
         class_target=True,
         index_form="nll(logp, y) = -(1/N) sum_i logp[i, y[i]]",
         vjp=('{G} * -onehot({1}) / N',)),
    _row("reshape", 1, "structured", "reshape(x, d0, d1, ...)", "the gradient reshaped back",
         lambda t, L, x, sizes: L.reshape(x, sizes), lambda sp, T, x, sizes: T.reshape(x, sizes),
         params=Params(("sizes",), ()), shape=rules.reshape,
         index_form="row-major order is kept",
         vjp=('{G} reshaped back to the shape of {0}',)),
    _row("cat", 1, "structured", "cat(t1, ..., tk[, dim])", "each input gets its slice of the gradient",
         lambda t, L, *xs, dim=0: L.cat(xs, dim), lambda sp, T, *xs, dim=0: T.cat(xs, dim),
         params=DIM, variadic=True, shape=rules.cat,
         index_form="the inputs one after another along dim",
         vjp=('the slice of {G} that {0} fills',)),
    _row("stack", 1, "structured", "stack(t1, ..., tk[, dim])", "each input gets its slice of the gradient",
         lambda t, L, *xs, dim=0: L.stack(xs, dim), lambda sp, T, *xs, dim=0: T.stack(xs, dim),
         params=DIM, variadic=True, shape=rules.stack,
         index_form="stack(...)[..., k, ...] = t_k[...]",
         vjp=('{G} taken at the position of {0}',)),
]

FUNCTIONS: dict[str, FunctionSpec] = {row.name: row for row in _ROWS}
