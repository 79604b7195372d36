"""What `gradcheck op` calls, and what it knows about it (the "load" stage, after
loading.py found the object): a function or callable, a torch.autograd.Function (through
.apply), an nn.Module (an instance, or a class or factory built with --init arguments: its
parameters become inputs, module.py), or a torch.library operator (registration checks
for custom ones, registration.py).  Each comes with the call signatures it accepts
(signature.py), so a call that cannot bind is refused before anything runs."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.op import signature as sig

# operator namespaces that are torch's own: tested by torch, no registration checks here
TORCH_NAMESPACES = frozenset({"aten", "prims", "prim", "quantized", "_quantized", "debugprims", "rngprims",
                              "higher_order", "inductor", "profiler", "_c10d_functional", "c10d"})


@dataclass
class OpTarget:
    """A loaded op target.  kind: 'function' | 'autograd_function' | 'module' | 'operator'."""

    fn: Callable | None
    label: str
    kind: str
    module: Any = None  # kind 'module': the user's module (module.py works on a copy)
    overload: Any = None  # kind 'operator': the OpOverload registration checks run on
    signatures: tuple = field(default_factory=tuple)  # inspect.Signature candidates; () unknown

    @property
    def custom_operator(self) -> bool:
        """A torch.library operator defined outside torch (registration checks apply)."""
        return self.overload is not None and self.overload.namespace not in TORCH_NAMESPACES


def resolve(obj: Any, label: str, init: dict | None = None, seed: int = 0) -> OpTarget:
    """Classify what a target names; build a module class or factory with `init`."""
    import torch

    from gradcheck_cli.op.loading import as_callable

    if _is_operator(obj):
        return _operator(obj, label)
    if isinstance(obj, torch.nn.Module):
        _no_init(init, label, "an nn.Module instance (already built)")
        return OpTarget(None, label, "module", module=obj, signatures=sig.python_signatures(obj.forward))
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        return _built(obj, init or {}, label, f"{obj.__name__}(...)", seed)
    if isinstance(obj, type) and issubclass(obj, torch.autograd.Function):
        _no_init(init, label, "a torch.autograd.Function")
        takes_ctx = getattr(obj, "setup_context", None) is torch.autograd.Function.setup_context
        return OpTarget(obj.apply, label, "autograd_function",
                        signatures=sig.python_signatures(obj.forward, drop_first=takes_ctx))
    if init is not None or _takes_nothing(obj):  # a factory: a callable that builds the module
        return _built(obj, init or {}, label, f"{getattr(obj, '__name__', label)}(...)", seed)
    fn = as_callable(obj, label)
    return OpTarget(fn, label, "function", signatures=sig.python_signatures(fn) or sig.builtin_signatures(fn))


def _is_operator(obj: Any) -> bool:
    import torch

    return isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) or \
        type(obj).__name__ == "CustomOpDef" and hasattr(obj, "_opoverload")


def _operator(obj: Any, label: str) -> OpTarget:
    """A torch.library operator: a packet (every overload's schema is a signature), one
    overload, or a CustomOpDef (torch.library.custom_op's decorated function)."""
    import torch

    if isinstance(obj, torch._ops.OpOverloadPacket):
        names = obj.overloads()
        overload = getattr(obj, "default" if "default" in names else names[0])
        schemas = [getattr(obj, n)._schema for n in names]
        return OpTarget(obj, label, "operator", overload=overload,
                        signatures=tuple(sig.schema_signature(s) for s in schemas))
    overload = obj if isinstance(obj, torch._ops.OpOverload) else obj._opoverload
    return OpTarget(obj, label, "operator", overload=overload, signatures=(sig.schema_signature(overload._schema),))


def _takes_nothing(obj: Any) -> bool:
    """A plain function with no parameters at all can only be a factory (an op needs inputs)."""
    if not inspect.isfunction(obj):
        return False
    try:
        return not inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


def _no_init(init: dict | None, label: str, what: str) -> None:
    if init is not None:
        raise UserInputError(f"--init: op target {label!r} is {what}; --init NAME=VALUE builds nn.Module classes "
                             "and factories")


def _built(factory: Any, init: dict, label: str, shown: str, seed: int) -> OpTarget:
    """Build a module from its class or factory with the --init keyword arguments (their
    mistakes are the user's input: exit 2 with the constructor's own message); its random
    initial weights come from torch's generator seeded with --seed, inside fork_rng."""
    import torch

    sig.check_call(sig.python_signatures(factory), shown.split("(")[0], [], list(init), flag="--init")
    try:
        with torch.random.fork_rng(devices=[]):  # its initial weights: seeded, the caller's RNG untouched
            torch.manual_seed(seed)
            module = factory(**init)
    except Exception as exc:  # noqa: BLE001 -- the constructor's own words
        raise UserInputError(f"--init: building {shown} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise UserInputError(f"op target {label!r}: {shown} returned a {type(module).__name__}, not an nn.Module "
                             "(--init builds modules; an op function takes its inputs from --at)")
    return OpTarget(None, label, "module", module=module, signatures=sig.python_signatures(module.forward))
