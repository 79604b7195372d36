"""Fast mode's memory (issue 7): a 1e6-element `gradcheck op --mode fast` within a few
vectors of what the op itself needs, and the streaming machinery that keeps it there
(one projection, one sampled row, one finite-difference point at a time) giving the same
answers as the batched path.

Truths: torch's own autograd for the op (the floor), exact Jacobian-vector products of
polynomials (central differences are exact for them up to rounding), numpy's own draws
(for the re-drawn directions), and the batched path of the same check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import op_zoo
from gradcheck_cli.op import checks as ops_checks, determinism, fast as ops_fast, memory
from gradcheck_cli.op.api import check_op
from gradcheck_cli.op.directions import Direction, direction_fd
from gradcheck_cli.op.batched import BatchedForward
from gradcheck_cli.op.runner import OpSpec

ROOT = Path(__file__).resolve().parent.parent
SWISH = ROOT / "samples" / "ops" / "swish.py"
N = 1_000_000
INPUTS_MIB = N * 8 / 2**20  # one float64 input of 1e6 elements


def codes(report) -> set:
    return {d.code for c in report.checks for d in c.diagnostics}


def only(report):
    (check,) = report.checks
    return check


# ---- peak RSS at 1e6 elements (subprocesses, measured side by side) ---------------------------

def _peak_rss_mib(cmd: list) -> float:
    """ru_maxrss of `cmd` run as the only child of a fresh interpreter (Linux: KiB)."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, timeout=300)
    rc, kib = out.stdout.split()
    assert rc in ("0", "1"), out.stderr
    return int(kib) / 1024


def _available_mib() -> float:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError):
        return float("inf")


