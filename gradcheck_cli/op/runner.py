"""Calling the op under test (the "call" stage): building its inputs, reading its
outputs, and backward (vector-Jacobian) calls; batched.py batches both.

Everything that touches the user's code goes through here, so every exception the op
raises is caught in one place and turned into `OpRaised` (a failed check, exit 1) with
the op's own message and the line of the user's file it came from.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from gradcheck_cli.dtypes import torch_dtype
from gradcheck_cli.op.memory import owner

CHUNK_ELEMENTS = 4_000_000  # input + output elements per batched forward call
# fast mode's cap: a batched call holds a few copies of its rows, so at 1e6-element inputs
# one row per call keeps the working set a small multiple of the input (issue 7)
STREAM_ELEMENTS = 1_000_000
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


# What the op may raise that is its own failure (a verdict, exit 1), never the run's end:
# sys.exit() and GeneratorExit inside a forward or backward included.  KeyboardInterrupt
# joins them in worker processes, where a real Ctrl-C never arrives (the parent handles
# it); in process it stays the user's way to stop.
_USER_FAILURES: list = [Exception, SystemExit, GeneratorExit]


def user_failures() -> tuple:
    """The exception types an op's failure is caught as (see catch_keyboard_interrupt)."""
    return tuple(_USER_FAILURES)


def catch_keyboard_interrupt() -> None:
    """In a worker process: KeyboardInterrupt raised by user code is the op's failure too."""
    if KeyboardInterrupt not in _USER_FAILURES:
        _USER_FAILURES.append(KeyboardInterrupt)


class OpRaised(Exception):
    """The op raised while we called it.  `phase` says when ('forward', 'backward', ...)."""

    def __init__(self, phase: str, exc: BaseException):
        super().__init__(f"{phase}: {exc}")
        self.phase = phase
        self.exc = exc
        self.message = describe_exception(exc)


class BadOutput(Exception):
    """The op returned something that is not a floating tensor or a tuple of them."""


MESSAGE_LIMIT = 600  # characters of an exception's message kept in reports


def clipped(text: str) -> str:
    """`text`, cut to MESSAGE_LIMIT characters (marked ' ...')."""
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + " ..."


def describe_exception(exc: BaseException) -> str:
    """'ValueError: the message (at swish.py:14, in backward)': the op's own words and the
    innermost line of user code (not torch's, not ours) it was raised from."""
    text = clipped(f"{type(exc).__name__}: {exc}".strip())
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    torch_dir = _torch_dir()
    user = [f for f in frames if not _inside(f.filename, _PACKAGE_DIR) and not _inside(f.filename, torch_dir)]
    if user:
        f = user[-1]
        text += f" (at {os.path.basename(f.filename)}:{f.lineno}, in {f.name})"
    return text


def _torch_dir() -> str:
    import torch

    return os.path.dirname(os.path.abspath(torch.__file__))


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), folder]) == folder
    except ValueError:
        return False


@dataclass(frozen=True)
class Fixed:
    """A positional argument passed to the op as is (not an input we vary)."""

    value: Any


@dataclass(frozen=True)
class Several:
    """A list or tuple argument whose items are inputs (names) or Fixed values: torch.cat's
    list of tensors, a tuple of weights."""

    kind: type  # list or tuple
    items: tuple


@dataclass
class OpSpec:
    """What to call and how: the callable, its positional slots, keyword arguments, and
    which inputs are differentiated."""

    fn: Callable
    label: str
    slots: tuple  # per positional argument: an input name (str) or Fixed(value)
    kwargs: dict
    names: tuple  # floating inputs, in positional order
    wrt: tuple
    # which of the op's floating outputs are checked (None: all): those that require grad,
    # fixed at the first forward (a mean/rstd statistic, sort indices, an output marked
    # non-differentiable are not, as in torch.autograd.gradcheck)
    outputs: tuple | None = None
    # complex inputs: held and differenced as their real views (..., 2), handed to the op as
    # complex (view_as_complex); complex outputs are read as real views (view_as_real).  The
    # real Jacobian of that map is what torch.autograd.gradcheck checks for complex ops
    # (Wirtinger and conjugate-Wirtinger derivatives together)
    complex_inputs: frozenset = frozenset()
    complex_outputs: bool = False
    keyword_inputs: frozenset = frozenset()  # kwargs whose value is an input (a name) or a list of them
    given: dict = field(default_factory=dict)  # int / bool values passed as they are, by name (for reports)
    order: tuple = ()  # every named value in the order the user gave them (the report's point)
    target: Any = None  # targets.OpTarget when known (a module, a torch.library operator, ...)
    registration_done: bool = False  # registration.py's checks ran (they run once per check, at its first point)

    def _value(self, slot, tensors: dict):
        if isinstance(slot, str):
            return as_complex(tensors[slot]) if slot in self.complex_inputs else tensors[slot]
        if isinstance(slot, Several):
            return slot.kind(self._value(item, tensors) for item in slot.items)
        return slot.value

    def arguments(self, tensors: dict) -> list:
        """The positional arguments of one call: inputs (also inside lists) from `tensors`."""
        return [self._value(s, tensors) for s in self.slots]

    def keywords(self, tensors: dict) -> dict:
        """The keyword arguments of one call: tensor inputs given by keyword from `tensors`."""
        return {k: self._value(v, tensors) if isinstance(v, (str, Several)) and k in self.keyword_inputs else v
                for k, v in self.kwargs.items()}


