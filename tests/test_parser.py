"""The expression grammar: precedence, positions, and every limit with its own message."""

from __future__ import annotations

import time

import pytest

from gradcheck_cli.errors import ParseError, UserInputError
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import FUNCTIONS
from gradcheck_cli.expr.parser import MAX_LENGTH, MAX_NESTING, MAX_NODES, MAX_TREE_DEPTH, parse, tokenize


def shape(node):
    """The IR as nested tuples without positions: ('**', 'x', 2.0), ('neg', ...), ('sin', ...)."""
    if isinstance(node, ir.Num):
        return node.value
    if isinstance(node, (ir.Name, ir.Const)):
        return node.name
    if isinstance(node, ir.Unary):
        return ("neg", shape(node.operand))
    if isinstance(node, (ir.Binary, ir.Compare)):
        return (node.op, shape(node.left), shape(node.right))
    return (node.func,) + tuple(shape(a) for a in node.args)


# ---- precedence and associativity ------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("-x**2", ("neg", ("**", "x", 2.0))),                      # -(x**2), as in Python
    ("2**-1", ("**", 2.0, ("neg", 1.0))),                      # a signed exponent
    ("2**3**2", ("**", 2.0, ("**", 3.0, 2.0))),                # right-associative
    ("x**-y**2", ("**", "x", ("neg", ("**", "y", 2.0)))),
    ("a-b-c", ("-", ("-", "a", "b"), "c")),                    # left-associative
    ("a/b/c", ("/", ("/", "a", "b"), "c")),
    ("a/b*c", ("*", ("/", "a", "b"), "c")),
    ("a+b*c", ("+", "a", ("*", "b", "c"))),
    ("(a+b)*c", ("*", ("+", "a", "b"), "c")),
    ("-(a+b)*c", ("*", ("neg", ("+", "a", "b")), "c")),
    ("-a*b", ("*", ("neg", "a"), "b")),
    ("a*-b", ("*", "a", ("neg", "b"))),
    ("--x", "x"),                                              # sign runs fold to their parity
    ("-+-x", "x"),
    ("+x", "x"),
    ("---x", ("neg", "x")),
    ("2*pi*e", ("*", ("*", 2.0, "pi"), "e")),
    ("sin(x)**2", ("**", ("sin", "x"), 2.0)),
    ("atan2(y, x**2)", ("atan2", "y", ("**", "x", 2.0))),
    ("where(x <= 1, x, -x)", ("where", ("<=", "x", 1.0), "x", ("neg", "x"))),
    ("where(x + 1 > y*2, x, y)", ("where", (">", ("+", "x", 1.0), ("*", "y", 2.0)), "x", "y")),
    (".5*x", ("*", 0.5, "x")),
    ("5.*x", ("*", 5.0, "x")),
    ("1e-3*x", ("*", 1e-3, "x")),
    ("1E+3*x", ("*", 1e3, "x")),
    ("x\t+\n1", ("+", "x", 1.0)),                              # tabs and newlines are spaces
])
def test_precedence(text, expected):
    assert shape(parse(text)) == expected


@pytest.mark.parametrize("text", ["-x**2", "2**-1", "2**3**2", "(2**3)**2", "a - (b - c)", "a/(b*c)",
                                  "-(a + b)*c", "where(x > 0, x, -x)", "(-x)**2", "x**(-y)**2"])
def test_to_source_round_trip(text):
    """Printing the IR and parsing it back gives the same tree (minimal parentheses are enough)."""
    tree = parse(text)
    assert shape(parse(ir.to_source(tree))) == shape(tree)


def test_positions_are_zero_based_offsets():
    tree = parse("sin(x) + 2*y")
    assert isinstance(tree, ir.Binary) and tree.op == "+" and tree.pos == 7
    call, product = tree.left, tree.right
    assert (call.func, call.pos) == ("sin", 0)
    assert call.args[0].pos == 4
    assert product.pos == 10 and product.left.pos == 9 and product.right.pos == 11
    assert [(t.kind, t.text, t.pos) for t in tokenize("a**b")][:3] == [("name", "a", 0), ("op", "**", 1),
                                                                       ("name", "b", 3)]


def test_names_in_order_of_first_appearance():
    assert ir.names_in(parse("w*x + b + w*exp(x)")) == ["w", "x", "b"]
    assert ir.names_in(parse("pi*e")) == []  # constants are not variables


# ---- errors: what and where -----------------------------------------------------------------------

def parse_error(text) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(text)
    assert isinstance(info.value, UserInputError)
    return info.value