# What the op needs by itself for any gradient check: its forward with autograd, and a
# backward call while one earlier gradient is held.
FLOOR = textwrap.dedent("""
    import importlib.util, sys
    import torch, sympy, numpy
    spec = importlib.util.spec_from_file_location("swish", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = torch.randn(1000000, dtype=torch.float64)
    xt = x.clone().requires_grad_(True)
    y = mod.Swish.apply(xt)
    v = torch.randn(1000000, dtype=torch.float64)
    g1, = torch.autograd.grad(y, xt, v, retain_graph=True)
    g2, = torch.autograd.grad(y, xt, v)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
@pytest.mark.skipif(_available_mib() < 2048, reason="needs about 2 GiB of free memory")
def test_fast_mode_at_a_million_elements_stays_within_a_few_vectors(tmp_path):
    """Issue 7's measurement: peak RSS of the 1e6-element fast-mode check next to torch's
    baseline (import torch, sympy, numpy and the input itself, as benchmarks/run.py does).

    Bounds, both measured here side by side:
    * against the op's own floor (its forward and two backward calls, holding one gradient,
      in a bare script): at most 3 x the input plus 8 MiB of noise (today 342 MiB against a
      floor of 325-341 with glibc's default malloc settings).  The old fast mode held the
      (projections x N) and (rows x N) matrices and batched four points per call: ~880 MiB,
      500 over this bound;
    * against the baseline: a gross-regression guard at 140 MiB (today ~85: the op's floor
      above is already ~80 of it, since every check needs a forward graph and a backward's
      working set, ~8 vectors of 8 MiB for swish).  The tight bound is the first one; this
      one leaves room for allocator and library-version noise on other machines."""
    gc = [sys.executable, "-m", "gradcheck_cli"]
    ours = _peak_rss_mib(gc + ["op", f"{SWISH}:Swish", "--at", f"x=randn({N})", "--mode", "fast"])
    floor_script = tmp_path / "floor.py"
    floor_script.write_text(FLOOR, encoding="utf-8")
    floor = _peak_rss_mib([sys.executable, str(floor_script), str(SWISH)])
    baseline = _peak_rss_mib([sys.executable, "-c", "import torch, sympy, numpy; "
                              f"x = torch.randn({N}, dtype=torch.float64)"])
    numbers = f"ours {ours:.0f} MiB, op floor {floor:.0f} MiB, baseline {baseline:.0f} MiB"
    assert ours <= floor + 3 * INPUTS_MIB + 8, numbers
    assert ours <= baseline + 140, numbers


def test_numpy_working_set_of_a_large_fast_check_is_a_few_vectors():
    """numpy's allocations (tracemalloc sees them; torch's it does not) at 3e5 elements, where
    one point fills a call: about seven vectors (the input's copy, the untouched noise
    zeros, and finite differences' running combinations), never a (k, n) matrix."""
    n = 300_000
    check_op(op_zoo.Swish, torch.randn(10, dtype=torch.float64), mode="fast")  # imports, first calls
    x = torch.randn(n, dtype=torch.float64)
    tracemalloc.start()
    try:
        report = check_op(op_zoo.Swish, x, mode="fast")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.passed
    assert only(report).extra["fd_batching"] == {"x0": "loop"}  # one point per call: nothing to batch
    assert peak <= 9 * n * 8, f"numpy peak {peak / (n * 8):.1f} vectors"


# ---- the streaming path gives the batched path's answers -------------------------------------

@pytest.fixture
def streaming(monkeypatch):
    """Fast mode as at 1e6 elements, on small inputs: one point per forward call."""
    monkeypatch.setattr(ops_fast, "STREAM_ELEMENTS", 100)


@pytest.mark.parametrize("op,code", [
    (op_zoo.SwishScaled, "scale_error"), (op_zoo.SwishSignRegion, "wrong_sign"),
    (op_zoo.SwishIgnoresGrad, "grad_output_ignored"), (op_zoo.SwishAssumesContiguous, "noncontiguous_grad_output"),
    (op_zoo.SwishSubtle, "scale_error"), (op_zoo.SwishStaleBuffer, "nondeterministic"),
    (op_zoo.SwishIgnoresGrad, "zero_grad_output"), (op_zoo.SigmoidInplace, "input_mutated"),
], ids=["scale", "sign", "ignored", "noncontiguous", "subtle", "stale", "zero", "inplace"])
def test_streaming_fast_mode_catches(streaming, op, code):
    report = check_op(op, torch.randn(40, 60, dtype=torch.float64), mode="fast")
    assert not report.passed and code in codes(report)
    assert set(only(report).extra["fd_batching"].values()) == {"loop"}


@pytest.mark.parametrize("op,make", [
    (op_zoo.Swish, lambda: [torch.randn(40, 60, dtype=torch.float64)]),
    (op_zoo.MatMul, lambda: [torch.randn(12, 10, dtype=torch.float64), torch.randn(10, 14, dtype=torch.float64)]),
    (op_zoo.PolarPair, lambda: [torch.randn(2000, dtype=torch.float64), torch.randn(2000, dtype=torch.float64)]),
    (op_zoo.SoftmaxFn, lambda: [torch.randn(20, 100, dtype=torch.float64)]),
], ids=["swish", "matmul", "two-outputs", "softmax"])
def test_streaming_and_batched_fast_mode_agree(monkeypatch, op, make):
    """The same draws either way (batching draws nothing before the finite differences), so
    the same entries; finite differences one point per call agree with four per call."""
    torch.manual_seed(0)
    args = make()
    batched = only(check_op(op, *args, mode="fast", seed=5))
    monkeypatch.setattr(ops_fast, "STREAM_ELEMENTS", 100)
    streamed = only(check_op(op, *args, mode="fast", seed=5))
    assert batched.passed and streamed.passed
    for a, b in zip(batched.gradients, streamed.gradients):
        np.testing.assert_array_equal(a.entries, b.entries)
        np.testing.assert_array_equal(a.autograd, b.autograd)
        np.testing.assert_allclose(b.finite_difference, a.finite_difference, rtol=1e-7, atol=1e-9)
        pa, pb = a.details["projections"], b.details["projections"]
        np.testing.assert_array_equal(pa["autograd"], pb["autograd"])
        np.testing.assert_allclose(pb["finite_difference"], pa["finite_difference"], rtol=1e-7)


def test_streaming_fast_mode_passes_order2_and_reports_a_wrong_second_derivative(streaming):
    x = torch.randn(15, 20, dtype=torch.float64)
    assert check_op(op_zoo.SinSquared, x, mode="fast", order=2).passed
    report = check_op(op_zoo.SinSquaredWrong2nd, x, mode="fast", order=2)
    assert not report.passed and "double_backward_mismatch" in codes(report)


# ---- sampled rows: sparse rows are kept, dense ones computed again ----------------------------

TimesSum = op_zoo.TimesSum


class TimesSumNoCross(TimesSum):
    """Forgets the cross term (g . x): right on the diagonal only."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.sum()


# Jacobian backward calls at one grad_output per call: the first projection's v^T J is the
# determinism check's (whose repeat, a batched call of one, also checks batching), so 3 more
PROJECTION_CALLS = 3


@pytest.mark.parametrize("op,passes,backward_calls", [
    # 2 grouped calls find the rows dense, 8 one-hot rows, the 8 dense rows again for their entries
    (TimesSum, True, PROJECTION_CALLS + 2 + 8 + 8),
    # its rows are diagonal (sparse): 2 grouped calls give them all, kept; finite differences see the rest
    (TimesSumNoCross, False, PROJECTION_CALLS + 2),
], ids=["right", "no-cross-term"])
def test_dense_sampled_rows_are_computed_again_not_held(streaming, op, passes, backward_calls):
    report = check_op(op, torch.randn(3000, dtype=torch.float64), mode="fast")
    check = only(report)
    assert report.passed is passes
    if not passes:
        assert "gradient_mismatch" in codes(report)
    assert check.extra["calls"]["jacobian_backward"] == backward_calls


def test_sparse_sampled_rows_are_kept(streaming):
    """The 8 sampled rows of an elementwise op from 2 grouped backward calls (float64), not 8."""
    check = only(check_op(op_zoo.Swish, torch.randn(3000, dtype=torch.float64), mode="fast"))
    assert check.passed and check.extra["calls"]["jacobian_backward"] == PROJECTION_CALLS + 2


# ---- determinism: the second run is kept only where it differs --------------------------------

class NoisyAtZero(op_zoo.Swish):
    """A backward that adds a fresh random amount to element 0 on every call."""

    @staticmethod
    def backward(ctx, g):
        d = op_zoo.Swish.backward(ctx, g).clone()
        d.view(-1)[0] += 1e-3 * (1 + torch.rand(()).item())
        return d


def test_nondeterminism_message_shows_three_different_runs(streaming):
    report = check_op(NoisyAtZero, torch.randn(3000, dtype=torch.float64), mode="fast")
    msg = [d.message for d in only(report).diagnostics if d.code == "nondeterministic"][0]
    values = [float(v) for v in msg.split("at x0[0]: ")[1].rstrip(")").split(", ")]
    assert len(values) == 3 and len(set(values)) == 3, msg


# ---- mutation: compared with the arrays the inputs were made from, without a copy -------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("fn,mutates", [
    (lambda x: x * 2, False),
    (lambda x: x.detach().mul_(1.0) * 2, False),  # writes the same values back: not a mutation
    (lambda x: x.detach().add_(1e-3) * 2, True),
    (lambda x: x.detach().fill_(float("nan")) * 2, True),
], ids=["pure", "same-values", "add", "nan"])
def test_mutation_is_seen_without_a_snapshot_copy(dtype, fn, mutates):
    x = torch.tensor([1.0, float("nan"), -2.5, float("inf")], dtype=dtype)
    report = check_op(fn, x)
    assert ("input_mutated" in codes(report)) is mutates


# ---- the streaming building blocks against exact answers --------------------------------------

@pytest.mark.parametrize("mask", [None, "every-third"], ids=["dense", "masked"])
def test_direction_is_drawn_again_exactly_and_advances_the_generator_like_one_draw(mask):
    n = 200_003  # several pieces, the last one short
    keep = None if mask is None else (np.arange(n) % 3 != 0)
    rng, ref = np.random.default_rng(7), np.random.default_rng(7)
    d = Direction(rng, n, keep)
    first = d.draw(rng)
    expected = ref.standard_normal(n) if keep is None else np.zeros(n)
    if keep is not None:
        expected[keep] = ref.standard_normal(int(keep.sum()))
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(d.again(), expected)
    np.testing.assert_array_equal(d.again(), expected)  # drawn again, not consumed
    assert rng.standard_normal() == ref.standard_normal()


@pytest.mark.parametrize("cap", [10**7, 10], ids=["four-per-call", "one-per-call"])
def test_direction_fd_is_exact_for_a_quadratic(cap):
    """f(x) = 3x + x^2 elementwise: J u = (3 + 2x) u, and central differences of a quadratic
    have no truncation error."""
    n = 5000
    rng = np.random.default_rng(3)
    x = rng.standard_normal(n)
    spec = OpSpec(lambda t: 3 * t + t * t, "quad", ("x",), {}, ("x",), ("x",))
    batch = BatchedForward(spec, {"x": x}, "x", "float64", "cpu", [(n,)], np.random.default_rng(0),
                           max_elements=cap, probes=3 if cap > 10 else 0)
    before = batch.calls
    d = Direction(rng, n)
    u = d.draw(rng)
    f0 = 3 * x + x * x
    ju, err = direction_fd(batch, x, d, float(np.max(np.abs(u))), f0, None, 2.0**-52)
    np.testing.assert_allclose(ju, (3 + 2 * x) * u, rtol=1e-8, atol=1e-8)
    assert np.all(err < 1e-6) and np.all(err >= 0)
    assert batch.mode == ("loop" if cap == 10 else "vmap")
    assert batch.calls - before == (1 if cap > 10 else 4)


# ---- the reported output is the op's own memory, so it must not change under us ---------------

class CachedSin(torch.autograd.Function):
    """sin(x) written into a buffer kept between calls (a cached output): every call hands
    back the same memory, so later calls overwrite what an earlier one returned."""

    buffers: dict = {}

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        out = CachedSin.buffers.setdefault(tuple(x.shape), torch.empty_like(x))
        return out.copy_(torch.sin(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


def test_an_output_buffer_reused_by_later_calls_is_reported_from_a_fresh_call(streaming):
    CachedSin.buffers.clear()
    x = torch.randn(3000, dtype=torch.float64)
    check = only(check_op(CachedSin, x, mode="fast"))
    np.testing.assert_array_equal(np.asarray(check.value["torch"]).reshape(-1), torch.sin(x).numpy())
    assert any(d.code == "warning" and "buffer" in d.message for d in check.diagnostics)
    # the finite differences copied every output before the next call overwrote it
    assert check.passed
    CachedSin.apply(x + 1.0)  # the report is not a window onto the op's buffer afterwards either
    np.testing.assert_array_equal(np.asarray(check.value["torch"]).reshape(-1), torch.sin(x).numpy())


def test_the_report_keeps_its_own_copy_of_the_output():
    """The first call's output is a buffer the caller keeps (written again only after the
    check): the report must not change with it."""
    kept = {}

    def sin_first_into_buffer(x):
        y = torch.sin(x)
        if "buffer" not in kept:
            kept["buffer"] = y
        return y

    x = torch.randn(500, dtype=torch.float64)
    check = only(check_op(sin_first_into_buffer, x, mode="fast"))
    assert check.passed
    with torch.no_grad():
        kept["buffer"].fill_(7.0)
    np.testing.assert_array_equal(np.asarray(check.value["torch"]).reshape(-1), torch.sin(x).numpy())


# ---- large float64 inputs: handed to the op copy-on-write, not copied --------------------------

needs_cow = pytest.mark.skipif(not hasattr(torch, "_lazy_clone"), reason="this torch has no copy-on-write clones")


@pytest.fixture
def share_small(monkeypatch):
    """Inputs shared copy-on-write from 8 elements on (1 << 16 in use), so tests stay small."""
    monkeypatch.setattr(memory, "SHARE_FROM", 8)


@needs_cow
def test_a_large_input_reaches_the_op_as_a_copy_on_write_clone_of_the_pristine_values(share_small):
    seen = []

    def swish_noting_cow(x):
        seen.append(torch._C._is_cow_tensor(x))
        return x * torch.sigmoid(x)

    x = torch.randn(500, dtype=torch.float64)
    report = check_op(swish_noting_cow, x, mode="fast", reference="x0*sigmoid(x0)")
    assert report.passed and seen and seen[0] is True  # the op's first call: the shared input
    np.testing.assert_array_equal(only(report).point["x0"], x.numpy())


@needs_cow
@pytest.mark.parametrize("mode", ["fast", "full"])
def test_an_op_writing_into_a_shared_input_is_caught_and_the_pristine_values_stay(share_small, mode):
    """The write gives the op's tensor a copy of its own: the values the report, the mutation
    check and the finite differences use are still the caller's."""
    def cube_then_scribble(x):
        y = x.detach() ** 3 + 3 * x  # autograd sees 3x only: its gradient is 3, finite differences see 3x^2 + 3
        x.detach().add_(1.0)
        return y

    x = torch.randn(60, dtype=torch.float64)
    report = check_op(cube_then_scribble, x, mode=mode, atol=1e-6, rtol=1e-6)
    check = only(report)
    assert not report.passed and "input_mutated" in codes(report)
    np.testing.assert_array_equal(check.point["x0"], x.numpy())
    # finite differences ran at the caller's point, not at the scribbled one (x + 1)
    (g,) = check.gradients
    expected = 3 * x.numpy() ** 2 + 3
    got = np.asarray(g.finite_difference).reshape(-1)
    rows, cols = (np.asarray(g.entries).T if g.entries is not None else np.divmod(np.arange(got.size), x.numel()))
    diag = rows == cols
    np.testing.assert_allclose(got[diag], expected[cols[diag]], rtol=1e-6)


