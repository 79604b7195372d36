"""Property tests over the expression grammar (Hypothesis, derandomized for CI).

* Random expressions built from THE function table (every function, its real arity,
  `where` with a comparison first) always parse, print back to text that parses to
  the same expression, and have autograd and exact symbolic gradients that agree
  wherever both are finite (kinks and non-finite points skipped).
* Random byte strings, decoded as latin-1 or as UTF-8 with replacement, and random
  strings over the grammar's own characters, never make the parser raise anything but
  ParseError (the project's UserInputError), and never take long.
"""

from __future__ import annotations

import time

import numpy as np
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gradcheck_cli.errors import ParseError, UserInputError
from gradcheck_cli.expr import ir, parse
from gradcheck_cli.expr.functions import CONSTANTS, FUNCTIONS

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])

VARIABLES = ("x", "y")
COMPARISONS = ("<", "<=", ">", ">=")
# Numbers as users write them: integers, decimals, exponents, leading dot.
NUMBERS = ("0", "2", "0.5", "3.25", "1e-3", ".75", "10", "1.5E1")


def _call(name: str, args: list[str]) -> str:
    return f"{name}({', '.join(args)})"


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One grammar production on top of sub-expressions: an operator, a sign, a power,
    or a call of any function in the table with exactly its arity."""
    calls = []
    for name, spec in sorted(FUNCTIONS.items()):
        if spec.kind == "structured":  # shapes move: TENSOR_EXPRESSIONS below builds them shape by shape
            continue
        if name == "where":
            calls.append(st.tuples(children, st.sampled_from(COMPARISONS), children, children, children).map(
                lambda t: f"where({t[0]} {t[1]} {t[2]}, {t[3]}, {t[4]})"))
        else:
            calls.append(st.lists(children, min_size=spec.arity, max_size=spec.arity).map(
                lambda args, name=name: _call(name, args)))
    return st.one_of(
        st.tuples(children, st.sampled_from(("+", "-", "*", "/")), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(children, st.sampled_from(("2", "3", "0.5", "-1", "y"))).map(lambda t: f"({t[0]})**{t[1]}"),
        st.tuples(st.sampled_from(("-", "+", "--")), children).map(lambda t: f"{t[0]}({t[1]})"),
        *calls,
    )


# Variables drawn twice as often as numbers and constants, so few expressions are constant.
LEAVES = st.one_of(st.sampled_from(VARIABLES), st.sampled_from(VARIABLES), st.sampled_from(NUMBERS + CONSTANTS))
EXPRESSIONS = st.recursive(LEAVES, _extend, max_leaves=7)


# -- parsing -------------------------------------------------------------------------------


@settings(max_examples=200, **SETTINGS)
@given(EXPRESSIONS)
@example("where(x < y, sqrt(x), log1p(y))")
@example("-x**2 + --y")
def test_generated_expressions_parse_and_print_back(text):
    """Every expression the grammar generates parses, and its printed form is a fixed
    point: printing and re-parsing changes nothing more (sign runs fold once)."""
    root = parse(text)
    printed = ir.to_source(root)
    again = ir.to_source(parse(printed))
    assert ir.to_source(parse(again)) == again
    assert set(ir.names_in(parse(printed))) == set(ir.names_in(root))
    assert ir.calls_in(parse(printed)) == ir.calls_in(root)


def _parse_only_own_errors(text: str) -> None:
    started = time.perf_counter()
    try:
        parse(text)
    except ParseError as err:
        assert isinstance(err, UserInputError) and err.exit_code == 2
        assert err.message.strip()
        rendered = err.render()  # the message the CLI prints must render, too
        assert rendered.isascii() and "\x1b" not in rendered
    assert time.perf_counter() - started < 1.0


@settings(max_examples=200, **SETTINGS)
@given(st.binary(max_size=300), st.sampled_from(("latin-1", "utf-8")))
@example(b"__import__('os').system('id')", "latin-1")
@example("x\u202e+1".encode("utf-8"), "utf-8")
@example(b"\xef\xbd\x98+1", "utf-8")  # fullwidth x
def test_random_bytes_only_raise_parse_error(data, encoding):
    _parse_only_own_errors(data.decode(encoding, errors="replace"))


GRAMMAR_CHARS = "xy()+-*/,<>=.^[]:@T_ 0123456789eE" + "".join(sorted(set("".join(FUNCTIONS))))


@settings(max_examples=200, **SETTINGS)
@given(st.text(alphabet=GRAMMAR_CHARS, max_size=80))
@example("(" * 150 + "x" + ")" * 150)
@example("x**" * 120 + "x")
@example("9**9**9**9")
@example("x[" * 30 + "0" + "]" * 30)
@example("x" + "[0]" * 400)
@example("x.T" * 400)
@example("reshape(x, " + "9" * 40 + ")")
@example("x[1:2:3:4]")
@example("x[:, :, ::]")
def test_near_grammar_strings_only_raise_parse_error(text):
    """Strings over the grammar's own alphabet hit far more parser paths than raw bytes."""
    _parse_only_own_errors(text)


