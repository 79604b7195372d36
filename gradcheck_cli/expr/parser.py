"""The project's own grammar: a tokenizer and a precedence-climbing parser.

User text never reaches Python's `eval`, `ast` or SymPy's `sympify`: it is read here,
character by character, into the IR of `ir.py`.  The grammar (lowest binding first):

    expr    := arith [('<' | '<=' | '>' | '>=') arith]      comparisons only inside where()
    arith   := term (('+' | '-') term)*
    term    := unary (('*' | '/' | '@') unary)*                '@' is matmul, as in Python
    unary   := ('-' | '+')* power                            -x**2 is -(x**2), as in Python
    power   := postfix ['**' unary]                          right-associative
    postfix := primary ('[' item (',' item)* ']' | '.T')*     constant indices; .T transposes
    item    := INT | [INT] ':' [INT] [':' [INT]]             INT: a whole-number literal, '-' allowed
    primary := NUMBER | NAME | NAME '(' expr (',' expr)* ')' | '(' expr ')'

A function's literal parameters (a dim, reshape's sizes, leaky_relu's slope) are written
as its last arguments and must be literals: `sum(x, 1)`, `softmax(x, -1)`,
`reshape(x, 2, -1)`, `cat(a, b, 1)` (cat and stack take a trailing integer literal as the
dim).  `.T` is the only attribute the grammar knows.

Every limit is checked before Python's own stack or memory could run out, and each
has a message of its own.
"""

from __future__ import annotations

import difflib
import keyword
import math
import operator

from gradcheck_cli.errors import ParseError
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import CONSTANTS, FUNCTIONS
from gradcheck_cli.expr.tokens import INT, WHITESPACE, Token, tokenize  # noqa: F401  (tokenize re-exported)

MAX_LENGTH = 10_000  # characters
MAX_NESTING = 100  # parentheses, calls and exponents inside each other
MAX_TREE_DEPTH = 300  # operations applied on top of each other (a+b+c+... counts one per '+')
MAX_NODES = 5_000
MAX_CONSTANT_MAGNITUDE = 1e300  # a constant power above this is rejected, not computed
MAX_INT_DIGITS = 15  # an index, dim or size literal longer than this is out of any range