def test_an_array_that_merely_views_a_tensor_is_not_shared():
    t = torch.randn(100_000, dtype=torch.float64)
    assert memory.owner(t.numpy()) is None
    backed = memory.torch_backed(t.numpy())
    assert memory.owner(backed) is not None and not backed.flags.writeable
    np.testing.assert_array_equal(backed, t.numpy())
    assert memory.owner(np.array(backed)) is None  # a copy of it is not
    small = memory.torch_backed(np.arange(10.0))
    assert memory.owner(small) is None  # below SHARE_FROM: as it was


def test_without_copy_on_write_clones_inputs_are_copied(share_small, monkeypatch):
    monkeypatch.delattr(torch, "_lazy_clone", raising=False)
    x = torch.randn(60, dtype=torch.float64)
    assert memory.owner(memory.torch_backed(x.numpy())) is None
    assert check_op(op_zoo.Swish, x, mode="fast").passed
    report = check_op(lambda t: torch.sin(t.detach().add_(1.0)) + t, x, mode="fast")
    assert "input_mutated" in codes(report)


# ---- the non-contiguous checks at 1e6+ elements: the first gradient computed again ---------

@pytest.fixture
def large_checks(monkeypatch, streaming):
    """The checks as at 1e6 elements (g1 not held through the non-contiguous backward calls)."""
    monkeypatch.setattr(ops_checks, "LARGE", 10)


