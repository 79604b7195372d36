"""`gradcheck op`'s call, put together from what the user typed (the "call signature"
stage): --at values become the positional arguments in order (floating ones the inputs the
gate varies, int(...) / bool(...) ones integer and boolean tensors passed as they are),
--kw values the keyword arguments (numbers, strings and lists as they are; tensors written
in the value language -- randn(4), int([0, 2]), tensor([1, 2]) -- as tensors, the floating
ones differentiated when --wrt names them), a module's parameters keyword inputs too; and
the whole call is checked against the op's signature before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.op import signature as sig
from gradcheck_cli.values import Value, is_tensor_text, parse_values


@dataclass
class Call:
    """Everything the OpSpec of a CLI op check is built from."""

    fn: object
    slots: list = field(default_factory=list)  # per positional argument: an input name or runner.Fixed
    kwargs: dict = field(default_factory=dict)
    keyword_inputs: set = field(default_factory=set)
    values: dict = field(default_factory=dict)  # input name -> Value (floating: what the gate varies)
    given: dict = field(default_factory=dict)  # int / bool values by name, for the report's point
    default_wrt: list = field(default_factory=list)
    order: list = field(default_factory=list)  # every named value, in the order the user gave them


def build_call(target, at: list, kw: list, *, seed: int, complex_: bool, device: str, dtype: str) -> Call:
    """The call of a loaded target (targets.OpTarget) with --at and --kw, checked against
    its signature.  Raises UserInputError for what cannot be called."""
    from gradcheck_cli.op.loading import parse_kw

    names_at = [k for k, _ in at]
    seen: set = set()
    for k, _ in kw:
        if k in seen:
            raise UserInputError(f"--kw {k!r} is given twice")
        if k in names_at:
            raise UserInputError(f"{k!r} is given both as --at (an input) and --kw (a keyword argument)")
        seen.add(k)
    tensor_kw = [(k, v) for k, v in kw if is_tensor_text(v)]
    parsed = parse_values(list(at) + tensor_kw, seed, complex_)  # one seeded stream: --at first, in order
    tensor_names = {k for k, _ in tensor_kw}
    plain = {k: parse_kw(k, v) for k, v in kw if k not in tensor_names}
    sig.check_call(target.signatures, target.label, names_at, [k for k, _ in kw])
    call = Call(target.fn, order=names_at + [k for k, _ in tensor_kw])
    for name in names_at:
        _positional(call, parsed[name], device)
    for k, _ in kw:
        if k in plain:
            call.kwargs[k] = plain[k]
        else:
            _keyword_tensor(call, parsed[k], device)
    if target.kind == "module":
        _module_parameters(call, target, names_at + [k for k, _ in kw], dtype, device)
    if not call.values:
        raise UserInputError("gradcheck op needs at least one floating-point input: int(...) and bool(...) values "
                             "are passed as they are, never differentiated")
    return call


def _tensor(value: Value, device: str):
    import torch

    return torch.tensor(value.array, device=device)  # int64 / bool, as given


def _positional(call: Call, value: Value, device: str) -> None:
    from gradcheck_cli.op.runner import Fixed

    if value.differentiable:
        call.slots.append(value.name)
        call.values[value.name] = value
        call.default_wrt.append(value.name)
    else:
        call.slots.append(Fixed(_tensor(value, device)))
        call.given[value.name] = value.array


def _keyword_tensor(call: Call, value: Value, device: str) -> None:
    """A --kw tensor: a floating one is an input (differentiated when --wrt names it)."""
    if value.differentiable:
        call.kwargs[value.name] = value.name
        call.keyword_inputs.add(value.name)
        call.values[value.name] = value
    else:
        call.kwargs[value.name] = _tensor(value, device)
        call.given[value.name] = value.array


def _module_parameters(call: Call, target, taken: list, dtype: str, device: str) -> None:
    """A module's parameters join the inputs (keyword inputs of its functional call); the
    trainable ones are differentiated by default."""
    from gradcheck_cli.op.module import check_names, prepare_module

    prepared = prepare_module(target.module, dtype, device, target.label)
    check_names(prepared, taken)
    call.fn = prepared.op
    for name, tensor in prepared.parameters.items():
        call.kwargs[name] = name
        call.keyword_inputs.add(name)
        call.values[name] = Value(name, tensor.numpy(), f"parameter{list(tensor.shape)}", False)
    call.default_wrt += list(prepared.trainable)


def choose_wrt(names: tuple, wrt, default=None, refused=()) -> tuple:
    """--wrt (in its order: gradients and Hessian rows follow it, as the contract says) or
    `default` (all of `names` when None: the CLI's default is the floating --at inputs and a
    module's trainable parameters); names that are not inputs, or are integer or boolean
    ones (`refused`), are refused with why."""
    chosen = tuple((names if default is None else default) if wrt is None else wrt)
    if not chosen:
        raise UserInputError("--wrt names no input")
    for w in chosen:
        if w in refused:
            raise UserInputError(f"--wrt {w!r}: {w!r} is an integer or boolean tensor (int(...), bool(...)); only "
                                 "floating-point inputs are differentiated")
        if w not in names:
            raise UserInputError(f"--wrt {w!r}: the op has no input {w!r} (its inputs: {', '.join(names)})")
    if len(set(chosen)) != len(chosen):
        raise UserInputError("--wrt names an input twice")
    return chosen
