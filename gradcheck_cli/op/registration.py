"""Registration checks for torch.library custom operators: what torch.library.opcheck
tests, next to the gradient checks, so one gate covers both (issue 14).

  fake kernel   the fake (meta) kernel's outputs against the real kernel's: shapes, dtypes,
                devices and significant strides (torch.compile and export trace with it);
  schema        an argument the schema does not declare mutable must not change, and an
                output must not alias an input the schema does not say it aliases;
  autograd      with inputs that require grad, the output carries a graph and its backward
                runs (register_autograd was called, or the op is composite);
  compile       the op under torch.compile(backend="aot_eager") gives the eager outputs and
                gradients.

Each finding is a failing diagnostic (fake_kernel_mismatch, schema_violation,
autograd_not_registered, compile_mismatch) and the report's extra["registration"] says
which checks ran and how each ended.  They run once per check, at the given point.
"""

from __future__ import annotations

import contextlib

import numpy as np

from gradcheck_cli.op.runner import describe_exception, make_tensors, user_failures

# torch's words when no autograd formula exists for an operator
_NO_AUTOGRAD = ("no autograd formula was registered", "autograd kernel was not registered",
                "does not require grad and does not have a grad_fn", "not implemented for autograd")


def no_autograd_message(text: str) -> bool:
    """Whether an exception's text says the operator has no autograd registration."""
    return any(s in text for s in _NO_AUTOGRAD)


def registration_checks(pt) -> None:
    """Every registration check, once per check (its first point); findings into pt."""
    spec = pt.prep.spec
    target = spec.target
    if target is None or not target.custom_operator or spec.registration_done:
        return
    spec.registration_done = True
    import warnings

    with warnings.catch_warnings(), _quiet_dynamo():  # the probes' own warnings are not the op's
        warnings.simplefilter("ignore")
        _run_all(pt, target.overload)