@pytest.mark.parametrize("op,passes", [(op_zoo.Swish, True), (op_zoo.SwishAssumesContiguous, False)])
def test_noncontiguous_checks_with_the_first_gradient_computed_again(large_checks, op, passes):
    x = torch.randn(40, 60, dtype=torch.float64)
    check = only(check_op(op, x, mode="fast"))
    assert check.passed is passes
    assert ("noncontiguous_grad_output" in {d.code for d in check.diagnostics}) is not passes
    assert check.extra["determinism"]["runs"] == 3


def test_noncontiguous_checks_count_the_extra_backward_calls(monkeypatch, streaming):
    x = torch.randn(40, 60, dtype=torch.float64)  # 2-D: a transposed and a strided layout
    plain = only(check_op(op_zoo.Swish, x, mode="fast")).extra["calls"]["checks_backward"]
    monkeypatch.setattr(ops_checks, "LARGE", 10)
    again = only(check_op(op_zoo.Swish, x, mode="fast")).extra["calls"]["checks_backward"]
    assert again == plain + 2


class FailsAfterStrided(op_zoo.Swish):
    """A backward that raises on every call after it has seen a non-contiguous grad_output."""

    seen = []

    @staticmethod
    def backward(ctx, g):
        if FailsAfterStrided.seen:
            raise RuntimeError("backward broke after a strided call")
        if not g.is_contiguous():
            FailsAfterStrided.seen.append(True)
        return op_zoo.Swish.backward(ctx, g)


