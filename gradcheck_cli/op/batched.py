"""Many calls of the op at once: batched backward calls for many grad_outputs (VJPMany)
and batched forward calls for many values of one input (BatchedForward), each used only
when it reproduces plain calls, with a plain loop as the fallback."""

from __future__ import annotations

import math
import warnings

import numpy as np

from gradcheck_cli.dtypes import torch_dtype
from gradcheck_cli.op.runner import (
    CHUNK_ELEMENTS,
    OpRaised,
    OpSpec,
    call,
    flat_numpy,
    checked_outputs,
    engine_grad,
    invoke,
    grad_numpy,
    unflatten,
    user_failures,
    vjp,
)
from gradcheck_cli.op.noise import STEPS_FROM, forward_noise, relative_noise
from gradcheck_cli.tolerances import DTYPE_EPS


class VJPMany:
    """Vector-Jacobian products for many grad_outputs at once: batched backward calls
    (is_grads_batched, i.e. vmap over the backward) when the op's backward runs that way
    and agrees with a plain call, else a loop of plain calls."""

    def __init__(self, outputs: list, inputs: list, allow_batched: bool = True,
                 max_elements: int = CHUNK_ELEMENTS):
        self.outputs, self.inputs = outputs, inputs
        self.sizes = [x.numel() for x in inputs]
        self.batched = allow_batched
        self.max_elements = max_elements  # grad_output + gradient elements per batched call
        self.checked = False  # a batched result has been compared with a plain one
        self.calls = 0
        self.none: set = set()  # inputs the backward returned None for
        self.disagreement: str | None = None  # how batched calls differed from a plain one, when they did

    def __call__(self, vectors: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
        """vectors: (k, m) float64 -> (k, N) float64 gradients, inputs concatenated
        (None gradients are zeros here; `none` records them).  `first`: the gradient of
        vectors[0], already known from a plain call (it costs no call, and it is what the
        first batched block is compared with)."""
        result = np.zeros((vectors.shape[0], sum(self.sizes)))
        if first is not None:
            result[0] = first
        done = self._try_batched(vectors, result, first is not None) if self.batched and vectors.shape[0] > 1 \
            and self._per_call(vectors.shape[1]) > 1 else int(first is not None)
        for i in range(done, vectors.shape[0]):
            result[i] = self._plain(vectors[i])
        return result

    def check_batched(self, v: np.ndarray, g: np.ndarray) -> None:
        """Compare one batched backward call (a batch of one) for grad_output v with g, its
        plain result, where no batched call has been compared yet: where calls are too large
        to batch, this is how batching is still checked (one more call)."""
        if not self.unchecked():
            return
        got = self.batched_one(v)
        if got is not None:
            self.settle(got, g)

    def unchecked(self) -> bool:
        """Whether batched calls are on and none has been compared with a plain one yet
        (where check_batched makes its call)."""
        return self.batched and not self.checked

    def batched_one(self, v: np.ndarray) -> np.ndarray | None:
        """v^T J by one batched call (a batch of one), or None where batching is off or the
        backward does not run under vmap (then batching stays off)."""
        if not self.batched:
            return None
        try:
            return self._batched(v[None])[0]
        except user_failures():
            self.batched = False
            return None

    def agrees(self, got: np.ndarray, plain: np.ndarray) -> bool:
        """Whether a batched result is a plain call's for the same grad_output, up to rounding."""
        return _agree(got, plain, self._eps())

    def settle(self, got: np.ndarray, plain: np.ndarray, agreed: bool | None = None) -> None:
        """Record a batched result against the plain result of the same grad_output: batching
        is checked, and switched off (with the disagreement reported) when they differ.
        `agreed`: what agrees(got, plain) already said, when the caller asked it."""
        self.checked = True
        if not (self.agrees(got, plain) if agreed is None else agreed):
            self.disagreement = _describe(got, plain)
            self.batched = False

    def _eps(self) -> float:
        import torch

        dtypes = [o.dtype for o in self.outputs if o.is_floating_point()]
        return float(torch.finfo(dtypes[0]).eps) if dtypes else 2.0**-52

    def _per_call(self, m: int) -> int:
        return max(1, self.max_elements // max(1, sum(self.sizes) + m))

    def per_call(self, m: int) -> int:
        """grad_outputs of length m one batched call takes under the element cap (1: none
        are batched, as at 1e6 elements in fast mode)."""
        return self._per_call(m) if self.batched else 1

    def one(self, v: np.ndarray) -> np.ndarray:
        """v^T J for one grad_output (m,) as a flat float64 (N,) vector, by one plain call.
        The result may share memory with v or with the op's gradient: read it, do not
        write into it."""
        return self._plain(v, copy=False)

    def _plain(self, v: np.ndarray, copy: bool = True) -> np.ndarray:
        go = unflatten(v, self.outputs)
        grads = vjp(self.outputs, self.inputs, go)
        del go
        self.calls += 1
        self.none.update(k for k, g in enumerate(grads) if g is None)
        return _concat(grads, self.sizes, copy)

    def _batched(self, block: np.ndarray) -> np.ndarray:
        import torch

        keep = [k for k, o in enumerate(self.outputs) if o.requires_grad]
        if not keep:
            raise ValueError("no output requires grad")  # plain calls report it per input
        gos, start = [], 0
        for o in self.outputs:
            n = o.numel()
            gos.append(torch.as_tensor(block[:, start:start + n]).reshape((block.shape[0],) + tuple(o.shape))
                       .to(device=o.device, dtype=o.dtype).contiguous())
            start += n
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grads = engine_grad([self.outputs[k] for k in keep], self.inputs, [gos[k] for k in keep], batched=True)
        self.calls += 1
        self.none.update(k for k, g in enumerate(grads) if g is None)
        got = np.zeros((block.shape[0], sum(self.sizes)))
        col = 0
        for g, n in zip(grads, self.sizes):
            if g is not None:
                got[:, col:col + n] = grad_numpy(g, rows=block.shape[0])
            col += n
        return got

    def _try_batched(self, vectors: np.ndarray, result: np.ndarray, known_first: bool = False) -> int:
        """Fill rows of `result` with batched calls; return how many are done (plain calls
        do the rest).  The first batched block includes a row also computed plainly (or
        known: `known_first`, result[0] filled)."""
        k = vectors.shape[0]
        per_call = self._per_call(vectors.shape[1])
        done = int(known_first)
        if not self.checked and not known_first:
            result[0] = self._plain(vectors[0])
            done = 1
        try:
            while done < k:
                stop = min(k, done + per_call)
                if self.checked:
                    result[done:stop] = self._batched(vectors[done:stop])
                else:
                    got = self._batched(vectors[:stop])
                    self.settle(got[0], result[0])
                    if not self.batched:  # it differs: plain calls do the rest
                        return done
                    result[1:stop] = got[1:]
                done = stop
        except user_failures():  # the backward does not run under vmap: plain calls do the rest
            self.batched = False
        return done


def shared_vjps(pt, outputs: list, inputs: list, max_elements: int = CHUNK_ELEMENTS) -> VJPMany:
    """The point's VJPMany on the graph the checks use: the determinism check's (whose
    batched repeat already compared batching with a plain call), its calls counted there,
    or a new one."""
    det = getattr(pt, "determinism", None)
    vjps = getattr(det, "vjps", None)
    if vjps is None or vjps.outputs is not outputs or len(vjps.inputs) != len(inputs) or \
            any(a is not b for a, b in zip(vjps.inputs, inputs)):
        return VJPMany(outputs, inputs, max_elements=max_elements)
    det.vjps = None
    vjps.max_elements, vjps.calls = max_elements, 0
    return vjps


def _agree(a: np.ndarray, b: np.ndarray, eps: float) -> bool:
    """A batched backward's row against the plain call's: equal up to 64 roundings of the
    dtype, relative to the row's largest element (another kernel may sum in another order)."""
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-300)
    with np.errstate(all="ignore"):
        return bool(np.all(np.abs(a - b) <= 64 * eps * scale) or np.array_equal(a, b, equal_nan=True))


def _describe(batched: np.ndarray, plain: np.ndarray) -> str:
    with np.errstate(all="ignore"):
        diff = np.abs(batched - plain)
    j = int(np.argmax(np.nan_to_num(diff, nan=np.inf)))
    return (f"the backward gives {batched[j]:.10g} for gradient element {j} under vmap (a batched backward, as "
            f"torch.func.jacrev, vmap over grad_outputs and is_grads_batched=True run it) where a plain call gives "
            f"{plain[j]:.10g}, for the same grad_output")


def _concat(grads, sizes, copy: bool = True) -> np.ndarray:

    parts = []
    for g, n in zip(grads, sizes):
        parts.append(np.zeros(n) if g is None else grad_numpy(g))
    if len(parts) == 1 and not copy:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0)


