"""The call signatures an op accepts, and the check that `--at` / `--kw` fit one of them
BEFORE anything runs: a wrong number of inputs or a misspelled keyword is the user's
input (exit 2, with the signature shown), not a failed gradient (exit 1).

Where the signature comes from: inspect.signature for Python callables (a Function's
`forward` without its ctx, a module's `forward`); the operator schema for torch.library
operators and for torch's built-in functions (`torch.sin` is `aten::sin`; its `self` is
called `input` from Python).  Where neither is known, nothing is refused.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

from gradcheck_cli.errors import UserInputError


def python_signatures(fn: Callable, drop_first: bool = False) -> tuple:
    """inspect.signature of fn (without its first parameter: a Function's ctx), or ()."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ()
    params = list(sig.parameters.values())
    if drop_first and params:
        params = params[1:]
    return (sig.replace(parameters=params),)


def schema_signature(schema, rename_self: bool = False) -> inspect.Signature:
    """An operator schema as an inspect.Signature (keyword-only arguments after `*`)."""
    params = []
    for arg in schema.arguments:
        kind = inspect.Parameter.KEYWORD_ONLY if arg.kwarg_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        default = arg.default_value if arg.has_default_value() else inspect.Parameter.empty
        name = "input" if rename_self and arg.name == "self" else arg.name
        params.append(inspect.Parameter(name, kind, default=default))
    return inspect.Signature(params)


def builtin_signatures(fn: Callable) -> tuple:
    """The aten schemas of a torch built-in (torch.sin, torch.special.erf), or ()."""
    name = getattr(fn, "__name__", None)
    if not name or not callable(fn) or not type(fn).__name__.startswith("builtin"):
        return ()
    import torch

    try:
        schemas = torch._C._jit_get_schemas_for_operator(f"aten::{name}")
    except RuntimeError:
        return ()
    # the Tensor overloads: aten::sin.int(int a) is not what torch.sin(tensor) means
    tensor_first = [s for s in schemas if s.arguments and "Tensor" in str(s.arguments[0].type)]
    return tuple(schema_signature(s, rename_self=True) for s in tensor_first)


def check_call(signatures: tuple, label: str, positional: list[str], keywords: list[str], flag: str = "--kw") -> None:
    """Raise UserInputError unless the call (positional inputs named as the user gave
    them, keyword names given with `flag`) binds to one of `signatures` (nothing is
    refused without any)."""
    if not signatures:
        return
    dummy = [None] * len(positional)
    problems = []
    for sig in signatures:
        try:
            sig.bind(*dummy, **{k: None for k in keywords})
            return
        except TypeError as exc:
            problems.append(str(exc))
    accepted = [p.name for sig in signatures for p in sig.parameters.values()]
    hints = []
    for k in keywords:
        if k not in accepted and not _takes_var_keywords(signatures):
            close = difflib.get_close_matches(k, accepted, n=1)
            hints.append(f"{flag} {k}: no such keyword" + (f" (did you mean {close[0]}?)" if close else ""))
    shown = "; ".join(f"{label}{sig}" for sig in signatures[:4]) + (" ..." if len(signatures) > 4 else "")
    if flag == "--kw":
        given = (f"{len(positional)} positional input(s)" + (f" ({', '.join(positional)})" if positional else "")
                 + (f" and keyword(s) {', '.join(keywords)}" if keywords else ""))
        how = "--at gives the positional inputs in order, --kw the keyword arguments"
    else:
        given, how = f"{flag} {', '.join(keywords) or '(none)'}", f"{flag} gives its keyword arguments"
    why = "; ".join(hints) if hints else problems[0]
    raise UserInputError(f"{label!r} cannot be called with {given}: {why}. It takes {shown} ({how})")


def _takes_var_keywords(signatures: tuple) -> bool:
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for sig in signatures for p in sig.parameters.values())