def test_a_backward_raising_when_the_first_gradient_is_computed_again_is_an_op_error(large_checks):
    FailsAfterStrided.seen.clear()
    report = check_op(FailsAfterStrided, torch.randn(3000, dtype=torch.float64), mode="fast")
    check = only(report)
    assert not report.passed
    msgs = [d.message for d in check.diagnostics if d.code == "op_error"]
    assert msgs and "backward broke after a strided call" in msgs[0]


# ---- determinism runs first, on two forwards ----------------------------------------------------

class NoisyForward(op_zoo.Swish):
    """A forward that adds fresh noise to its output on every call (its backward is right)."""

    @staticmethod
    def forward(ctx, x):
        return op_zoo.Swish.forward(ctx, x) + 1e-3 * torch.rand_like(x)


def test_a_forward_that_differs_between_calls_is_nondeterministic():
    report = check_op(NoisyForward, torch.randn(50, dtype=torch.float64))
    msgs = [d.message for d in only(report).diagnostics if d.code == "nondeterministic"]
    assert not report.passed and any("forward gives different outputs" in m for m in msgs)


class RaisesOnSecondForward(op_zoo.Swish):
    calls = []

    @staticmethod
    def forward(ctx, x):
        RaisesOnSecondForward.calls.append(1)
        if len(RaisesOnSecondForward.calls) > 1:
            raise RuntimeError("workspace already in use")
        return op_zoo.Swish.forward(ctx, x)


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_a_forward_that_raises_when_run_again_fails_with_every_gradient_not_run(mode):
    RaisesOnSecondForward.calls.clear()
    report = check_op(RaisesOnSecondForward, torch.randn(20, dtype=torch.float64), mode=mode)
    check = only(report)
    assert not report.passed
    msg = [d.message for d in check.diagnostics if d.code == "op_error"][0]
    assert "run again" in msg and "workspace already in use" in msg
    (g,) = check.gradients
    assert g.autograd is None and not g.passed
    np.testing.assert_allclose(np.asarray(check.value["torch"]).reshape(-1), op_zoo.Swish.apply(
        torch.as_tensor(check.point["x0"])).numpy())  # the first call's output is still reported