def as_complex(t):
    """The complex tensor whose real view is `t` (..., 2): a view of it where the layout
    allows (an op that writes into its input writes into ours, for the mutation check),
    else a complex copy built differentiably (a non-contiguous variant, a vmap row)."""
    import torch

    if t.stride(-1) == 1 and t.storage_offset() % 2 == 0 and all(s % 2 == 0 for s in t.stride()[:-1]):
        return torch.view_as_complex(t)
    return torch.complex(t[..., 0], t[..., 1])


def as_real(t):
    """A complex output as real and imaginary parts (..., 2), the layout view_as_real has.
    Built with stack, not view_as_real: view_as_real's backward views grad_output as complex
    and refuses the non-contiguous grad_outputs the checks hand it."""
    import torch

    return torch.stack((t.real, t.imag), dim=-1)


class EmptyOutput(Exception):
    """Every output the op returned is empty: a valid op whose Jacobian has no entries."""


def make_tensors(spec: OpSpec, arrays: dict, dtype: str, device: str, grad: bool = True) -> dict:
    """Fresh tensors for one call: leaves requiring grad for the wrt inputs.  A float64 CPU
    input from torch_backed is a copy-on-write clone of its memory (see there), any other
    a copy."""
    import torch

    td = torch_dtype(dtype)
    out = {}
    for name in spec.names:
        arr = arrays[name]
        own = owner(arr) if dtype == "float64" and device == "cpu" else None
        t = torch._lazy_clone(own) if own is not None else torch.tensor(arr, dtype=td, device=device)
        out[name] = t.requires_grad_(grad and name in spec.wrt)
    return out


def floating_outputs(raw) -> list:
    """The op's differentiable outputs: a tensor, or the floating tensors of a tuple/list."""
    import torch

    items = list(raw) if isinstance(raw, (tuple, list)) else [raw]
    if not items or not any(isinstance(t, torch.Tensor) for t in items):
        raise BadOutput(f"the op returned {type(raw).__name__}; expected a tensor or a tuple of tensors")
    outs = [t for t in items if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]
    # a sparse output (to_sparse) is checked as its dense values: to_dense is differentiable
    # and keeps every Jacobian entry where it was
    outs = [t if t.layout == torch.strided else t.to_dense() for t in outs]
    if not outs:
        raise BadOutput("the op returned no floating-point tensor: there is nothing to differentiate")
    outs = [as_real(t) if t.is_complex() else t for t in outs]
    if not any(t.numel() for t in outs):
        raise EmptyOutput(f"the op returned only empty tensors (shapes {[list(t.shape) for t in outs]})")
    return outs


def checked_outputs(spec: OpSpec, raw) -> list:
    """The outputs of one call that the checks read: the floating ones (complex as real
    views), those chosen at the first forward (spec.outputs).  Every way of calling the op
    (plain, vmap, broadcast) reads its outputs through here."""
    import torch

    outs = floating_outputs(raw)
    if not spec.complex_outputs and any(isinstance(t, torch.Tensor) and t.is_complex()
                                        for t in (raw if isinstance(raw, (tuple, list)) else [raw])):
        spec.complex_outputs = True
    if spec.outputs is not None:
        if max(spec.outputs) >= len(outs):
            raise BadOutput(f"the op returned {len(outs)} floating output(s) here, and more on its first call")
        outs = [outs[k] for k in spec.outputs]
    return outs


def invoke(spec: OpSpec, tensors: dict):
    """The op's raw return value for these input tensors (no exception handling)."""
    return spec.fn(*spec.arguments(tensors), **spec.keywords(tensors))


