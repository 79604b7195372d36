"""`gradcheck op --mode full` against torch.autograd.gradcheck's slow mode, side by side.

    python benchmarks/bench_op.py            # elementwise n=2000 and a dense x @ W
    python benchmarks/bench_op.py --n 1000 --dense 32,64,32 --repeat 5

Both sides check the same op at the same point in float64: torch's slow mode computes
the full numerical Jacobian (2n forward calls) and the full analytical one (one backward
per output element); `gradcheck op --mode full` compares every Jacobian entry too, and
also runs its grad_output variety, determinism and mutation checks.  Timings are the
best of --repeat runs in this process (imports and first-call warm-up excluded on both
sides); the ratio is gradcheck op's time over torch's.  Targets: <= 0.05x for the
elementwise op at n = 2000 (issue 16; 0.25x in issue 3), <= 1x for the dense one.  Full
mode from 1e3 to 1e5 elements, time and memory: benchmarks/bench_op_scale.py; fast mode
beside torch's: benchmarks/bench_op_fast.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

os.environ["GRADCHECK_SERVER"] = "off"  # cold timings: a persistent server running here must not serve them

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "samples", "ops"))

from matmul import MatMul  # noqa: E402  (samples/ops: the ops users copy)
from swish import Swish  # noqa: E402

from gradcheck_cli.op.api import check_op  # noqa: E402


def swish_plain(x):
    return x * torch.sigmoid(x)


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(label: str, op, inputs: tuple, repeat: int, torch_repeat: int, target: float) -> float:
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in inputs)
    report = check_op(op, *inputs, mode="full")  # warm-up, and the verdict both must agree on
    assert report.passed, f"{label}: gradcheck op failed a correct op"
    assert torch.autograd.gradcheck(getattr(op, "apply", op), leaves, fast_mode=False)
    ours = best_of(repeat, lambda: check_op(op, *inputs, mode="full"))
    theirs = best_of(torch_repeat, lambda: torch.autograd.gradcheck(getattr(op, "apply", op), leaves,
                                                                     fast_mode=False))
    ratio = ours / theirs
    calls = report.checks[0].extra["calls"]
    verdict = "ok" if ratio <= target else "SLOWER THAN TARGET"
    print(f"{label:<40} gradcheck op {ours * 1e3:9.1f} ms   torch slow {theirs * 1e3:9.1f} ms   "
          f"ratio {ratio:6.3f}x (target <= {target:g}x: {verdict})   "
          f"[forward rows {calls['forward_rows']}, backward calls "
          f"{calls['jacobian_backward'] + calls.get('checks_backward', 0)}]")
    return ratio


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="elementwise size (default 2000)")
    parser.add_argument("--dense", default="16,32,16", help="x @ W sizes M,K,N (default 16,32,16)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of gradcheck op; the best counts")
    parser.add_argument("--torch-repeat", type=int, default=2, help="runs of torch's gradcheck; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, dtype=torch.float64, generator=gen)
    m, k, n = (int(v) for v in args.dense.split(","))
    a = torch.randn(m, k, dtype=torch.float64, generator=gen)
    w = torch.randn(k, n, dtype=torch.float64, generator=gen)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float64; best of "
          f"{args.repeat} (ours) / {args.torch_repeat} (torch)")
    bench(f"x*sigmoid(x), n={args.n} (plain function)", swish_plain, (x,), args.repeat, args.torch_repeat, 0.05)
    bench(f"Swish Function, n={args.n}", Swish, (x,), args.repeat, args.torch_repeat, 0.05)
    bench(f"x @ W, {m}x{k} @ {k}x{n} (torch.matmul)", torch.matmul, (a, w), args.repeat, args.torch_repeat, 1.0)
    bench(f"MatMul Function, {m}x{k} @ {k}x{n}", MatMul, (a, w), args.repeat, args.torch_repeat, 1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
