"""The tokenizer of the expression language: printable ASCII only, every other character
rejected with its name and column; characters that belong to Python but not to the
language get a hint of their own (`^`, `=`, `'`, ...)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from gradcheck_cli.errors import ParseError

# Tabs and line breaks separate tokens like spaces do (a long expression in a spec file may
# span lines); every other character outside printable ASCII is rejected with its position.
WHITESPACE = " \t\n\r"
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = ("**", "<=", ">=", "<", ">", "+", "-", "*", "/", "@", "(", ")", ",", "[", "]", ":")
INT = re.compile(r"\d+")
_HINTS = {
    "^": "'^' is not a power operator here: use ** for powers (x**2)",
    ".": "attribute access is not part of the expression language (x.T, the transpose, is the only attribute)",
    "=": "assignment and '==' are not part of the expression language (comparisons: < <= > >= inside where)",
    "!": "'!=' is not part of the expression language (comparisons: < <= > >= inside where)",
    ":": "':' outside [...] (lambdas, walrus, annotations) is not part of the expression language; "
         "slices are written inside brackets, x[1:3]",
    "'": "strings are not part of the expression language",
    '"': "strings are not part of the expression language",
    "%": "'%' is not supported; the operators are + - * / ** @",
    "{": "braces are not part of the expression language",
    "}": "braces are not part of the expression language",
    ";": "one expression only; ';' is not part of the language",
    "&": "bitwise operators are not part of the expression language",
    "|": "bitwise operators are not part of the expression language",
    "~": "bitwise operators are not part of the expression language",
    "#": "comments are not part of the expression language",
    "\\": "backslashes are not part of the expression language",
    "`": "backticks are not part of the expression language",
    "$": "'$' is not part of the expression language",
    "?": "'?' is not part of the expression language",
}


@dataclass(frozen=True)
class Token:
    kind: str  # 'num', 'name', 'op', 'end'
    text: str
    pos: int


def _describe_char(ch: str) -> str:
    name = unicodedata.name(ch, "control character" if unicodedata.category(ch).startswith("C") else "unnamed")
    return f"U+{ord(ch):04X} {name}"


def tokenize(source: str) -> list[Token]:
    """Split `source` into tokens; reject anything outside printable ASCII with its position."""
    tokens: list[Token] = []
    i, n = 0, len(source)
    brackets = 0  # open '[': a ':' outside them is not a slice
    while i < n:
        ch = source[i]
        if ch in WHITESPACE:
            i += 1
            continue
        if not (" " <= ch <= "~"):
            raise ParseError(
                f"character {_describe_char(ch)} at column {i + 1} is not allowed: "
                "expressions are printable ASCII only", source=source, column=i + 1)
        m = _NUMBER.match(source, i)
        if m:
            tokens.append(Token("num", m.group(), i))
            i = m.end()
            # ASCII letters only: any other character is reported (by name, not echoed)
            # by the printable-ASCII check at the top of the loop.
            if i < n and source[i].isascii() and (source[i].isalpha() or source[i] == "_"):
                raise ParseError(f"unexpected '{source[i]}' right after the number at column {i + 1}"
                                 " (write multiplication as 2*x)", source=source, column=i + 1)
            continue
        m = _NAME.match(source, i)
        if m:
            tokens.append(Token("name", m.group(), i))
            i = m.end()
            continue
        if source.startswith(".T", i) and not (i + 2 < n and (source[i + 2].isalnum() or source[i + 2] == "_")):
            tokens.append(Token("op", ".T", i))
            i += 2
            continue
        op = next((o for o in _OPERATORS if source.startswith(o, i)), None)
        if op == ":" and (brackets == 0 or source.startswith(":=", i)):
            op = None
        brackets += {"[": 1, "]": -1}.get(op, 0)
        if op is None:
            hint = _HINTS.get(ch, f"'{ch}' is not part of the expression language")
            raise ParseError(f"{hint} (column {i + 1})", source=source, column=i + 1)
        tokens.append(Token("op", op, i))
        i += len(op)
    tokens.append(Token("end", "", n))
    return tokens