class _Parser:
    def __init__(self, source: str, tokens: list[Token]):
        self.source = source
        self.tokens = tokens
        self.i = 0
        self.nesting = 0
        self.nodes = 0
        self.depth: dict[int, int] = {}  # id(node) -> height of its subtree
        self.last_item_pos = 0  # where the index item being read starts

    # -- helpers -------------------------------------------------------------
    def error(self, message: str, pos: int) -> ParseError:
        return ParseError(f"{message} at column {pos + 1}", source=self.source, column=pos + 1)

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def expect(self, op: str, opened_at: int | None = None, opener: str = "(") -> Token:
        if self.at_op(op):
            return self.take()
        found = "the end of the expression" if self.tok.kind == "end" else f"'{self.tok.text}'"
        extra = f" to close the '{opener}' at column {opened_at + 1}" if opened_at is not None else ""
        raise self.error(f"expected '{op}'{extra}, found {found}", self.tok.pos)

    def make(self, node: ir.Node) -> ir.Node:
        """Count the node and its height, enforcing the size limits."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.error(f"expression too large (more than {MAX_NODES} operations and operands)", node.pos)
        height = 1 + max((self.depth[id(c)] for c in ir.children(node)), default=0)
        if height > MAX_TREE_DEPTH:
            raise self.error(f"expression too deep (more than {MAX_TREE_DEPTH} operations applied on top "
                             "of each other); split long sums with sum(...) over a tensor", node.pos)
        self.depth[id(node)] = height
        return node

    def enter(self, pos: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise self.error(f"expression nests too deeply (more than {MAX_NESTING} levels)", pos)

    # -- grammar -------------------------------------------------------------
    def parse(self) -> ir.Node:
        if self.tok.kind == "end":
            raise ParseError("empty expression", source=self.source, column=1)
        node = self.expr()
        if self.tok.kind != "end":
            tok = self.tok
            if tok.kind == "op" and tok.text in (")", "]"):
                raise self.error(f"unmatched '{tok.text}'", tok.pos)
            if tok.kind == "op" and tok.text in ("<", "<=", ">", ">="):
                raise self.error("comparisons cannot be chained", tok.pos)
            raise self.error(f"unexpected '{tok.text}' (missing operator?)", tok.pos)
        return node

    def expr(self) -> ir.Node:
        left = self.arith()
        if self.at_op("<", "<=", ">", ">="):
            op = self.take()
            right = self.arith()
            return self.make(ir.Compare(op.text, left, right, op.pos))
        return left

    def arith(self) -> ir.Node:
        node = self.term()
        while self.at_op("+", "-"):
            op = self.take()
            node = self.make(ir.Binary(op.text, node, self.term(), op.pos))
        return node

    def term(self) -> ir.Node:
        node = self.unary()
        while self.at_op("*", "/", "@"):
            op = self.take()
            node = self.make(ir.Binary(op.text, node, self.unary(), op.pos))
        return node

    def unary(self) -> ir.Node:
        signs: list[Token] = []
        while self.at_op("-", "+"):
            signs.append(self.take())
        node = self.power()
        # A run of signs folds to its parity: '--x' is x, '-+-x' is x.  The value and every
        # derivative are the same; only the IR stays shallow.
        if sum(1 for s in signs if s.text == "-") % 2:
            node = self.make(ir.Unary("-", node, signs[0].pos))
        return node

    def power(self) -> ir.Node:
        base = self.postfix()
        if self.at_op("**"):
            op = self.take()
            self.enter(op.pos)
            exponent = self.unary()
            self.nesting -= 1
            node = self.make(ir.Binary("**", base, exponent, op.pos))
            self.check_constant_power(node)
            return node
        return base

    def postfix(self) -> ir.Node:
        node = self.primary()
        while self.at_op("[", ".T"):
            tok = self.take()
            if tok.text == ".T":
                node = self.make(ir.Call("transpose", (node,), tok.pos))
                continue
            self.enter(tok.pos)
            items, positions = [self.index_item()], []
            positions.append(self.last_item_pos)
            while self.at_op(","):
                self.take()
                items.append(self.index_item())
                positions.append(self.last_item_pos)
            self.expect("]", opened_at=tok.pos, opener="[")
            self.nesting -= 1
            node = self.make(ir.Index(node, tuple(items), tok.pos, tuple(positions)))
        return node

    def int_literal(self, what: str) -> int | None:
        """An optional whole-number literal (a '-' or '+' sign allowed); None when there is none."""
        start = self.tok
        sign = 1
        if self.at_op("-", "+"):
            sign = -1 if self.take().text == "-" else 1
        tok = self.tok
        if tok.kind != "num":
            if start is not tok:
                raise self.error(f"{what} must be a whole-number literal", tok.pos)
            return None
        if not INT.fullmatch(tok.text):
            raise self.error(f"{what} must be a whole-number literal, got {tok.text}", tok.pos)
        if len(tok.text) > MAX_INT_DIGITS:
            raise self.error(f"{what} {tok.text[:20]}... is too large", tok.pos)
        self.take()
        return sign * int(tok.text)

    def index_item(self):
        """One item inside [...]: an integer literal, or a slice start:stop:step."""
        self.last_item_pos = self.tok.pos
        what = "an index"
        start = self.int_literal(what)
        if not self.at_op(":"):
            if start is None:
                raise self.error("an index must be a whole-number literal (x[0], x[-1]) or a slice (x[1:3], x[:, 0]); "
                                 "tensor indices are not supported", self.tok.pos)
            return start
        self.take()
        stop = self.int_literal("a slice bound")
        step = None
        if self.at_op(":"):
            self.take()
            step = self.int_literal("a slice step")
        return ir.Slice(start, stop, step)

    def primary(self) -> ir.Node:
        tok = self.tok
        if tok.kind == "num":
            self.take()
            value = float(tok.text)
            if math.isinf(value):
                raise self.error(f"number {tok.text} overflows float64", tok.pos)
            return self.make(ir.Num(value, tok.text, tok.pos))
        if tok.kind == "name":
            self.take()
            return self.name_or_call(tok)
        if self.at_op("("):
            self.take()
            self.enter(tok.pos)
            node = self.expr()
            self.expect(")", opened_at=tok.pos)
            self.nesting -= 1
            return node
        if tok.kind == "end":
            raise self.error("unexpected end of expression", tok.pos)
        if self.at_op("["):
            raise self.error("list literals are not part of expressions: give tensors with --at NAME=[...]", tok.pos)
        raise self.error(f"unexpected '{tok.text}'", tok.pos)

    def name_or_call(self, tok: Token) -> ir.Node:
        name = tok.text
        if keyword.iskeyword(name) or name in ("print", "exec", "eval", "open", "import"):
            raise self.error(f"'{name}' is a Python keyword or builtin, not part of the expression language",
                             tok.pos)
        if name.startswith("__"):
            raise self.error(f"names may not start with '__' ('{name}')", tok.pos)
        if not self.at_op("("):
            if name in CONSTANTS:
                return self.make(ir.Const(name, tok.pos))
            if name in FUNCTIONS:
                raise self.error(f"'{name}' is a function: call it as {name}(...)", tok.pos)
            return self.make(ir.Name(name, tok.pos))
        if name not in FUNCTIONS:
            close = difflib.get_close_matches(name, list(FUNCTIONS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            if name in CONSTANTS:
                raise self.error(f"'{name}' is a constant, not a function", tok.pos)
            raise self.error(f"unknown function '{name}'{hint}", tok.pos)
        open_tok = self.take()
        self.enter(open_tok.pos)
        args: list[ir.Node] = []
        if not self.at_op(")"):
            args.append(self.expr())
            while self.at_op(","):
                self.take()
                args.append(self.expr())
        self.expect(")", opened_at=open_tok.pos)
        self.nesting -= 1
        args, params = self.split_params(name, args, tok)
        for k, arg in enumerate(args):
            is_cmp = isinstance(arg, ir.Compare)
            if name == "where" and k == 0 and not is_cmp:
                raise self.error("the first argument of where() must be a comparison (a < b, <=, >, >=)",
                                 getattr(arg, "pos", tok.pos))
            if is_cmp and not (name == "where" and k == 0):
                raise self.error("a comparison is only allowed as the first argument of where()", arg.pos)
        return self.make(ir.Call(name, tuple(args), tok.pos, params))

    def split_params(self, name: str, args: list, tok: Token) -> tuple[list, tuple]:
        """Separate a call's operands from its literal parameters (dims, sizes, a slope)."""
        spec = FUNCTIONS[name]
        p = spec.params
        if spec.variadic:  # cat(a, b, 1): a trailing integer literal is the dim
            n = len(args) - (1 if len(args) > 1 and _int_value(args[-1]) is not None else 0)
            if n < spec.arity:
                raise self.error(f"{name}() needs at least {spec.arity} tensor ({spec.signature})", tok.pos)
        elif p is not None and not p.counts:  # reshape(x, 2, 3): every size after the operand
            n = spec.arity
            if len(args) <= n:
                raise self.error(f"{name}() takes {n} operand and at least one size ({spec.signature}), "
                                 f"got {len(args)} argument{'s' if len(args) != 1 else ''}", tok.pos)
        else:
            allowed = sorted(spec.arity + c for c in (p.counts if p else (0,)))
            if len(args) not in allowed:
                counts = " or ".join(map(str, allowed))
                raise self.error(f"{name}() takes {counts} argument{'s' if allowed != [1] else ''} "
                                 f"({spec.signature}), got {len(args)}", tok.pos)
            n = spec.arity
        params = []
        for k, arg in enumerate(args[n:]):
            label = p.names[min(k, len(p.names) - 1)]
            value = _int_value(arg) if p.kind == "int" else _number_value(arg)
            if value is None:
                kind = "a whole-number literal like 1 or -1" if p.kind == "int" else "a number literal like 0.1"
                raise self.error(f"the {label} of {name}() must be {kind} (a fixed number, not an expression)",
                                 arg.pos)
            if isinstance(value, int) and abs(value) >= 10**MAX_INT_DIGITS:
                raise self.error(f"the {label} of {name}() is too large ({value:.3g})", arg.pos)
            params.append(value)
        return args[:n], tuple(params)

    def check_constant_power(self, node: ir.Binary) -> None:
        """Reject a power of constants whose size cannot be represented, before anyone computes it."""
        base, exponent = _constant_value(node.left), _constant_value(node.right)
        if base is None or exponent is None:
            return
        text = ir.to_source(node)
        if base == 0 and exponent < 0:
            raise self.error(f"constant power {text} divides by zero", node.pos)
        if base < 0 and math.isfinite(exponent) and not float(exponent).is_integer():
            raise self.error(f"constant power {text} is not a real number (a negative base needs a whole "
                             "exponent)", node.pos)
        try:
            value = math.pow(base, exponent)
        except (OverflowError, ValueError, ZeroDivisionError):
            value = math.inf
        if not math.isfinite(value) or abs(value) > MAX_CONSTANT_MAGNITUDE:
            raise self.error(f"constant power {text} is too large to compute "
                             f"(limit {MAX_CONSTANT_MAGNITUDE:g})", node.pos)