def test_unclosed_call_names_the_column_with_a_caret():
    err = parse_error("sin(x")
    assert "expected ')'" in err.message
    assert "column 6" in err.message
    assert err.column == 6
    lines = err.render().splitlines()
    source_line, caret_line = lines[-2], lines[-1]
    assert source_line.strip() == "sin(x"
    # the caret sits under column 6 (one past the 'x'), in the same indentation as the source
    indent = source_line.index("sin(x")
    assert caret_line.index("^") == indent + 5 and caret_line.strip() == "^"


@pytest.mark.parametrize("text,needle,column", [
    ("sinn(x)", "unknown function 'sinn' (did you mean sin?)", 1),
    ("sigmod(x)", "did you mean sigmoid?", 1),
    ("frobnicate(x)", "unknown function 'frobnicate'", 1),
    ("x.real", "attribute access", 2),
    ("x^2", "use **", 2),
    ("clamp(x)", "clamp() takes 3 arguments", 1),
    ("sin()", "sin() takes 1 argument", 1),
    ("atan2(x)", "atan2() takes 2 arguments", 1),
    ("sin(x, y)", "got 2", 1),
    ("1e999*x", "1e999 overflows float64", 1),
    ("x + ｘ", "U+FF58", 5),
    ("x\u202e+1", "U+202E", 2),
    ("x\x1b[31m", "U+001B", 2),
    ("2x", "write multiplication as 2*x", 2),
    ("x y", "missing operator", 3),
    ("x)", "unmatched ')'", 2),
    ("(x+1", "expected ')' to close the '(' at column 1", 5),
    ("sin", "'sin' is a function: call it as sin(...)", 1),
    ("pi(x)", "'pi' is a constant, not a function", 1),
    ("lambda", "Python keyword", 1),
    ("__class__", "may not start with '__'", 1),
    ("x == 1", "'=='", 3),
    ("x != 1", "'!='", 3),
    ("x[y]", "tensor indices are not supported", 3),
    ("[1, 2]", "list literals", 1),
    ("x[1.5]", "whole-number literal", 3),
    ("x]", "unmatched ']'", 2),
    ("x[0", "expected ']' to close the '['", 4),
    ("sum(x, y)", "the dim of sum() must be a whole-number literal", 8),
    ("x.Tx", "attribute access", 2),
    ("x % 2", "'%'", 3),
    ("a @ @b", "unexpected '@'", 5),
    ("a : b", "slices are written inside brackets", 3),
    ("x; y", "one expression only", 2),
    ("'x'", "strings", 1),
    ("sin(x,)", "unexpected ')'", 7),
    ("x +", "unexpected end of expression", 4),
    ("* x", "unexpected '*'", 1),
])
def test_error_message_and_column(text, needle, column):
    err = parse_error(text)
    assert needle in err.message
    assert err.column == column
    assert f"column {column}" in err.message


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_expression(text):
    assert "empty expression" in parse_error(text).message


def test_not_text():
    with pytest.raises(ParseError, match="must be text"):
        parse(42)


# ---- comparisons only as where()'s condition ------------------------------------------------------

@pytest.mark.parametrize("text,column", [
    ("x < 1", 3),             # the whole expression
    ("(x < 1) + 2", 4),       # an operand
    ("2**(x >= 1)", 7),
    ("sin(x < 1)", 7),        # a function's argument
    ("where(x < 1, x > 2, x)", 16),  # where's other arguments
    ("where(x, 1, 2)", 7),    # where's condition must be one
])
def test_comparison_only_as_where_condition(text, column):
    err = parse_error(text)
    assert "comparison" in err.message and "argument of where(" in err.message
    assert err.column == column


def test_chained_comparison():
    assert "cannot be chained" in parse_error("x < 1 < 2").message


@pytest.mark.parametrize("text", ["where((x < 1), x, 2)", "where(x < 1, where(x > 0, x, 2), 3)"])
def test_comparison_in_where_condition_is_fine(text):
    assert isinstance(parse(text), ir.Call)


# ---- limits: each with its own message, each fast -----------------------------------------------

def _balanced_nodes() -> str:
    """More than MAX_NODES nodes, yet shallow and short: 30 groups of 100 added terms."""
    inner = "+".join(["x"] * 100)
    return "+".join([f"({inner})"] * 30)


