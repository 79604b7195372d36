"""The value language of `--at NAME=VALUE` and of spec files' `at` tables.

A value is a number (`2`, `-1.5e-3`), a nested list (`[[1,2],[3,4]]`), or a generator
call: `randn(d, ...)`, `rand(d, ...)`, `zeros(d, ...)`, `ones(d, ...)`,
`linspace(a, b, n)`; `randn()` is a random scalar.  Generators draw from a private
generator seeded by `--seed`, in the order the values are given, so the same command
gives the same numbers.  Read by a small parser of its own: no eval.

Integer and boolean tensors (class targets, indices, masks: never differentiated):
`int([0, 2, 1])`, `int(3)`, `randint(low, high, d, ...)` (whole numbers drawn from
[low, high), seeded like the others) and `bool([1, 0, 1])` or `bool([true, false])`.
They keep their dtype (int64, bool) all the way to the op or the expression.
`tensor(X)` is X itself: how a `--kw` value says "a tensor" of a literal list (a plain
list there is a Python list, as the contract says of --kw).

Complex values (`gradcheck op --dtype complex128|complex64` only): `complex(RE, IM)` with
two values of one shape (`complex([1, 2], [0.5, -1])`, `complex(randn(3), zeros(3))`);
there `randn(d, ...)` and `rand(d, ...)` draw the real and the imaginary part, and a real
literal is a complex value with imaginary part 0.  A complex value is held as its real
view: a float64 array with a last dimension of 2 (real, imaginary), as torch.view_as_real.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcheck_cli.errors import UserInputError

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB of float64 per value; GRADCHECK_MAX_BYTES overrides
GENERATORS = ("randn", "rand", "zeros", "ones", "linspace", "randint")
INT_LIMIT = 2**53  # whole numbers beyond this cannot come from a float literal exactly
_TOKEN = re.compile(r"\s*(?:(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?inf|nan)|(?P<name>[A-Za-z_]\w*)"
                    r"|(?P<punct>[\[\](),]))")


@dataclass(frozen=True)
class Value:
    """One named input: its float64 array and how the user wrote it."""

    name: str
    array: np.ndarray  # float64, the exact numbers used
    text: str  # the user's spelling, for messages and reports
    generated: bool  # drawn by a generator (so --points may redraw it)
    generator: str = ""  # 'randn', 'rand', ... when generated
    complex: bool = False  # array is the real view (..., 2) of a complex value
    kind: str = "float"  # 'float' | 'int' (int64 array) | 'bool' (bool array): int and bool are never differentiated

    @property
    def differentiable(self) -> bool:
        """Whether this value can be differentiated (a float or complex value)."""
        return self.kind == "float"


def max_bytes() -> int:
    """The memory bound for one value; the environment may raise or lower it."""
    raw = os.environ.get("GRADCHECK_MAX_BYTES")
    if raw is None:
        return DEFAULT_MAX_BYTES
    try:
        return int(float(raw))
    except ValueError:
        raise UserInputError(f"GRADCHECK_MAX_BYTES must be a number of bytes, got {raw!r}") from None


def split_assignment(item: str) -> tuple[str, str]:
    """Split 'NAME=VALUE' (the form of --at and --kw)."""
    if "=" not in item:
        raise UserInputError(f"expected NAME=VALUE, got {item!r}")
    name, _, text = item.partition("=")
    name, text = name.strip(), text.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name.startswith("__"):
        raise UserInputError(f"{name!r} is not a valid name (in {item!r})")
    if not text:
        raise UserInputError(f"no value after '=' for {name!r}")
    return name, text


def _tokens(text: str) -> list[tuple[str, str]]:
    out, i = [], 0
    text = text.strip()
    while i < len(text):
        m = _TOKEN.match(text, i)
        if not m or m.end() == i:
            raise UserInputError(f"cannot read value {text!r}: unexpected {text[i:].strip()[:20]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        i = m.end()
        while i < len(text) and text[i].isspace():
            i += 1
    return out


class _ValueParser:
    def __init__(self, name: str, text: str):
        self.name, self.text = name, text
        self.toks = _tokens(text)
        self.i = 0

    def fail(self, why: str) -> UserInputError:
        return UserInputError(f"cannot read the value of {self.name!r} ({self.text!r}): {why}")

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind) or (text and tok[1] != text):
            want = repr(text) if text else {"num": "a number", "name": "a generator name"}.get(kind, kind)
            found = repr(tok[1]) if tok else "the end"
            raise self.fail(f"expected {want}, found {found}")
        self.i += 1
        return tok[1]

    def number(self) -> float:
        value = float(self.take("num"))
        if math.isinf(value) and "inf" not in self.toks[self.i - 1][1]:
            raise self.fail("a number overflows float64")
        return value

    def nested(self, depth: int = 0, words: bool = False) -> Any:
        """A number or nested list of numbers; `words`: also true / false (bool values)."""
        if depth > 32:
            raise self.fail("lists nest more than 32 levels")
        tok = self.peek()
        if tok and tok[1] == "[":
            self.take(text="[")
            items = []
            while self.peek() and self.peek()[1] != "]":
                items.append(self.nested(depth + 1, words))
                if self.peek() and self.peek()[1] == ",":
                    self.take(text=",")
                elif self.peek() and self.peek()[1] != "]":
                    raise self.fail(f"expected ',' or ']', found {self.peek()[1]!r}")
            self.take(text="]")
            return items
        if words and tok and tok[0] == "name" and tok[1] in ("true", "false"):
            self.take("name")
            return 1.0 if tok[1] == "true" else 0.0
        return self.number()

    def done(self) -> None:
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r} after the value")


def _check_size(name: str, shape: tuple[int, ...]) -> None:
    count = math.prod(shape)
    limit = max_bytes()
    # Each dimension is bounded on its own too: a zero elsewhere makes the product 0, and
    # numpy raises its own ValueError for randn(0, 1e300) instead of allocating nothing.
    biggest = max(shape, default=1)
    if count * 8 > limit or biggest * 8 > limit:
        shown = f"of shape {tuple(shape)}" if biggest < 10**12 else f"with a dimension of {float(biggest):.3g}"
        raise UserInputError(f"value {name!r} {shown} needs {max(count, biggest) * 8 / 2**30:.3g} GiB "
                             f"(limit {limit / 2**30:.3g} GiB; set GRADCHECK_MAX_BYTES to change it)")
    if count == 0:
        raise UserInputError(f"value {name!r} of shape {tuple(shape)} has no elements: "
                             "there is nothing to differentiate")


def _dims(p: _ValueParser, args: list[float], generator: str) -> tuple[int, ...]:
    dims = []
    for a in args:
        if not float(a).is_integer() or a < 0:
            raise p.fail(f"{generator}() sizes must be whole numbers >= 0, got {a:g}")
        dims.append(int(a))
    if len(dims) > 8:
        raise p.fail(f"{generator}() takes at most 8 dimensions")
    return tuple(dims)


def _generate(p: _ValueParser, generator: str, args: list[float], rng: np.random.Generator) -> np.ndarray:
    if generator == "randint":
        if len(args) < 2:
            raise p.fail("randint(low, high, d, ...) takes the range [low, high) and then the sizes")
        low, high = args[0], args[1]
        if not (float(low).is_integer() and float(high).is_integer() and abs(low) < INT_LIMIT
                and abs(high) < INT_LIMIT):
            raise p.fail(f"randint(low, high, ...) needs whole numbers, got {low:g} and {high:g}")
        if high <= low:
            raise p.fail(f"randint(low, high, ...) draws from [low, high): high must exceed low, got {low:g}, "
                         f"{high:g}")
        shape = _dims(p, args[2:], generator)
        _check_size(p.name, shape)
        return rng.integers(int(low), int(high), size=shape, dtype=np.int64)
    if generator == "linspace":
        if len(args) != 3:
            raise p.fail("linspace(a, b, n) takes three numbers")
        a, b, n = args
        (count,) = _dims(p, [n], generator)
        _check_size(p.name, (count,))
        return np.linspace(a, b, count, dtype=np.float64)
    shape = _dims(p, args, generator)
    _check_size(p.name, shape)
    if generator == "randn":
        return rng.standard_normal(shape)
    if generator == "rand":
        return rng.random(shape)
    return (np.zeros if generator == "zeros" else np.ones)(shape, dtype=np.float64)


def _generator_call(p: _ValueParser) -> tuple[str, list[float]]:
    """`randn(2, 3)` -> ("randn", [2.0, 3.0]): the whole value, read to its end."""
    call = _generator_args(p)
    p.done()
    return call


def _generator_args(p: _ValueParser) -> tuple[str, list[float]]:
    """`randn(2, 3)` -> ("randn", [2.0, 3.0]), read up to its closing parenthesis."""
    generator = p.take("name")
    if generator not in GENERATORS:
        raise p.fail(f"unknown generator {generator!r} (known: {', '.join(GENERATORS)}; int(...) and bool(...) "
                     "give integer and boolean tensors)")
    p.take(text="(")
    args: list[float] = []
    while p.peek() and p.peek()[1] != ")":
        args.append(p.number())
        if p.peek() and p.peek()[1] == ",":
            p.take(text=",")
        elif p.peek() and p.peek()[1] != ")":  # randn(2 3) is a typo, not randn(2, 3)
            raise p.fail(f"expected ',' or ')', found {p.peek()[1]!r}")
    p.take(text=")")
    return generator, args


def _real_part(p: _ValueParser, rng: np.random.Generator, parts: int = 1) -> tuple[np.ndarray, bool, str]:
    """One value inside complex(...) or a whole real one: (array, generated, generator).
    parts=2 (a complex dtype): randn and rand draw real and imaginary parts, (..., 2)."""
    tok = p.peek()
    if tok is not None and tok[0] == "name":
        generator, args = _generator_args(p)
        if parts == 2 and generator in ("randn", "rand"):  # (randint stays an integer tensor)
            array = _generate(p, generator, args + [2.0], rng)
            return array, True, generator
        return _generate(p, generator, args, rng), True, generator
    return _list_array(p, p.nested(), "an empty list has nothing to differentiate"), False, ""


def _list_array(p: _ValueParser, data, empty: str) -> np.ndarray:
    """A literal's nested lists as float64, checked: not ragged, not empty (`empty` says
    why not), not past the size limit."""
    try:
        array = np.asarray(data, dtype=np.float64)
    except ValueError:
        raise p.fail("the nested lists are ragged (rows of different lengths)") from None
    if array.size == 0:
        raise p.fail(empty)
    _check_size(p.name, array.shape)
    return array


def _complex_call(p: _ValueParser, rng: np.random.Generator) -> Value:
    """complex(RE, IM): the real view (..., 2) of RE + i IM."""
    p.take(text="complex")
    p.take(text="(")
    re_part, re_gen, generator = _real_part(p, rng)
    p.take(text=",")
    im_part, im_gen, im_generator = _real_part(p, rng)
    p.take(text=")")
    p.done()
    if "randint" in (generator, im_generator):
        raise p.fail("complex(RE, IM) takes real values; randint draws an integer tensor")
    if re_part.shape != im_part.shape:
        raise p.fail(f"the real part has shape {tuple(re_part.shape)} and the imaginary part "
                     f"{tuple(im_part.shape)}: they must match")
    # --points redraws both parts from one generator: only when both came from it
    generated = re_gen and im_gen and generator == im_generator and generator in ("randn", "rand")
    return Value(p.name, np.stack([re_part, im_part], axis=-1), p.text, generated, generator if generated else "",
                 True)


def _whole_numbers(p: _ValueParser, array: np.ndarray, kind: str) -> np.ndarray:
    """The float64 numbers of int(...) / bool(...) as int64 / bool, each checked."""
    if not np.all(np.isfinite(array)):
        raise p.fail(f"{kind}(...) values must be finite")
    if kind == "bool":
        if not np.all((array == 0) | (array == 1)):
            raise p.fail("bool(...) values are true/false or 1/0")
        return array.astype(bool)
    if not np.all(array == np.round(array)) or np.any(np.abs(array) >= INT_LIMIT):
        bad = array.reshape(-1)[np.flatnonzero((array != np.round(array)) | (np.abs(array) >= INT_LIMIT))[0]]
        raise p.fail(f"int(...) values are whole numbers below 2**53 in magnitude, got {bad:g}")
    return array.astype(np.int64)


def _kind_call(p: _ValueParser) -> Value:
    """int(NUMBER | LIST) or bool(NUMBER | LIST): an integer or boolean tensor."""
    kind = p.take("name")
    p.take(text="(")
    tok = p.peek()
    if tok is not None and tok[0] == "name" and tok[1] not in ("true", "false"):
        raise p.fail(f"{kind}(...) takes a number or a list" + (" (randint(low, high, d, ...) draws integers)"
                                                                 if kind == "int" else ""))
    data = p.nested(words=kind == "bool")
    p.take(text=")")
    p.done()
    array = _list_array(p, data, "an empty list has no elements")
    return Value(p.name, _whole_numbers(p, array, kind), p.text, False, "", False, kind)


def _from_array(name: str, raw: np.ndarray) -> Value:
    """A numpy array from a Python caller: int and bool arrays keep their kind."""
    text = f"array{list(raw.shape)}"
    if raw.dtype == np.bool_:
        return Value(name, raw.copy(), text, False, kind="bool")
    if np.issubdtype(raw.dtype, np.integer):
        return Value(name, raw.astype(np.int64), text, False, kind="int")
    if raw.size == 0:
        raise UserInputError(f"value {name!r} of shape {tuple(raw.shape)} has no elements: "
                             "there is nothing to differentiate")
    return Value(name, np.array(raw, dtype=np.float64, order="C"), text, False)  # our own copy


def parse_value(name: str, raw: Any, rng: np.random.Generator, complex_: bool = False) -> Value:
    """Read one value given as text (CLI), as a TOML number, list or string, or as a numpy
    array (Python callers); complex_ (a complex dtype): a float value becomes complex, held
    as its real view (see the module docstring); int and bool values keep their kind."""
    value = _from_array(name, raw) if isinstance(raw, np.ndarray) else _parse_real(name, raw, rng, complex_)
    if complex_ and not value.complex and value.kind == "float":
        return Value(name, np.stack([value.array, np.zeros_like(value.array)], axis=-1), value.text, False, "", True)
    return value


def _parse_real(name: str, raw: Any, rng: np.random.Generator, complex_: bool) -> Value:
    if isinstance(raw, bool):
        raise UserInputError(f"value of {name!r} must be a number, a list or a generator, not a boolean")
    if isinstance(raw, (int, float)):
        number = float(raw)
        if not math.isfinite(number):
            raise UserInputError(f"value of {name!r} is not finite ({number!r}; a literal like 1e400 "
                                 "overflows float64)")
        text = str(int(number)) if number.is_integer() and abs(number) < 1e16 else repr(number)
        return Value(name, np.asarray(number, dtype=np.float64), text, False)
    if isinstance(raw, list):
        raw = repr(raw)
    if not isinstance(raw, str):
        raise UserInputError(f"value of {name!r} must be a number, a list or a generator string")
    text = raw.strip()
    p = _ValueParser(name, text)
    tok = p.peek()
    if tok is None:
        raise p.fail("empty value")
    if tok == ("name", "complex"):
        if not complex_:
            raise p.fail("complex values need a complex dtype (gradcheck op --dtype complex128 or complex64)")
        return _complex_call(p, rng)
    if tok in (("name", "int"), ("name", "bool")):
        return _kind_call(p)
    wrapped = tok == ("name", "tensor")  # tensor(X): X itself (a --kw tensor from a literal list)
    if wrapped:
        p.take("name")
        p.take(text="(")
    array, generated, generator = _real_part(p, rng, 2 if complex_ else 1)
    if wrapped:
        p.take(text=")")
    p.done()
    if generator == "randint":
        return Value(name, array, text, True, generator, False, "int")
    if complex_ and generated and generator in ("randn", "rand"):  # drawn as (..., 2) by _real_part
        return Value(name, array, text, True, generator, True)
    return Value(name, array, text, generated, generator)


TENSOR_CALLS = GENERATORS + ("int", "bool", "tensor", "complex")
_TENSOR_TEXT = re.compile(r"\s*(?:" + "|".join(TENSOR_CALLS) + r")\s*\(")


def is_tensor_text(text: Any) -> bool:
    """Whether a --kw value (or a spec's kw string) is a tensor in the value language:
    a generator call, int(...), bool(...), tensor(...) or complex(...).  A plain list
    stays a Python list of numbers, as the contract says of --kw."""
    return isinstance(text, str) and _TENSOR_TEXT.match(text) is not None


def parse_values(items: list[tuple[str, Any]], seed: int, complex_: bool = False) -> dict[str, Value]:
    """Read every (name, raw) pair in order, drawing generators from one seeded stream;
    complex_: every value complex (held as its real view)."""
    rng = np.random.default_rng(seed)
    values: dict[str, Value] = {}
    for name, raw in items:
        if name in values:
            raise UserInputError(f"{name!r} is given twice")
        values[name] = parse_value(name, raw, rng, complex_)
    return values


def redraw(value: Value, rng: np.random.Generator) -> np.ndarray:
    """A new random point of the same shape, for --points: generators redraw themselves,
    fixed values are perturbed around the given ones (so a domain like x > 0 is kept)."""
    shape = value.array.shape
    if value.kind != "float":  # class targets, indices, masks: the same at every point
        return value.array
    if value.generated and value.generator in ("randn", "rand"):
        return rng.standard_normal(shape) if value.generator == "randn" else rng.random(shape)
    base = value.array
    return base + rng.standard_normal(shape) * np.maximum(0.5, 0.25 * np.abs(base))


def shape_of(name: str, raw: Any) -> tuple:
    """The shape `raw` would have, validated like parse_value but without drawing it (a
    randn(1000, 1000) costs nothing here): for a report of a check that never ran."""
    if isinstance(raw, (bool, int, float)) or not isinstance(raw, (str, list)):
        return tuple(parse_value(name, raw, np.random.default_rng(0)).array.shape)
    text = repr(raw) if isinstance(raw, list) else raw.strip()
    p = _ValueParser(name, text)
    tok = p.peek()
    if tok is not None and tok[0] == "name" and tok[1] in GENERATORS and tok[1] != "linspace":
        generator, args = _generator_call(p)
        shape = _dims(p, args[2:] if generator == "randint" else args, generator)
        _check_size(name, shape)
        return shape
    return tuple(parse_value(name, raw, np.random.default_rng(0)).array.shape)