class BatchedForward:
    """f(rows) for many values of one input (the others fixed): the op's outputs, flat,
    in float64, one row per point.  Tries, in order, torch.func.vmap, the op's own
    broadcasting over a leading batch dimension, and a plain loop; a batched form is used
    only when it reproduces plain calls on probe points."""

    def __init__(self, spec: OpSpec, arrays: dict, name: str, dtype: str, device: str, out_shapes: list,
                 rng: np.random.Generator, *, max_elements: int = CHUNK_ELEMENTS, probes: int = 3,
                 base: dict | None = None, measure_noise: bool = True):
        """`arrays`: every input (float64); `name` is varied, the others stay fixed.
        `max_elements` caps input + output elements per batched call; `probes` random points
        (besides the point itself) test batching, and with 0 every call is a plain one (where
        one point fills a call, batching gains nothing); `base` may share the fixed inputs, already
        as tensors in `dtype`, between several of these; `measure_noise`: estimate the
        forward's own noise (noise.py) instead of assuming rounding."""
        import torch

        self.spec, self.name, self.dtype, self.device = spec, name, dtype, device
        self.td = torch_dtype(dtype)
        self.out_shapes = [tuple(s) for s in out_shapes]
        self.m = sum(math.prod(s) for s in self.out_shapes)
        self.max_elements = max_elements
        # the fixed inputs only: the varied one is a new tensor in every call
        self.base = {k: (base[k] if base is not None and k in base else torch.tensor(v, dtype=self.td, device=device))
                     for k, v in arrays.items() if k != name}
        self.point = arrays[name]
        self.shape = tuple(np.shape(arrays[name]))
        self.n_in = math.prod(self.shape)
        self.rank = max([len(np.shape(v)) for v in arrays.values()] + [0])
        self.calls = 0
        self.mode = "loop"
        self.noise = np.zeros(self.m)  # per output: how far batched rows may differ from plain calls
        self.noise_eps = 0.0  # the forward's own noise relative to its largest output (noise.py)
        self._choose(np.asarray(arrays[name], dtype=np.float64), rng, probes)
        if measure_noise and self.n_in:
            sigma, f = forward_noise(self, self.x(), DTYPE_EPS[dtype])
            if sigma.size and sigma.any():  # beyond rounding: finite differences must allow for it
                self.noise = np.maximum(self.noise, sigma)
                self.noise_eps = relative_noise(sigma, f)

    def effective_eps(self, eps_dtype: float) -> float:
        """The precision finite differences of this forward can rely on: the dtype's, or the
        forward's measured noise when that is far beyond it (the steps grow to suit)."""
        return max(eps_dtype, self.noise_eps) if self.noise_eps > STEPS_FROM * eps_dtype else eps_dtype

    def x(self) -> np.ndarray:
        """The point of the varied input as the op sees it (rounded to its dtype), flat float64."""
        return self._representable(np.asarray(self.point, dtype=np.float64).reshape(1, -1))[0]

    # -- the three ways to evaluate rows ---------------------------------------------------
    def _inputs(self) -> dict:
        """The fixed inputs, fresh for every call: an op that writes into its inputs must
        not change the next call's point."""
        return {k: v.clone() for k, v in self.base.items()}

    def _plain(self, row: np.ndarray, scratch: bool = False) -> np.ndarray:
        import torch

        tensors = self._inputs()
        tensors[self.name] = self._rows_tensor(row, self.shape, scratch)
        with torch.no_grad():
            outs = call(self.spec, tensors, "forward (finite differences)")
        del tensors
        self.calls += 1
        self._check_shapes(outs)
        return flat_numpy(outs, copy=not scratch)

    def _rows_tensor(self, rows: np.ndarray, shape: tuple, share: bool):
        """The rows as one tensor; `share`: the caller's scratch rows may be handed to the op
        as they are (no copy when the dtype and device already match)."""
        import torch

        if share:
            return torch.as_tensor(rows.reshape(shape), dtype=self.td, device=self.device)
        return torch.tensor(rows.reshape(shape), dtype=self.td, device=self.device)

    def _vmap(self, rows: np.ndarray, share: bool = False) -> np.ndarray:
        import torch

        def one(xb):
            tensors = dict(fixed)
            tensors[self.name] = xb
            outs = checked_outputs(self.spec, invoke(self.spec, tensors))
            return tuple(outs)

        fixed = self._inputs()
        x = self._rows_tensor(rows, (rows.shape[0],) + self.shape, share)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs = torch.func.vmap(one)(x)
        self.calls += 1
        return self._collect(list(outs), rows.shape[0])

    def _native(self, rows: np.ndarray, share: bool = False) -> np.ndarray:
        import torch

        b = rows.shape[0]
        padded = (b,) + (1,) * (self.rank - len(self.shape)) + self.shape
        tensors = self._inputs()
        tensors[self.name] = self._rows_tensor(rows, padded, share)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs = checked_outputs(self.spec, invoke(self.spec, tensors))
        self.calls += 1
        return self._collect(outs, b)

    def _collect(self, outs: list, b: int) -> np.ndarray:
        import torch

        if len(outs) != len(self.out_shapes):
            raise ValueError("batched call changed the number of outputs")
        parts = []
        for o, s in zip(outs, self.out_shapes):
            if tuple(o.shape) != (b,) + s:
                raise ValueError("batched call changed an output's shape")
            parts.append(o.detach().reshape(b, -1).to(device="cpu", dtype=torch.float64))
        if len(parts) == 1:  # no copy: the result is read, never written (it may share the op's memory)
            out = parts[0].numpy()
            out.flags.writeable = False
            return out
        return torch.cat(parts, dim=1).numpy()

    def _check_shapes(self, outs: list) -> None:
        shapes = [tuple(o.shape) for o in outs]
        if shapes != self.out_shapes:
            raise OpRaised("forward (finite differences)", ValueError(
                f"the op's output shapes changed from {self.out_shapes} to {shapes} when only the values of "
                f"{self.name!r} changed"))

    def _choose(self, x: np.ndarray, rng: np.random.Generator, n_probes: int = 3) -> None:
        """Probe points around x; keep the first batched form that reproduces plain calls."""
        if self.n_in == 0 or n_probes <= 0:  # no probes: plain calls (as when one point fills a call)
            return
        scale = np.maximum(1.0, np.abs(x.reshape(-1)))
        probes = np.stack([x.reshape(-1)] + [x.reshape(-1) + 1e-3 * scale * rng.standard_normal(self.n_in)
                                             for _ in range(n_probes)])
        del scale
        probes = self._representable(probes)
        expected = np.stack([self._plain(p) for p in probes])
        forms = (("vmap", self._vmap), ("native", self._native)) if _has_batching_rule(self.spec) else \
            (("native", self._native),)
        for mode, fn in forms:
            try:
                got = fn(probes)
            except user_failures():  # this batched form does not apply to the op: try the next
                continue
            if _same_rows(got, expected, self.dtype):
                self.mode = mode
                with np.errstate(all="ignore"):
                    noise = np.nan_to_num(np.max(np.abs(got - expected), axis=0), nan=0.0)
                if noise.any():  # else keep the untouched zeros (no memory until written)
                    self.noise = noise
                return

    def _representable(self, rows: np.ndarray) -> np.ndarray:
        """Round rows to the dtype the op runs in (identity for float64)."""
        if self.dtype == "float64":
            return rows
        import torch

        return torch.tensor(rows, dtype=self.td).to(torch.float64).numpy()

    def __call__(self, rows: np.ndarray, scratch: bool = False) -> np.ndarray:
        """rows: (B, n_in) float64 points -> (B, m) float64 outputs (read-only: they may share
        the op's memory).  `scratch`: the caller discards `rows` afterwards, so the op may be
        handed their memory instead of a copy."""
        if self.mode == "loop":
            if len(rows) == 1:
                return self._plain(rows[0], scratch)[None]
            return np.stack([self._plain(r) for r in rows]) if len(rows) else np.zeros((0, self.m))
        per_call = self.rows_per_call()
        batched = self._vmap if self.mode == "vmap" else self._native
        if rows.shape[0] <= per_call:
            try:
                return batched(rows, scratch)
            except user_failures():  # a batch size the probe did not see broke it: fall back for good
                self.mode = "loop"
                return self(rows)
        out = np.empty((rows.shape[0], self.m))
        for start in range(0, rows.shape[0], per_call):
            block = rows[start:start + per_call]
            try:
                out[start:start + len(block)] = batched(block, scratch)
            except user_failures():  # a batch size the probe did not see broke it: fall back for good
                self.mode = "loop"
                out[start:] = self(rows[start:])
                return out
        return out

    def rows_per_call(self) -> int:
        """Points per batched call under the element cap (at least one)."""
        return max(1, self.max_elements // max(1, self.n_in + self.m))


def _has_batching_rule(spec: OpSpec) -> bool:
    """False for a torch.library operator without a vmap rule: torch would run it row by
    row anyway (its fallback, which warns on stderr from C++), so plain calls do the same
    without the noise."""
    target = getattr(spec, "target", None)
    overload = getattr(target, "overload", None)
    if overload is None or not target.custom_operator:
        return True
    import torch

    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(overload.name(), "FuncTorchBatched"))


def _same_rows(got: np.ndarray, expected: np.ndarray, dtype: str) -> bool:
    if got.shape != expected.shape:
        return False
    eps = DTYPE_EPS[dtype]
    scale = np.maximum(np.abs(expected), np.max(np.abs(expected), axis=1, keepdims=True) * 1e-3)
    with np.errstate(all="ignore"):
        close = np.abs(got - expected) <= 64 * eps * scale
    close |= (got == expected) | (np.isnan(got) & np.isnan(expected))
    return bool(np.all(close))