def test_determinism_compares_three_backward_calls_on_two_forwards():
    seen = []

    class Counting(op_zoo.Swish):
        @staticmethod
        def forward(ctx, x):
            seen.append("forward")
            return op_zoo.Swish.forward(ctx, x)

        @staticmethod
        def backward(ctx, g):
            seen.append("backward")
            return op_zoo.Swish.backward(ctx, g)

    check = only(check_op(Counting, torch.randn(30, dtype=torch.float64), mode="fast"))
    assert check.passed and check.extra["determinism"]["runs"] == 3
    # the first forward's one backward, then the second forward, whose graph every later check uses
    assert seen[:5] == ["forward", "backward", "forward", "backward", "backward"]


@needs_cow
def test_the_pristine_view_outlives_written_and_released_clones():
    """The invariant torch_backed relies on: clones may be written (each then gets a copy of
    its own) and released, and the owner's memory, which the view reads, stays as it was."""
    import gc

    values = np.random.default_rng(0).standard_normal(100_000)
    view = memory.torch_backed(values.copy())
    own = memory.owner(view)
    for _ in range(3):
        clone = torch._lazy_clone(own)
        clone.add_(1.0)  # materializes the clone only
        np.testing.assert_array_equal(clone.numpy(), values + 1.0)
        del clone
        gc.collect()
        np.testing.assert_array_equal(view, values)
    untouched = torch._lazy_clone(own)
    del untouched
    gc.collect()
    np.testing.assert_array_equal(view, values)
    assert torch.equal(own, torch.from_numpy(values))