@contextlib.contextmanager
def _quiet_dynamo():
    """torch.compile's graph-break messages go to stderr through logging: not the op's words."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch._dynamo", "torch._inductor", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _run_all(pt, overload) -> None:
    ran: dict = {}
    for name, check in (("fake_kernel", _fake_kernel), ("schema", _schema), ("autograd", _autograd),
                        ("compile", _compile)):
        if name == "compile" and ran.get("fake_kernel") == "failed":
            ran[name] = "not run: torch.compile traces the op with its fake kernel, which failed"
            continue
        problem = check(pt, overload)
        if isinstance(problem, str):  # why it could not run
            ran[name] = f"not run: {problem}"
            continue
        ran[name] = "failed" if problem else "passed"
        if problem and not any(d.code == problem[0] for d in pt.diags):  # once, whoever found it first
            pt.fail(*problem)
        elif problem:
            pt.failed = True
    pt.extra["registration"] = {"operator": str(overload.name()), **ran}
    pt.note("registration_checked", f"{overload.name()}: the checks torch.library.opcheck makes ran: "
                                    + ", ".join(f"{k} {v}" for k, v in ran.items()))


def _call_tensors(pt, grad: bool = False):
    spec, opts = pt.prep.spec, pt.opts
    tensors = make_tensors(spec, pt.arrays, opts.dtype, opts.device, grad=grad)
    return spec.arguments(tensors), spec.keywords(tensors), tensors


def _outputs(raw) -> list:
    import torch

    return [t for t in (raw if isinstance(raw, (tuple, list)) else [raw]) if isinstance(t, torch.Tensor)]


def _fake_kernel(pt, overload):
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    args, kwargs, _ = _call_tensors(pt)
    try:
        real = _outputs(overload(*args, **kwargs))
    except user_failures():
        return "the op raised (the gradient checks report it)"
    try:
        with FakeTensorMode(allow_non_fake_inputs=False) as mode:
            conv = lambda t: mode.from_tensor(t) if isinstance(t, torch.Tensor) else t  # noqa: E731
            fake = _outputs(overload(*torch.utils._pytree.tree_map(conv, args),
                                     **torch.utils._pytree.tree_map(conv, kwargs)))
    except user_failures() as exc:
        missing = "fake" in str(exc).lower() or "meta" in str(exc).lower() or type(exc).__name__.startswith("Unsupp")
        return ("fake_kernel_mismatch", (
            f"{overload.name()}: running the op on fake tensors raised {describe_exception(exc)}"
            + ("; register a fake kernel with torch.library.register_fake (torch.compile and export need it)"
               if missing else "")))
    if len(fake) != len(real):
        return ("fake_kernel_mismatch", f"{overload.name()}: the fake kernel returns {len(fake)} tensor(s), the real "
                                        f"kernel {len(real)}")
    for k, (f, r) in enumerate(zip(fake, real)):
        why = _meta_difference(f, r)
        if why:
            return ("fake_kernel_mismatch", f"{overload.name()}: output {k} of the fake kernel and of the real kernel "
                                            f"differ: {why}")
    return None


def _meta_difference(fake, real) -> str | None:
    import torch

    if any(isinstance(s, torch.SymInt) for s in fake.shape):
        return None  # a data-dependent size: only the real run knows it
    if tuple(fake.shape) != tuple(real.shape):
        return f"shape {list(fake.shape)} (fake) vs {list(real.shape)} (real)"
    if fake.dtype != real.dtype:
        return f"dtype {fake.dtype} (fake) vs {real.dtype} (real)"
    if fake.device.type != real.device.type:
        return f"device {fake.device} (fake) vs {real.device} (real)"
    significant = [d for d, s in enumerate(real.shape) if s > 1]
    if [fake.stride()[d] for d in significant] != [real.stride()[d] for d in significant]:
        return f"strides {list(fake.stride())} (fake) vs {list(real.stride())} (real)"
    return None


def _schema(pt, overload):
    import torch

    schema = overload._schema
    args, kwargs, _ = _call_tensors(pt)
    declared = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    bound = _bind(schema, args, kwargs)
    before = {name: t.detach().clone() for name, t in bound.items() if isinstance(t, torch.Tensor)}
    try:
        out = _outputs(overload(*args, **kwargs))
    except user_failures() as exc:
        text = str(exc)
        if "alias" in text and "custom operator" in text:
            return ("schema_violation", f"{overload.name()}: {text.splitlines()[0][:400]}")
        return "the op raised (the gradient checks report it)"
    for name, old in before.items():
        new = bound[name]
        if name not in declared and not _same(old, new):
            return ("schema_violation", (
                f"{overload.name()}: argument {name!r} is changed in place, but the schema ({schema}) does not "
                f"declare it mutable: declare it with mutates_args=({name!r},) or write into a copy"))
    aliased = {a.alias_info for a in schema.returns if a.alias_info is not None}
    for k, o in enumerate(out):
        for name, t in bound.items():
            if isinstance(t, torch.Tensor) and not aliased and _shares_memory(o, t):
                return ("schema_violation", (
                    f"{overload.name()}: output {k} shares memory with argument {name!r}, but the schema ({schema}) "
                    "says the outputs are new tensors: return a copy (.clone())"))
    return None


def _bind(schema, args: list, kwargs: dict) -> dict:
    names = [a.name for a in schema.arguments]
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    return bound


def _same(a, b) -> bool:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.all((a == b) | (torch.isnan(a) & torch.isnan(b))))
    return bool(torch.equal(a, b.detach()))


def _shares_memory(a, b) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.numel() > 0
    except (RuntimeError, NotImplementedError):
        return False


def _autograd(pt, overload):
    import torch

    args, kwargs, tensors = _call_tensors(pt, grad=True)
    inputs = [tensors[w] for w in pt.prep.spec.wrt]
    try:
        outs = [o for o in _outputs(overload(*args, **kwargs)) if o.is_floating_point() or o.is_complex()]
    except user_failures() as exc:
        if no_autograd_message(str(exc)):
            return ("autograd_not_registered", _no_autograd(overload, str(exc)))
        return "the op raised (the gradient checks report it)"
    if outs and not any(o.requires_grad for o in outs):
        return ("autograd_not_registered", _no_autograd(overload, "its outputs do not require grad although its "
                                                                  "inputs do: gradients silently stop here"))
    try:
        live = [o for o in outs if o.requires_grad]
        torch.autograd.grad(live, inputs, [torch.ones_like(o) for o in live], allow_unused=True)
    except user_failures() as exc:
        if no_autograd_message(str(exc)):
            return ("autograd_not_registered", _no_autograd(overload, str(exc)))
    return None


def _no_autograd(overload, why: str) -> str:
    return (f"{overload.name()} has no autograd formula ({why.splitlines()[0][:300]}); register one with "
            "torch.library.register_autograd(..., backward, setup_context=...)")


def _compile(pt, overload):
    import torch

    spec, opts = pt.prep.spec, pt.opts
    wrt = list(spec.wrt)

    def eager(*xs):
        tensors = dict(zip(wrt, xs)) | fixed
        return _outputs(overload(*spec.arguments(tensors), **spec.keywords(tensors)))

    base = make_tensors(spec, pt.arrays, opts.dtype, opts.device, grad=False)
    fixed = {k: v for k, v in base.items() if k not in wrt}
    xs = [base[w].clone().requires_grad_(True) for w in wrt]
    try:
        want = eager(*xs)
        v = [torch.randn(o.shape, generator=torch.Generator().manual_seed(7), dtype=o.dtype).to(o.device)
             for o in want]
        want_g = _grads(want, xs, v)
    except user_failures():
        return "the eager op or its backward raised (the gradient checks report it)"
    try:
        import torch._dynamo

        compiled = torch.compile(eager, backend="aot_eager", fullgraph=False)
        ys = [x.detach().clone().requires_grad_(True) for x in xs]
        got = compiled(*ys)
        got_g = _grads(got, ys, v)
    except user_failures() as exc:
        return ("compile_mismatch", f"{overload.name()} under torch.compile(backend='aot_eager') raised "
                                    f"{describe_exception(exc)}")
    finally:
        try:
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001 -- resetting dynamo's caches is housekeeping
            pass
    eps = float(torch.finfo(xs[0].dtype).eps) if xs else 2.0**-52
    for what, a_list, b_list in (("output", got, want), ("gradient", got_g, want_g)):
        for k, (a, b) in enumerate(zip(a_list, b_list)):
            if a is None or b is None:
                if (a is None) != (b is None):
                    return ("compile_mismatch", f"{overload.name()}: {what} {k} is None only on one side (compiled "
                                                "vs eager)")
                continue
            a, b = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
            scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-300)
            if a.shape != b.shape or not np.all(np.abs(a - b) <= 64 * eps * scale):
                return ("compile_mismatch", (
                    f"{overload.name()}: {what} {k} under torch.compile(backend='aot_eager') differs from eager "
                    f"(largest difference {float(np.max(np.abs(a - b))) if a.shape == b.shape else float('nan'):.3g}"
                    f" at scale {scale:.3g})"))
    return None


def _grads(outs: list, xs: list, v: list) -> list:
    import torch

    live = [(o, g) for o, g in zip(outs, v) if o.requires_grad]
    if not live:
        return [None] * len(xs)
    return list(torch.autograd.grad([o for o, _ in live], xs, [g for _, g in live], allow_unused=True))
