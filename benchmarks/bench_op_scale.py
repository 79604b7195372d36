"""`gradcheck op --mode full` on an elementwise op from n = 1e3 to 1e5, beside
torch.autograd.gradcheck's slow mode (issue 16: full mode linear in n).

    python benchmarks/bench_op_scale.py                      # n = 1e3, 2000, 4096, 1e4, 1e5
    python benchmarks/bench_op_scale.py --sizes 1000,2000 --torch-max 2000 --repeat 5

Each size runs in a fresh process per tool (so peak memory is the check's own): the
process imports, warms up on n = 10, makes the input, resets its peak RSS (Linux's
clear_refs; elsewhere the peak since start-up counts), then times the check at n (best of --repeat for
gradcheck op, one run for torch, whose slow mode builds two dense n x n Jacobians; above
--torch-max it is not run).  Columns: wall time, forward rows and backward calls (gradcheck
op's own count: the Jacobian's and the other checks'), peak RSS over the warmed-up process
(MiB), and time and memory per element relative to the first size (linear growth: ~1x).
Goals (issue 16): time and memory ~linear from 1e3 to 1e5; n = 2000 <= 0.05x torch's slow
mode; n = 1e5 under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ["GRADCHECK_SERVER"] = "off"  # cold timings: a persistent server running here must not serve them

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, resource, sys, time
import torch


def rss_mib(key):  # VmRSS (now) or VmHWM (peak since the last reset), from /proc
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def reset_peak():  # Linux >= 4.0: VmHWM starts again from VmRSS
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

sys.path.insert(0, sys.argv[1])
from swish import Swish
tool, n, repeat = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
gen = torch.Generator().manual_seed(0)
if tool == "ours":
    from gradcheck_cli.op.api import check_op
    run = lambda x: check_op(Swish, x, mode="full")
else:
    run = lambda x: torch.autograd.gradcheck(Swish.apply, (x.requires_grad_(True),), fast_mode=False)
run(torch.randn(10, dtype=torch.float64, generator=gen))  # imports and first calls
x = torch.randn(n, dtype=torch.float64, generator=gen)
exact = reset_peak()
before = rss_mib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
best, out = float("inf"), None
for _ in range(repeat):
    start = time.perf_counter()
    out = run(x.detach().clone())
    best = min(best, time.perf_counter() - start)
peak = rss_mib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
row = {"time": best, "peak_mib": max(0.0, peak - before)}
if tool == "ours":
    check = out.checks[0]
    assert check.passed, "gradcheck op failed a correct op"
    calls = check.extra["calls"]
    row.update(forward_rows=calls["forward_rows"], backward=calls["jacobian_backward"] + calls.get("checks_backward", 0)
               + calls.get("forward_ad", 0), pattern=check.gradients[0].details["method"].get("fd_pattern", "columns"))
else:
    assert out
print(json.dumps(row))
"""


def measure(tool: str, n: int, repeat: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, os.path.join(HERE, "..", "samples", "ops"), tool, str(n),
                          str(repeat)], capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise SystemExit(f"{tool} at n={n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,4096,10000,100000")
    parser.add_argument("--repeat", type=int, default=3, help="runs of gradcheck op per size; the best counts")
    parser.add_argument("--torch-max", type=int, default=4096, help="largest n torch's slow mode is run at")
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; Swish "
          "(samples/ops/swish.py), float64, --mode full; peak RSS over the warmed-up process (its input included)")
    print(f"{'n':>8} {'ours':>10} {'rows':>5} {'bwd':>4} {'pattern':>8} {'peak':>9} | {'torch slow':>10} {'peak':>9} "
          f"| {'ratio':>7} | {'time/n':>7} {'mem/n':>6}  (relative to the first size)")
    first = None
    for n in sizes:
        ours = measure("ours", n, args.repeat)
        theirs = measure("torch", n, 1) if n <= args.torch_max else None
        first = first or (ours["time"] / n, max(ours["peak_mib"], 1e-9) / n)
        ratio = f"{ours['time'] / theirs['time']:6.3f}x" if theirs else "      —"
        t_col = f"{theirs['time'] * 1e3:8.1f}ms" if theirs else f"{'—':>10}"
        m_col = f"{theirs['peak_mib']:6.1f}MiB" if theirs else f"{'—':>9}"
        print(f"{n:>8} {ours['time'] * 1e3:8.1f}ms {ours['forward_rows']:>5} {ours['backward']:>4} "
              f"{ours['pattern']:>8} {ours['peak_mib']:6.1f}MiB | {t_col} {m_col} | {ratio} | "
              f"{ours['time'] / n / first[0]:6.2f}x {ours['peak_mib'] / n / first[1]:5.2f}x", flush=True)
        if n == 2000 and theirs:
            print(f"{'':>8} goal at n=2000: <= 0.05x torch's slow mode: "
                  f"{'met' if ours['time'] <= 0.05 * theirs['time'] else 'NOT met'}")
        if n == 100000:
            print(f"{'':>8} goal at n=1e5: under 2 s: {'met' if ours['time'] < 2 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