@needs_cow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shared_float64_values_are_not_a_mutation_of_a_lower_precision_input(share_small, dtype):
    """The op's float32 input is the float64 values rounded: compared as such, not with the
    float64 owner of the pristine values (which differs from it by the rounding)."""
    report = check_op(torch.sin, torch.randn(300, dtype=torch.float64), dtype=dtype, mode="fast")
    assert "input_mutated" not in codes(report), codes(report)


class WrongForwardNoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        raise ValueError("no backward")


def test_reference_checks_run_before_determinism_even_when_the_backward_raises():
    check = only(check_op(WrongForwardNoBackward, torch.randn(5, dtype=torch.float64), reference="sin(x0)"))
    assert {"forward_mismatch", "op_error"} <= {d.code for d in check.diagnostics}
    assert check.value["symbolic"] is not None and check.extra["mode"] == "full"


def test_a_dense_full_mode_jacobian_over_the_limit_is_a_usage_error():
    """Past 16.7M entries full mode needs a sparsity pattern index bits find (issue 16): a
    dense Jacobian is refused (exit 2) after a few forward calls, not computed."""
    from gradcheck_cli.errors import UserInputError

    calls = []

    def plus_total(x):
        calls.append(x.shape)
        return x + x.sum(-1, keepdim=True)

    with pytest.raises(UserInputError, match="--mode full"):
        check_op(plus_total, torch.randn(20000, dtype=torch.float64), mode="full")
    assert len(calls) < 40


def test_a_sparse_full_mode_jacobian_over_the_limit_is_checked():
    """4e8 entries, 2e4 of them nonzero: checked entry by entry, so a backward that raises
    is the op's failure (exit 1), as at any size."""
    report = check_op(op_zoo.RaisesInBackward, torch.randn(20000, dtype=torch.float64), mode="full")
    assert not report.passed and "op_error" in codes(report)


def test_a_second_forward_with_a_nan_is_reported_as_such():
    calls = []

    def nan_on_second_call(x):
        calls.append(1)
        y = torch.sin(x)
        return y + torch.where(torch.arange(x.numel()) == 0, float("nan"), 0.0) if len(calls) == 2 else y

    check = only(check_op(nan_on_second_call, torch.randn(50, dtype=torch.float64), mode="fast"))
    found = {d.code for d in check.diagnostics}
    assert {"nondeterministic", "nonfinite"} <= found, found
    assert not found & {"projection_mismatch", "gradient_mismatch", "noncontiguous_grad_output"}, found