# -- autograd against symbolic ------------------------------------------------------------


def _both_finite_agree(auto, sym) -> tuple[bool, str]:
    a = np.asarray(auto, dtype=np.float64)
    s = np.asarray(sym, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(s)
    # float64 autograd against the exact derivative: a few hundred ulps of the larger
    # magnitude, plus an absolute floor for results that cancel to (almost) zero.
    scale = np.maximum(np.abs(a), np.abs(s))
    ok = ~both | (np.abs(a - s) <= 1e-7 * scale + 1e-9)
    return bool(ok.all()), f"autograd {a[~ok]} vs symbolic {s[~ok]}"


SKIP_CODES = {"non_differentiable", "masked_nan", "symbolic_unavailable", "nonfinite"}
TIE = 1e-9


def _on_a_tie(root, point: dict) -> bool:
    """Whether the point sits on (or within TIE of) a place where a function switches
    branches: a kink of the function table (relu at 0, minimum(a, a), clamp at a bound),
    a where() comparison with equal sides, or clamp with lo = hi (torch's backward gives
    every argument 0 there, so clamp(y, x, x) has autograd 0 against the true 1).  Found
    here from the function table itself, independently of gradcheck's own detection."""
    import torch

    from gradcheck_cli.engines.torch_eval import evaluate

    inputs = {k: torch.tensor(v, dtype=torch.float64) for k, v in point.items()}

    def value(node):
        return evaluate(node, inputs, torch, dtype=torch.float64)

    for node in ir.preorder(root):
        offsets = []
        if isinstance(node, ir.Compare):
            offsets.append(value(node.left) - value(node.right))
        elif isinstance(node, ir.Call) and FUNCTIONS[node.func].kinks is not None:
            args = [value(a) for a in node.args]
            offsets.extend(FUNCTIONS[node.func].kinks(torch, *args))
            if node.func == "clamp":
                offsets.append(args[1] - args[2])
        for off in offsets:
            off = torch.as_tensor(off)
            if bool(torch.any(torch.isnan(off) | (off.abs() <= TIE))):
                return True
    return False


# Points away from subnormals (where x**2 underflows and the exact formula loses its
# meaning), with 0 itself kept: kinks there are skipped through their diagnostic.
COORDINATES = st.one_of(st.just(0.0), st.floats(1e-4, 3), st.floats(-3, -1e-4))


@settings(max_examples=100, **SETTINGS)
@given(EXPRESSIONS, COORDINATES, COORDINATES)
@example("where(x > y, x*y, sin(x))", 0.7, -0.2)
@example("bce(sigmoid(x), 0.25) + mse(x, y)", 0.3, 1.1)
@example("x/(y - y) + x", 0.5, 0.25)
@example("clamp(x, 2, x)", 0.0, 0.0)  # lo > hi: torch returns hi, and hi gets the gradient
@example("clamp(y, x, 1) * clamp(x, y, -1)", 0.5, -0.25)
def test_autograd_and_symbolic_agree(text, x, y):
    from gradcheck_cli.checker import check_expression

    root = parse(text)
    names = ir.names_in(root)
    assume(names)
    at = {"x": x, "y": y}
    assume(not _on_a_tie(root, {n: at[n] for n in names}))
    try:
        report = check_expression(text, {n: at[n] for n in names}, symbolic_budget=10.0)
    except UserInputError:  # e.g. shapes (dot of scalars is fine; nothing else should be)
        assume(False)
    (check,) = report.checks
    codes = check.codes()
    assume(not (codes & SKIP_CODES))
    value = np.asarray(check.value["torch"], dtype=np.float64)
    assume(np.all(np.isfinite(value)) and np.all(np.abs(value) < 1e8))
    for g in check.gradients:
        assert g.symbolic is not None, f"{text}: symbolic missing without a diagnostic ({codes})"
        ok, detail = _both_finite_agree(g.autograd, g.symbolic)
        assert ok, f"{text} at x={x!r}, y={y!r}: d/d{g.wrt}: {detail}"


# -- tensor expressions: structured functions, shape by shape --------------------------------------

TENSORS = {"X": (2, 3), "v": (3,), "w": (2,)}
UNARY = ("tanh", "sigmoid", "sin", "exp", "softplus", "gelu", "silu", "elu", "hardtanh", "relu", "abs")


def _shape_of(np_expr):
    return tuple(np_expr.shape)


def _binary(pair):
    (a, sa), op, (b, sb) = pair
    try:
        return f"({a} {op} {b})", tuple(np.broadcast_shapes(sa, sb))
    except ValueError:
        return None


def _matmul(pair):
    (a, sa), (b, sb) = pair
    if not sa or not sb:
        return None
    try:
        return f"({a} @ {b})", tuple(np.matmul(np.zeros(sa), np.zeros(sb)).shape)
    except ValueError:
        return None


def _along(t):
    (a, sa), func, k = t
    d = k % len(sa) - (len(sa) if k < 0 else 0)  # a dim in range, sometimes negative
    keep = sa if func in ("softmax", "log_softmax") else sa[:d % len(sa)] + (1,) + sa[d % len(sa) + 1:]
    if func in ("var", "std") and sa[d % len(sa)] < 2:
        return None
    return f"{func}({a}, {d})", keep


def _index(t):
    (a, sa), i = t
    return f"({a})[{i % sa[0]}]", sa[1:]


def _slice(t):
    (a, sa), i = t
    start = i % sa[-1]
    return f"({a})[{', '.join([':'] * (len(sa) - 1) + [f'{start}:'])}]", sa[:-1] + (sa[-1] - start,)


def _tensor_extend(children):
    ranked = children.filter(lambda c: len(c[1]) >= 1)
    return st.one_of(
        st.tuples(st.sampled_from(UNARY), children).map(lambda t: (f"{t[0]}({t[1][0]})", t[1][1])),
        st.tuples(children, st.sampled_from("+-*"), children).map(_binary).filter(bool),
        st.tuples(children, children).map(_matmul).filter(bool),
        children.map(lambda c: (f"transpose({c[0]})", c[1][:-2] + c[1][::-1][:2] if len(c[1]) >= 2 else c[1])),
        st.tuples(ranked, st.sampled_from(("sum", "mean", "max", "min", "logsumexp", "var", "norm", "softmax",
                                           "log_softmax", "prod")), st.integers(-2, 2)).map(_along).filter(bool),
        st.tuples(ranked, st.integers(0, 5)).map(_index),
        st.tuples(ranked, st.integers(0, 5)).map(_slice).filter(lambda c: c[1][-1:] != (0,)),
        ranked.map(lambda c: (f"reshape({c[0]}, -1)", (int(np.prod(c[1])),))),
        st.tuples(ranked, st.integers(0, 1)).map(
            lambda t: (f"cat({t[0][0]}, {t[0][0]}, {t[1] % len(t[0][1])})",
                       tuple(2 * n if k == t[1] % len(t[0][1]) else n for k, n in enumerate(t[0][1])))),
        st.tuples(children, st.integers(0, 1)).map(
            lambda t: (f"stack({t[0][0]}, {t[0][0]}, {t[1] % (len(t[0][1]) + 1)})",
                       t[0][1][:t[1] % (len(t[0][1]) + 1)] + (2,) + t[0][1][t[1] % (len(t[0][1]) + 1):])),
    )


TENSOR_EXPRESSIONS = st.recursive(st.sampled_from([(k, v) for k, v in TENSORS.items()] + [("2", ())]),
                                  _tensor_extend, max_leaves=4).filter(lambda c: int(np.prod(c[1])) <= 64)
TENSOR_VALUES = {"X": [[0.5, -1.25, 2.0], [0.75, 1.5, -0.4]], "v": [0.3, -0.8, 1.1], "w": [1.3, -0.6]}


@settings(max_examples=40, **SETTINGS)
@given(TENSOR_EXPRESSIONS)
@example(("softmax((X @ v) * w, 0)", (2,)))
@example(("(X - mean(X, 1)) / sqrt(var(X, 1) + 1e-5)", (2, 3)))
@example(("cat(X, X, 1)[1, 2:5] @ reshape(stack(v, v, 1), -1)[1:4]", ()))
def test_tensor_expressions_agree_and_shapes_follow_torch(case):
    """Random tensor expressions: the shape gradcheck infers is numpy's/torch's, autograd and
    the exact symbolic model agree wherever both are finite, and the text prints back to
    itself."""
    from gradcheck_cli.checker import check_expression

    text, shape = case
    root = parse(text)
    assert ir.to_source(parse(ir.to_source(root))) == ir.to_source(root)
    names = ir.names_in(root)
    assume(names)
    report = check_expression(text, {n: TENSOR_VALUES[n] for n in names})
    (check,) = report.checks
    assert tuple(np.shape(check.value["torch"])) == shape
    codes = check.codes()
    assume(not (codes & {"non_differentiable", "masked_nan", "nonfinite"}))
    assert "symbolic_unavailable" not in codes, [d.message for d in check.diagnostics]
    for g in check.gradients:
        ok, detail = _both_finite_agree(g.autograd, g.symbolic)
        assert ok, f"{text}: d/d{g.wrt}: {detail}"