def call(spec: OpSpec, tensors: dict, phase: str = "forward") -> list:
    """Call the op; its checked outputs as a list (complex ones as real views).
    Exceptions become OpRaised."""
    try:
        raw = invoke(spec, tensors)
    except user_failures() as exc:  # the op's own failure is a verdict, not a crash
        raise OpRaised(phase, exc) from exc
    return checked_outputs(spec, raw)


def flat_numpy(outputs: list, copy: bool = True) -> np.ndarray:
    """Outputs concatenated into one float64 vector (the Jacobian's row space).  With
    copy=False one float64 output on the CPU comes back as a read-only view of its memory."""
    import torch

    if not outputs:
        return np.zeros(0)
    if not copy and len(outputs) == 1:
        flat = outputs[0].detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
        flat.flags.writeable = False
        return flat
    return torch.cat([o.detach().reshape(-1).to(device="cpu", dtype=torch.float64) for o in outputs]).numpy()


def vjp(outputs: list, inputs: list, grad_outputs: list, *, create_graph: bool = False, phase: str = "backward",
        retain_graph: bool = True):
    """torch.autograd.grad with the op's exceptions turned into OpRaised; None kept for
    an input the backward gave no gradient.  Outputs outside autograd's graph (detached,
    or integer-valued masks returned as floats) carry no gradient: they are left out, and
    when none is left every gradient is None (finite differences then show whether that
    is right).  retain_graph=False for the graph's last use: autograd then frees what the
    forward saved for backward."""
    import torch

    keep = [k for k, o in enumerate(outputs) if o.requires_grad]
    if not keep:
        return tuple(None for _ in inputs)
    try:
        return engine_grad([outputs[k] for k in keep], inputs, [grad_outputs[k] for k in keep],
                           retain_graph=retain_graph or create_graph, create_graph=create_graph)
    except user_failures() as exc:
        raise OpRaised(phase, exc) from exc


def engine_grad(outputs: list, inputs: list, grad_outputs: list, *, retain_graph: bool = True,
                create_graph: bool = False, batched: bool = False) -> tuple:
    """torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True), handing the
    grad_outputs to autograd's engine as they are.  Our grad_outputs are built to the
    outputs' exact shape, dtype and device (and, on purpose, sometimes a non-contiguous
    layout), so torch.autograd.grad's validation of them has nothing to find -- and it
    imports SymPy (through torch.fx's symbolic shapes, ~0.4 s) on its first call, which
    a plain op check would otherwise pay at every start.  `batched`: grad_outputs carry a
    leading batch dimension (is_grads_batched, vmap over the backward).  Falls back to
    torch.autograd.grad where the engine's entry point is not there (older torch)."""
    import torch

    run = getattr(torch.autograd.graph, "_engine_run_backward", None)
    vmap = getattr(getattr(torch, "_vmap_internals", None), "_vmap", None)
    if run is None or (batched and vmap is None):
        return torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=retain_graph, create_graph=create_graph,
                                   allow_unused=True, is_grads_batched=batched)
    outputs, inputs = tuple(outputs), tuple(inputs)

    def backward(grads):
        return run(outputs, grads, retain_graph, create_graph, inputs, True, accumulate_grad=False)

    if batched:
        return vmap(backward, 0, 0, allow_none_pass_through=True)(tuple(grad_outputs))
    return backward(tuple(grad_outputs))


def unflatten(vec, outputs: list):
    """Split a flat float64 vector (numpy or torch) into tensors shaped and typed like `outputs`."""
    import torch

    t = torch.as_tensor(vec)
    out, start = [], 0
    for o in outputs:
        n = o.numel()
        out.append(t[start:start + n].reshape(o.shape).to(device=o.device, dtype=o.dtype).contiguous())
        start += n
    return out


def grads_numpy(grads, tensors: list) -> list:
    """Gradients as flat float64 numpy vectors; None stays None."""

    return [None if g is None else grad_numpy(g).copy() for g in grads]


def materialized(g):
    """A gradient as an ordinary dense tensor: a sparse one made dense, a ZeroTensor (what
    torch's own formulas return for a derivative that is 0 everywhere, e.g. torch.sgn on
    real input) made real zeros.  Every gradient is read through here or grad_numpy."""
    import torch

    if g._is_zerotensor():
        return torch.zeros(g.shape, dtype=g.dtype, device=g.device)
    return g if g.layout == torch.strided else g.to_dense()


def grad_numpy(g, rows: int | None = None) -> np.ndarray:
    """A gradient as float64 numpy: flat, or (rows, -1) for a batched one.  It may share
    memory with the gradient: copy before writing."""
    import torch

    g = materialized(g).detach()
    return (g.reshape(-1) if rows is None else g.reshape(rows, -1)).to(device="cpu", dtype=torch.float64).numpy()