@pytest.mark.parametrize("b,expected", [
    ([1.0, np.nan, np.inf, 2.0], 0.0),  # the same nan and the same infinity: equal
    ([1.0, 1.0, np.inf, 2.0], np.nan),  # a nan on one side only
    ([1.0, np.nan, -np.inf, 2.0], np.inf),
    ([1.5, np.nan, np.inf, 2.0], 0.5),
])
def test_forward_spread_treats_nonfinite_values_as_values(b, expected):
    a = np.array([1.0, np.nan, np.inf, 2.0])
    got = determinism.value_spread(a, np.array(b))
    assert (np.isnan(got) and np.isnan(expected)) or got == expected


def test_determinism_findings_survive_an_op_that_raises_later():
    """Determinism found the second forward different; a finite-difference call raising
    afterwards must not hide that (nor its record)."""
    calls = []

    def drifts_then_raises(x):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("raises in a later forward")
        return x.sin() + (1e-3 if len(calls) == 2 else 0.0)

    for mode in ("full", "fast"):
        calls.clear()
        check = only(check_op(drifts_then_raises, torch.randn(3, 4, dtype=torch.float64), mode=mode))
        found = {d.code for d in check.diagnostics}
        assert {"nondeterministic", "op_error"} <= found, (mode, found)
        assert check.extra["determinism"]["forward_spread"] > 0


def test_a_second_forward_with_other_shapes_is_a_bad_output():
    calls = []

    def reshapes_the_second_time(x):
        calls.append(1)
        y = x.sin()
        return y.reshape(-1) if len(calls) == 2 else y

    check = only(check_op(reshapes_the_second_time, torch.randn(3, 4, dtype=torch.float64)))
    msgs = {d.code: d.message for d in check.diagnostics}
    assert "bad_output" in msgs and "other shapes" in msgs["bad_output"] and "op_error" not in msgs


def test_a_nan_only_on_the_second_call_is_named_as_such():
    calls = []

    def nan_second(x):
        calls.append(1)
        return x.sin() * (float("nan") if len(calls) == 2 else 1.0)

    check = only(check_op(nan_second, torch.randn(5, dtype=torch.float64)))
    msg = [d.message for d in check.diagnostics if d.code == "nonfinite"][0]
    assert "second call" in msg and "pick another point" not in msg


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_an_op_returning_only_empty_tensors_passes_with_a_note_not_a_crash(mode):
    """An empty output is a valid op with an empty Jacobian (issue 12), as in torch."""
    check = only(check_op(lambda x: x[:0].sin(), torch.randn(5, dtype=torch.float64), mode=mode))
    assert check.passed and "empty_output" in check.codes() and "bad_output" not in check.codes()
    assert check.gradients[0].shape == (0, 5) and check.gradients[0].passed


class SparseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (g * x.cos()).to_sparse()


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_a_sparse_gradient_is_read_as_its_dense_values(mode):
    assert check_op(SparseGrad, torch.randn(6, dtype=torch.float64), mode=mode).passed


def test_forward_spread_at_bfloat16_rounding_is_not_nondeterminism():
    """Two bfloat16 forwards that differ by about one bfloat16 ulp (a reduction order, say)
    are within rounding of that dtype; in float32 the same relative spread is not."""
    calls = []

    def wobbles(x):  # the second call with autograd on (determinism's second forward) is a little off
        if torch.is_grad_enabled():
            calls.append(1)
        return torch.sin(x) * (1 + 2.0**-8 * (len(calls) == 2 and torch.is_grad_enabled()))

    x = torch.randn(40, dtype=torch.float64)
    bf16 = check_op(wobbles, x, dtype="bfloat16", mode="fast")
    assert "nondeterministic" not in codes(bf16), codes(bf16)
    calls.clear()
    f32 = check_op(wobbles, x, dtype="float32", mode="fast")
    assert "nondeterministic" in codes(f32)
