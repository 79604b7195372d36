"""nn.Modules under the gate: gradients w.r.t. the inputs AND every parameter that
requires grad (named as module.named_parameters() names them: `weight`, `layer1.bias`).

The user's module is never touched: a deep copy is converted to the check's dtype (a
float32 module checks in float64 by default, like any op) and called functionally
(torch.func.functional_call), its parameters arriving as keyword inputs the gate varies
like any other input.  Buffers (running statistics) and frozen parameters are fixed: each
call gets fresh copies of them in the dtype of that call (the float64 re-run of a float32
check included), so batch norm's in-place updates never leak from one call to the next.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from gradcheck_cli.errors import UserInputError


class ModuleOp:
    """A module copy as an op: module_op(*inputs, **kwargs_and_parameters)."""

    def __init__(self, module, varied: tuple):
        self.module = module
        self.varied = varied  # parameter names passed in as keyword arguments (the gate's inputs)
        named = dict(module.named_parameters())
        self.fixed = {**{k: v.detach() for k, v in named.items() if k not in varied},
                      **{k: v.detach() for k, v in module.named_buffers()}}
        self.__qualname__ = type(module).__name__
        self.__name__ = type(module).__name__

    def __call__(self, *args, **kwargs):
        import torch

        params = {k: kwargs.pop(k) for k in self.varied if k in kwargs}
        dtype = next((t.dtype for t in (*params.values(), *args) if isinstance(t, torch.Tensor)
                      and t.is_floating_point()), None)
        fixed = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).clone()
                 for k, v in self.fixed.items()}
        return torch.func.functional_call(self.module, {**fixed, **params}, args, kwargs)


@dataclass
class PreparedModule:
    """A module ready to check: the op, its parameters (float64 CPU tensors, the values the
    gate starts from) and which of them require grad."""

    op: ModuleOp
    parameters: dict  # name -> float64 tensor
    trainable: tuple  # names of the parameters that require grad, in module order
    label: str


def prepare_module(module, dtype: str, device: str, label: str | None = None) -> PreparedModule:
    """A copy of `module` in the check's dtype on `device`, called functionally."""
    import torch

    from gradcheck_cli.dtypes import torch_dtype

    try:
        twin = copy.deepcopy(module)
    except Exception as exc:  # noqa: BLE001 -- the module's own reason
        raise UserInputError(f"the module cannot be copied (copy.deepcopy raised {type(exc).__name__}: {exc}); "
                             "gradcheck never changes the user's module, so it works on a copy") from None
    twin = twin.to(device=device, dtype=torch_dtype(dtype))
    named = dict(twin.named_parameters())
    params = {k: v.detach().to(device="cpu", dtype=torch.float64) for k, v in named.items()}
    trainable = tuple(k for k, v in named.items() if v.requires_grad)
    return PreparedModule(ModuleOp(twin, tuple(named)), params, trainable, label or type(module).__name__)


def check_names(prepared: PreparedModule, taken: list) -> None:
    """A parameter name must not also be an --at input or a --kw keyword."""
    for name in taken:
        if name in prepared.parameters:
            raise UserInputError(f"{name!r} is a parameter of the module; give the module's inputs other names "
                                 f"(its parameters: {', '.join(prepared.parameters)})")


def input_names(module, count: int) -> list:
    """Names for a module's positional inputs: its forward's parameter names where it has
    enough of them (Linear: input; MultiheadAttention: query, key, value), else x0, x1, ..."""
    import inspect

    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return params[:count] if len(params) >= count else [f"x{k}" for k in range(count)]
