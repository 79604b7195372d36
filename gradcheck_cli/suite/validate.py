"""Validation of one spec key's value: the type and range each key accepts, with the
message a user sees when it is wrong."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from gradcheck_cli.errors import SpecError


# in this order: a bool is an int too
_TYPE_NAMES = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "an array"),
               (dict, "a table"))


def type_name(value: Any) -> str:
    """How a message names the TOML type of `value`."""
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), type(value).__name__)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_numeric_array(v: Any, depth: int = 0) -> bool:
    if _is_number(v):
        return depth > 0
    return isinstance(v, list) and bool(v) and depth <= 32 and all(
        _is_number(x) or _is_numeric_array(x, depth + 1) for x in v)


def _is_value(v: Any) -> bool:
    """A value as `at` takes it: a number, a (nested) array of numbers, or a string in
    the value language (a generator like "randn(3)")."""
    return _is_number(v) or isinstance(v, str) or _is_numeric_array(v)


def _is_kw(v: Any) -> bool:
    return (isinstance(v, (bool, str)) or _is_number(v) or
            (isinstance(v, list) and all(_is_number(x) for x in v)))


def _enum(allowed: Iterable[str]) -> Callable[[Any], str | None]:
    allowed = tuple(allowed)

    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return f"must be a string, one of {', '.join(allowed)}; got {type_name(v)}"
        return None if v in allowed else f"must be one of {', '.join(allowed)}; got {v!r}"

    return check


def _string(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, got {type_name(v)}"
    return None if v.strip() else "must not be empty"


def _nonneg_number(v: Any) -> str | None:
    if not _is_number(v):
        return f"must be a number, got {type_name(v)}"
    return None if math.isfinite(v) and v >= 0 else f"must be a finite number >= 0, got {v!r}"


def _positive_number(v: Any) -> str | None:
    bad = _nonneg_number(v)
    return bad or (None if v > 0 else f"must be > 0, got {v!r}")


def _integer(lo: int, hi: int | None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return f"must be an integer, got {type_name(v)}"
        if v < lo or (hi is not None and v > hi):
            return f"must be between {lo} and {hi}, got {v}" if hi is not None else f"must be >= {lo}, got {v}"
        return None

    return check


def _table_of(test: Callable[[Any], bool], what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"must be a table like {{ x = 1.0 }}, got {type_name(v)}"
        for name, item in v.items():
            if not test(item):
                return f"entry {name!r} must be {what}, got {type_name(item)}"
        return None

    return check


def _wrt(v: Any) -> str | None:
    if isinstance(v, str):
        return None if all(w.strip() for w in v.split(",")) else "has an empty name"
    if not isinstance(v, list) or not v:
        return f"must be an array of names like [\"w\", \"b\"], got {type_name(v)}"
    bad = [x for x in v if not isinstance(x, str) or not x.strip()]
    return f"must hold only names (strings), got {type_name(bad[0])}" if bad else None


def _value(v: Any) -> str | None:
    return None if _is_value(v) else (f"must be a number, an array of numbers or a value string like "
                                      f"\"randn(3)\", got {type_name(v)}")


def _validators() -> dict:
    from gradcheck_cli.checker import LOSSES
    from gradcheck_cli.devices import syntax_problem
    from gradcheck_cli.shared import MAX_POINTS
    from gradcheck_cli.tolerances import DTYPES, FD_SCHEMES, OP_MODES

    kw_table = _table_of(_is_kw, "a number, a boolean, a string or an array of numbers")  # the kw and init tables
    return {
        "name": _string, "expr": _string, "op": _string, "reference": _string,
        "at": _table_of(_is_value, "a number, an array of numbers or a value string like \"randn(3)\""),
        "kw": kw_table, "init": kw_table,
        "wrt": _wrt, "target": _value,
        "loss": _enum(LOSSES), "dtype": _enum(DTYPES), "fd": _enum(FD_SCHEMES), "mode": _enum(OP_MODES),
        "device": syntax_problem,
        "eps": _positive_number, "atol": _nonneg_number, "rtol": _nonneg_number, "timeout": _nonneg_number,
        "points": _integer(0, MAX_POINTS), "seed": _integer(0, 2**63 - 1), "order": _integer(1, 2),
    }


_VALIDATORS: dict | None = None


def validate_value(key: str, value: Any, where: str) -> None:
    """Raise a SpecError (`where: why`) unless `value` is right for `key`."""
    global _VALIDATORS
    if _VALIDATORS is None:
        _VALIDATORS = _validators()
    if value is None:  # only from CLI defaults left unset
        return
    problem = _VALIDATORS[key](value)
    if problem:
        raise SpecError(f"{where} {problem}")
