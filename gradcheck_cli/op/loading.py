"""Finding the op: `FILE.py:ATTR` or `package.module:ATTR` (ATTR may be dotted), and
reading `--kw NAME=VALUE` keyword arguments.

Every problem here is the user's input (exit 2) and carries the module's own message.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from typing import Any, Callable

from gradcheck_cli.errors import UserInputError

_LOADED: dict[str, tuple[float, Any]] = {}  # absolute path -> (mtime, module)
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?inf|nan")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def split_target(target: str) -> tuple[str, str]:
    """'ops/swish.py:Swish' -> ('ops/swish.py', 'Swish')."""
    where, sep, attr = target.strip().rpartition(":")
    if not sep or not where or not attr:
        raise UserInputError(f"op target {target!r}: expected FILE.py:ATTR or package.module:ATTR "
                             "(e.g. ops/swish.py:Swish or torch.nn.functional:softmax)")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise UserInputError(f"op target {target!r}: {attr!r} is not an attribute name")
    return where, attr


def is_file_target(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


# torch.library operators: `torch.ops.NS.NAME[.OVERLOAD]` or `NS::NAME[.OVERLOAD]`, optionally
# after `FILE.py:` or `package.module:`, imported first so that it registers the operator
_TORCH_OPS = re.compile(r"^(?:(?P<where>.+):)?torch\.ops\.(?P<ns>\w+)\.(?P<name>\w+)(?:\.(?P<overload>\w+))?$")
_QUALIFIED = re.compile(r"^(?:(?P<where>.+?):)?(?P<ns>[A-Za-z_]\w*)::(?P<name>[A-Za-z_]\w*)(?:\.(?P<overload>\w+))?$")


def load_object(target: str, base_dir: str | None = None) -> tuple[Any, str]:
    """What a target names, as is (a function, a Function or Module class, a Module
    instance, a torch.library operator), and a label for reports."""
    text = target.strip()
    m = _TORCH_OPS.match(text) or _QUALIFIED.match(text)
    if m:
        return _torch_operator(m, target, base_dir), target
    where, attr = split_target(target)
    module = _import_where(where, base_dir)
    obj = module
    walked = []
    for part in attr.split("."):
        if not hasattr(obj, part):
            owner = where + ("." + ".".join(walked) if walked else "")
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserInputError(f"op target {target!r}: {owner} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
        walked.append(part)
    return obj, target


def _import_where(where: str, base_dir: str | None):
    return _import_file(where, base_dir) if is_file_target(where) else _import_module(where)


def _torch_operator(m: re.Match, target: str, base_dir: str | None):
    """The torch.library operator NS::NAME (an overload of it when named), after importing
    the file or module given before it (which registers the operator)."""
    import torch

    if m.group("where"):
        _import_where(m.group("where"), base_dir)
    ns, name, overload = m.group("ns"), m.group("name"), m.group("overload")
    try:
        packet = getattr(getattr(torch.ops, ns), name)
    except (AttributeError, RuntimeError):
        hint = ("" if m.group("where") else
                f"; give the file or module that registers it first, as FILE.py:{ns}::{name} or package.module:"
                f"{ns}::{name}")
        raise UserInputError(f"op target {target!r}: no operator {ns}::{name} is registered with torch{hint}") \
            from None
    if overload is None:
        return packet
    if overload not in packet.overloads():
        raise UserInputError(f"op target {target!r}: {ns}::{name} has no overload {overload!r} (its overloads: "
                             f"{', '.join(packet.overloads())})")
    return getattr(packet, overload)


def as_callable(obj: Any, label: str) -> Callable:
    """A Function subclass through .apply; any other callable as is."""
    import torch

    if isinstance(obj, type):
        if issubclass(obj, torch.autograd.Function):
            return obj.apply
        if issubclass(obj, torch.nn.Module):
            raise UserInputError(f"op target {label!r} is an nn.Module class: check it with gradcheck op (which "
                                 "builds it, with --init NAME=VALUE arguments) or check_module(module, ...)")
        raise UserInputError(f"op target {label!r} is a class that is not a torch.autograd.Function; point at a "
                             "function, a Function subclass, or a callable instance")
    if not callable(obj):
        raise UserInputError(f"op target {label!r} is a {type(obj).__name__}, not callable")
    return obj


def _import_module(name: str):
    # The current folder is importable, as under `python -m gradcheck_cli`: the console
    # script's sys.path lacks it, so `gradcheck op mypkg.ops:Swish` in a project that is not
    # installed would fail only when run one way.  Appended, so installed packages win.
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise UserInputError(f"cannot import module {name!r}: {exc}") from None
    except BaseException as exc:  # the module's own failure, reported in its words
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserInputError(f"importing module {name!r} raised {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            try:
                sys.path.remove(cwd)
            except ValueError:
                pass


def _import_file(where: str, base_dir: str | None):
    path = where if os.path.isabs(where) else os.path.join(base_dir or os.getcwd(), where)
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise UserInputError(f"op file {where!r} not found (looked for {path})")
    mtime = os.path.getmtime(path)
    cached = _LOADED.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    name = "gradcheck_op_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserInputError(f"op file {where!r} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    sys.modules[name] = module
    sys.path.insert(0, folder)  # so the file can import its siblings
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise UserInputError(f"cannot import {where!r}: SyntaxError: {exc.msg} (line {exc.lineno})") from None
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserInputError(f"importing {where!r} raised {type(exc).__name__}: {exc}") from None
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    _LOADED[path] = (mtime, module)
    return module


def parse_kw(name: str, text: Any) -> Any:
    """A keyword argument's value: a number (int when written as one), true/false, none,
    a quoted or bare string, or a list of numbers.  Spec files may give TOML values."""
    if not isinstance(text, str):
        if isinstance(text, (bool, int, float)) or text is None:
            return text
        if isinstance(text, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in text):
            return list(text)
        raise UserInputError(f"--kw {name}: a value must be a number, true/false, a string or a list of numbers")
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if len(t) >= 2 and t[0] in "'\"" and t[-1] == t[0]:
        return t[1:-1]
    if _INT.fullmatch(t):
        return int(t)
    if _FLOAT.fullmatch(t):
        return float(t)
    if t.startswith("["):
        return _number_list(name, t)
    if _BARE.fullmatch(t):
        return t
    raise UserInputError(f"--kw {name}={text!r}: expected a number, true/false, a quoted or bare string, or a "
                         "list of numbers like [0, 1]")


def _number_list(name: str, t: str) -> list:
    if not t.endswith("]"):
        raise UserInputError(f"--kw {name}={t!r}: a list must end with ']'")
    inner = t[1:-1].strip()
    if not inner:
        return []
    items = []
    for part in inner.split(","):
        p = part.strip()
        if _INT.fullmatch(p):
            items.append(int(p))
        elif _FLOAT.fullmatch(p):
            items.append(float(p))
        else:
            raise UserInputError(f"--kw {name}={t!r}: {p!r} is not a number (lists hold numbers only)")
    return items
