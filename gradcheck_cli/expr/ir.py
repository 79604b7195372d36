"""The expression IR: small frozen nodes that remember where they came from.

Every engine walks the same IR with `postorder`, an explicit-stack traversal, so no
engine recurses as deep as the user's expression nests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union


@dataclass(frozen=True)
class Num:
    value: float
    text: str
    pos: int  # 0-based offset in the source


@dataclass(frozen=True)
class Name:
    name: str
    pos: int


@dataclass(frozen=True)
class Const:
    """`pi` or `e`: fixed numbers that cannot be given values."""

    name: str
    pos: int


@dataclass(frozen=True)
class Unary:
    op: str  # '-' (a '+' sign is dropped by the parser: it changes nothing)
    operand: "Node"
    pos: int


@dataclass(frozen=True)
class Binary:
    op: str  # '+', '-', '*', '/', '**'
    left: "Node"
    right: "Node"
    pos: int


@dataclass(frozen=True)
class Compare:
    op: str  # '<', '<=', '>', '>='
    left: "Node"
    right: "Node"
    pos: int


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple  # the operands (sub-expressions)
    pos: int
    params: tuple = ()  # literal parameters after the operands: dims, sizes, a slope (ints or floats)


@dataclass(frozen=True)
class Slice:
    """`start:stop:step` inside [...]; None where a part is left out."""

    start: int | None
    stop: int | None
    step: int | None

    def text(self) -> str:
        parts = ["" if v is None else str(v) for v in (self.start, self.stop)]
        return ":".join(parts + ([str(self.step)] if self.step is not None else []))


@dataclass(frozen=True)
class Index:
    """`x[0]`, `X[:, 1]`, `x[1:3]`: constant indices and slices (torch's basic indexing)."""

    operand: "Node"
    items: tuple  # ints and Slices, one per indexed dimension (leading dimensions first)
    pos: int  # the '['
    item_pos: tuple = ()  # 0-based offset of each item, for messages


Node = Union[Num, Name, Const, Unary, Binary, Compare, Call, Index]


def children(node: Node) -> tuple:
    """The direct sub-nodes of `node`, in source order."""
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, (Binary, Compare)):
        return (node.left, node.right)
    if isinstance(node, Call):
        return node.args
    if isinstance(node, Index):
        return (node.operand,)
    return ()


def postorder(root: Node) -> Iterator[Node]:
    """Every node once, children before parents, without recursion.

    Nodes are frozen dataclasses compared by value, so identical subtrees (`x*x`) are
    yielded once per occurrence; engines key their results by `id(node)`.
    """
    stack: list = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
            continue
        stack.append((node, True))
        for child in reversed(children(node)):
            stack.append((child, False))


def names_in(root: Node) -> list[str]:
    """Variable names in order of first appearance."""
    seen: dict[str, None] = {}
    for node in preorder(root):
        if isinstance(node, Name):
            seen.setdefault(node.name, None)
    return list(seen)


def preorder(root: Node) -> Iterator[Node]:
    """Every node once, parents before children, in source order, without recursion."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def calls_in(root: Node) -> set[str]:
    """Names of every function called in the expression."""
    return {n.func for n in preorder(root) if isinstance(n, Call)}


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2, "**": 4}


def param_text(p) -> str:
    """A literal parameter as the user could have written it."""
    return str(p) if isinstance(p, int) else repr(float(p))


def _mixes(node, child) -> bool:
    """`(a @ b)*c` and `(a*b) @ c` keep their parentheses: same precedence, but easy to misread."""
    return (isinstance(child, Binary) and node.op in ("*", "/", "@") and child.op in ("*", "/", "@")
            and (node.op == "@") != (child.op == "@"))


def to_source(root: Node) -> str:
    """Print the IR back as expression text (minimal parentheses), without recursion."""
    out: dict[int, tuple[str, int]] = {}  # id(node) -> (text, precedence)
    for node in postorder(root):
        if isinstance(node, Num):
            out[id(node)] = (node.text, 9)
        elif isinstance(node, (Name, Const)):
            out[id(node)] = (node.name, 9)
        elif isinstance(node, Call):
            args = ", ".join([out[id(a)][0] for a in node.args] + [param_text(p) for p in node.params])
            out[id(node)] = (f"{node.func}({args})", 9)
        elif isinstance(node, Index):
            text, prec = out[id(node.operand)]
            items = ", ".join(i.text() if isinstance(i, Slice) else str(i) for i in node.items)
            out[id(node)] = (f"{text if prec >= 9 else f'({text})'}[{items}]", 9)
        elif isinstance(node, Unary):
            text, prec = out[id(node.operand)]
            out[id(node)] = ("-" + (text if prec >= 3 else f"({text})"), 3)
        else:
            prec = 0 if isinstance(node, Compare) else _PREC[node.op]
            lt, lp = out[id(node.left)]
            rt, rp = out[id(node.right)]
            if node.op == "**":  # right-associative; the base must bind tighter
                lt = lt if lp > prec else f"({lt})"
                rt = rt if rp >= 3 else f"({rt})"
            else:
                lt = lt if lp >= prec and not _mixes(node, node.left) else f"({lt})"
                rt = rt if rp > prec else f"({rt})"
            out[id(node)] = (f"{lt} {node.op} {rt}" if prec < 2 or node.op == "@" else f"{lt}*{rt}"
                             if node.op == "*" else f"{lt}{node.op}{rt}", prec)
    return out[id(root)][0]