LIMITS = [
    ("length", "x+" * (MAX_LENGTH // 2) + "x", f"expression too long ({MAX_LENGTH + 1} characters"),
    ("nesting-parens", "(" * (MAX_NESTING + 1) + "x" + ")" * (MAX_NESTING + 1), "nests too deeply"),
    ("nesting-calls", "sin(" * (MAX_NESTING + 1) + "x" + ")" * (MAX_NESTING + 1), "nests too deeply"),
    ("nesting-powers", "x" + "**x" * (MAX_NESTING + 1), "nests too deeply"),
    ("tree-depth", "+".join(["x"] * (MAX_TREE_DEPTH + 2)), "expression too deep"),
    ("node-count", _balanced_nodes(), f"expression too large (more than {MAX_NODES}"),
    ("power-tower", "9**9**9**9", "constant power 9**9**9 is too large"),
    ("nested-power", "((9**9)**9999)**9999", "constant power (9**9)**9999 is too large"),
    ("power-of-e", "e**e**e**e", "too large"),
    ("negative-base", "(-8)**(1/3)", "not a real number"),
    ("zero-to-negative", "0**-1", "divides by zero"),
]


@pytest.mark.parametrize("label,text,needle", LIMITS, ids=[x[0] for x in LIMITS])
def test_limit_is_rejected_quickly_with_its_message(label, text, needle):
    started = time.perf_counter()
    err = parse_error(text)
    assert time.perf_counter() - started < 1.0, "limits must be checked before anything expensive"
    assert needle in err.message


def test_node_count_input_is_within_the_other_limits():
    """The node-count case must not trip the length or depth limit first (else it tests nothing)."""
    text = _balanced_nodes()
    assert len(text) < MAX_LENGTH
    assert text.count("(") < MAX_NESTING
    assert 100 + 30 < MAX_TREE_DEPTH


@pytest.mark.parametrize("text", ["-" * 5000 + "x", "x" + "+x" * 250, "(" * MAX_NESTING + "x" + ")" * MAX_NESTING,
                                  "2**-1", "x**(9**9)", "10**300*x", "(-8)**3*x", "(-2)**-3*x"])
def test_just_inside_the_limits_parses(text):
    assert parse(text) is not None


@pytest.mark.parametrize("text,column", [("x + (10 @ 400)**2", 9), ("x + 2**(3 @ 4)", 11), ("(-2 @ 0.5)**2 + x", 5)])
def test_matmul_of_numbers_in_a_constant_power_is_a_shape_error(text, column):
    """A constant power's bound evaluates + - * / ** only: `@` of two numbers is no number
    (it once went to math.pow, so (10 @ 400)**2 was refused as a huge power); shape
    inference reports it, at the '@'."""
    from gradcheck_cli.expr.shapes import infer

    root = parse(text)
    with pytest.raises(UserInputError) as info:
        infer(root, {"x": ()}, text)
    assert "'@' needs tensors with at least one dimension, got shapes [] and []" in info.value.message
    assert f"at column {column}" in info.value.message


def test_long_sign_runs_do_not_recurse():
    """'-' * 5000 + 'x' is a RecursionError in ast/sympy-based parsers; here it folds to x."""
    assert shape(parse("-" * 5000 + "x")) == "x"
    assert shape(parse("-" * 5001 + "x")) == ("neg", "x")


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_parses_with_its_arity(name):
    """A call with the arity of the table parses; its literal parameters (dims, sizes, a
    slope) are read as params, not operands; one argument too many is an error naming the
    arity, and an expression where a literal belongs is an error naming the parameter."""
    spec = FUNCTIONS[name]
    args = ["x < y"] + ["x"] * (spec.arity - 1) if name == "where" else ["x"] * spec.arity
    p = spec.params
    if p is not None and not p.counts:  # reshape: at least one size
        literal = ["2", "-1"]
    elif p is not None:
        literal = ["1" if p.kind == "int" else "0.5"] * max(p.counts)
    else:
        literal = []
    call = parse(f"{name}({', '.join(args + literal)})")
    assert isinstance(call, ir.Call) and len(call.args) == spec.arity
    assert list(call.params) == [float(v) if p.kind == "number" else int(v) for v in literal]
    if spec.variadic:
        assert len(parse(f"{name}(x, y, z, 1)").args) == 3
    elif p is None or p.counts:
        err = parse_error(f"{name}({', '.join(args + literal + ['x'])})")
        assert "takes" in err.message and str(spec.arity + (max(p.counts) if p else 0)) in err.message
    if p is not None and not spec.variadic:  # (cat(x, y): y is a tensor, only a trailing integer is the dim)
        err = parse_error(f"{name}({', '.join(args + ['y'] * max(1, max(p.counts or (1,))))})")
        assert f"the {p.names[0]} of {name}() must be a" in err.message