def _int_value(node: ir.Node) -> int | None:
    """The value of a whole-number literal (`2`, `-1`), or None for anything else."""
    sign = 1
    if isinstance(node, ir.Unary):
        sign, node = -1, node.operand
    if isinstance(node, ir.Num) and INT.fullmatch(node.text):
        return sign * int(node.text) if len(node.text) <= 30 else sign * 10**30
    return None


def _number_value(node: ir.Node) -> float | None:
    """The value of a number literal, optionally negated, or None for anything else."""
    if isinstance(node, ir.Unary) and isinstance(node.operand, ir.Num):
        return -node.operand.value
    return node.value if isinstance(node, ir.Num) else None


_CONSTANT_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": math.pow}


def _constant_value(node: ir.Node) -> float | None:
    """The float value of a subtree without names or calls, or None if it has any.

    Only constant powers are evaluated (to bound them); a non-finite intermediate
    returns inf so the caller rejects it.
    """
    values: dict[int, float] = {}
    for n in ir.postorder(node):
        if isinstance(n, ir.Num):
            values[id(n)] = n.value
        elif isinstance(n, ir.Const):
            values[id(n)] = math.pi if n.name == "pi" else math.e
        elif isinstance(n, ir.Unary):
            values[id(n)] = -values[id(n.operand)]
        elif isinstance(n, ir.Binary):
            op = _CONSTANT_OPS.get(n.op)
            if op is None:  # '@' of numbers is not a number: shape inference says why
                return None
            try:
                values[id(n)] = op(values[id(n.left)], values[id(n.right)])
            except (OverflowError, ValueError, ZeroDivisionError):
                values[id(n)] = math.inf
        else:
            return None
    return values[id(node)]


