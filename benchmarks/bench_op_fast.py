"""`gradcheck op --mode fast` beside torch.autograd.gradcheck(fast_mode=True) (issue 16).

    python benchmarks/bench_op_fast.py                 # in process at 1e4, 1e5; as a process at 1e6
    python benchmarks/bench_op_fast.py --repeat 9 --process-n 1000000

In process: both tools on Swish (samples/ops/swish.py) in float64 at the same point, in one
warmed-up interpreter, alternating, median of --repeat runs each (wall and CPU seconds),
with gradcheck op's call counts.  As a process: the whole command a user runs,
`gradcheck op samples/ops/swish.py:Swish --at x=randn(N) --mode fast` against
`python -c` a script that imports torch and runs torch's fast gradcheck on the same op,
alternating, median walls (gradcheck op's JSON to a file, as `> out.json`; through a pipe
too, once), and peak RSS (gradcheck op's check runs in a worker: its peak is the report's
worker_peak_rss_mib; torch's is the child's ru_maxrss).  gradcheck op keeps
every check torch's fast mode does not make: grad_output variety (zero, dense random,
one-hot, non-contiguous), determinism, input mutation, undefined grad_outputs, forward-mode
AD, batched-backward comparison, sampled rows localizing any failure.
Goal (issue 16): at 1e6 as a process, <= 1.3x torch's fast mode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ["GRADCHECK_SERVER"] = "off"  # cold timings: a persistent server running here must not serve them
from run import gradcheck_cmd  # noqa: E402  (benchmarks/ is this script's folder)

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "samples" / "ops"
TORCH_FAST = """import sys, torch
sys.path.insert(0, sys.argv[1])
from swish import Swish
x = torch.randn(int(sys.argv[2]), dtype=torch.float64, requires_grad=True)
assert torch.autograd.gradcheck(Swish.apply, (x,), fast_mode=True)
"""


def in_process(sizes: list[int], repeat: int) -> None:
    import torch

    sys.path.insert(0, str(OPS))
    from swish import Swish

    from gradcheck_cli.op.api import check_op

    check_op(Swish, torch.randn(10, dtype=torch.float64), mode="fast")
    torch.autograd.gradcheck(Swish.apply, (torch.randn(10, dtype=torch.float64, requires_grad=True),), fast_mode=True)
    print(f"in process (torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {repeat})")
    print(f"{'n':>9} {'gradcheck op':>13} {'cpu':>8} {'torch fast':>11} {'cpu':>8} {'ratio':>7}  calls")
    for n in sizes:
        x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        leaf = x.clone().requires_grad_(True)
        ours, theirs, report = [], [], None
        for _ in range(repeat):
            w, c = time.perf_counter(), time.process_time()
            report = check_op(Swish, x, mode="fast")
            ours.append((time.perf_counter() - w, time.process_time() - c))
            w, c = time.perf_counter(), time.process_time()
            assert torch.autograd.gradcheck(Swish.apply, (leaf,), fast_mode=True)
            theirs.append((time.perf_counter() - w, time.process_time() - c))
        assert report.passed, "gradcheck op failed a correct op"
        ow, oc = (statistics.median(v) for v in zip(*ours))
        tw, tc = (statistics.median(v) for v in zip(*theirs))
        print(f"{n:>9} {ow * 1e3:10.1f} ms {oc * 1e3:5.0f} ms {tw * 1e3:8.1f} ms {tc * 1e3:5.0f} ms {ow / tw:6.1f}x  "
              f"{report.checks[0].extra['calls']}", flush=True)


def _ours(n: int, pipe: bool = False) -> tuple[float, float, float]:
    """(wall, worker peak RSS, check duration) of one run, its JSON written to a file as
    `> out.json` would (or, `pipe`, read through a pipe to its end as `| jq` would: the
    worker server lets go of the parent's stdout before its imports, so the reader waits
    for nothing more than the report)."""
    import tempfile

    cmd = gradcheck_cmd() + ["op", f"{OPS / 'swish.py'}:Swish", "--at", f"x=randn({n})", "--mode", "fast", "--json"]
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        if pipe:
            text = subprocess.run(cmd, capture_output=True, text=True).stdout
        else:
            subprocess.run(cmd, stdout=out, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        if not pipe:
            out.seek(0)
            text = out.read()
    check = json.loads(text)["checks"][0]
    assert check["passed"], text[-2000:]
    return wall, float(check.get("worker_peak_rss_mib", float("nan"))), float(check.get("duration_s", float("nan")))


def _torch(n: int) -> tuple[float, float]:
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); "
            "print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-c", TORCH_FAST, str(OPS), str(n)],
                         capture_output=True, text=True)
    rc, wall, kib = out.stdout.split()
    assert rc == "0", out.stderr[-2000:]
    return float(wall), int(kib) / 1024


def as_process(n: int, repeat: int) -> None:
    _ours(n), _torch(n)  # the page cache warm for both
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(_ours(n))
        theirs.append(_torch(n))
    ow, orss, odur = (statistics.median(v) for v in zip(*ours))
    tw, trss = (statistics.median(v) for v in zip(*theirs))
    piped = statistics.median(_ours(n, pipe=True)[0] for _ in range(3))
    print(f"\nas a process at n={n:,} ({os.cpu_count()} cores; medians of {repeat}, alternating)")
    print(f"  gradcheck op --mode fast   {ow:6.2f} s wall (its check {odur:.2f} s in the worker), peak RSS "
          f"{orss:6.0f} MiB")
    print(f"  torch gradcheck fast_mode  {tw:6.2f} s wall, peak RSS {trss:6.0f} MiB")
    print(f"  ratio {ow / tw:.2f}x wall (goal <= 1.3x: {'met' if ow <= 1.3 * tw else 'NOT met'}), "
          f"{orss / trss:.2f}x peak RSS; all walls: ours {sorted(round(w, 2) for w, _, _ in ours)}, "
          f"torch {sorted(round(w, 2) for w, _ in theirs)}")
    print(f"  (its JSON read through a pipe to its end instead of a file: {piped:.2f} s, median of 3)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="in-process sizes")
    parser.add_argument("--process-n", type=int, default=1_000_000, help="the as-a-process size (0: skip)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.sizes:
        in_process([int(float(s)) for s in args.sizes.split(",")], args.repeat)
    if args.process_n:
        as_process(args.process_n, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