def parse(source: str) -> ir.Node:
    """Parse expression text into IR; raise ParseError with the column on any problem."""
    if not isinstance(source, str):
        raise ParseError(f"an expression must be text, not {type(source).__name__}")
    if len(source) > MAX_LENGTH:
        raise ParseError(f"expression too long ({len(source)} characters; the limit is {MAX_LENGTH})")
    if not source.strip(WHITESPACE):
        raise ParseError("empty expression")
    root = _Parser(source, tokenize(source)).parse()
    _check_comparisons(root, source)
    return root


def _check_comparisons(root: ir.Node, source: str) -> None:
    """A comparison is a condition, not a number: it may only be where()'s first argument
    (possibly in parentheses, which leave no node).  Calls check their own arguments while
    parsing; this catches the rest: the whole expression, or an operand like (x < 1) + 2."""
    allowed = {id(n.args[0]) for n in ir.preorder(root) if isinstance(n, ir.Call) and n.func == "where"}
    for node in ir.preorder(root):
        if isinstance(node, ir.Compare) and id(node) not in allowed:
            raise ParseError(f"a comparison ('{node.op}') is only allowed as the first argument of "
                             f"where(a {node.op} b, if_true, if_false); found one at column {node.pos + 1}",
                             source=source, column=node.pos + 1)
