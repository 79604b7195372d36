"""Every performance target of the project, measured side by side in one run.

    python benchmarks/run.py            # the table of medians and ratios
    python benchmarks/run.py --quick    # fewer repeats

Each row times two things on this machine, in fresh processes where a user would
start one, and prints both medians and their ratio next to the goal (gradcheck_cli
byte-compiled first, as a regular install has it; no persistent server unless a row says
so):

  help          `gradcheck --help`                 vs `python -c pass`
  single check  the seed example, `gradcheck check`   vs `python -c "import torch, sympy"`
  op start-up   `gradcheck op torch:tanh --at x=randn(3) --mode full` vs `python -c "import torch"`
  op, server up the same with `gradcheck server start` run before (torch imported once, by the server)
  check, server up  the seed example with the server up  vs `python -c "import torch, sympy"`
  hand script   the seed example, `gradcheck check`   vs a hand-written torch+sympy+numpy script
  symbolic 1e5  mean((x-mean(x))**2), x=randn(1e5)    (seconds; goal: a few)
  numdifftools  gradient of sum(sin(x)*exp(x)) n=200  gradcheck's FD engine vs numdifftools.Gradient
  suite / op    benchmarks/bench_suite.py and bench_op.py (30 checks vs one; op vs torch gradcheck)
  expressions   benchmarks/bench_expr.py (check_expression at N = 1e3..1e6 vs a hand-written script)
  op scale      benchmarks/bench_op_scale.py (--mode full, n = 1e3..1e5, vs torch's slow gradcheck)
  op fast       benchmarks/bench_op_fast.py (--mode fast at 1e4..1e6 vs torch's fast_mode)
  isolation     benchmarks/bench_isolation.py (suites in worker processes: --jobs 1 and 2 vs in process)
  memory        peak RSS of a 1e6-element `gradcheck op --mode fast` vs torch.autograd.gradcheck's fast
                mode on the same op, and vs torch running the op itself
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ["GRADCHECK_SERVER"] = "off"  # cold timings: a persistent server running here must not serve them

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEED = ["check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2", "--at", "b=1", "--at",
        "x=6.7", "--wrt", "w,b", "--dtype", "float32"]
OP_SMALL = ["op", "torch:tanh", "--at", "x=randn(3)", "--mode", "full"]  # a small plain op, no --reference


def gradcheck_cmd() -> list[str]:
    exe = shutil.which("gradcheck") or str(Path(sys.executable).with_name("gradcheck"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "gradcheck_cli"]


def wall(cmd: list[str], env=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - start


def medians(a: list[str], b: list[str], repeat: int, env_a=None) -> tuple[float, float]:
    """Interleave the two commands so a noisy neighbour hits both alike."""
    ta, tb = [], []
    wall(a, env_a), wall(b)  # warm the page cache
    for _ in range(repeat):
        ta.append(wall(a, env_a))
        tb.append(wall(b))
    return statistics.median(ta), statistics.median(tb)


def served_rows(gc: list[str], repeat: int) -> None:
    """The small op and the seed check again while `gradcheck server` serves this
    environment (started here, in a private folder, and stopped after): torch and SymPy
    are imported once, by the server, and the whole command runs in a process forked from it."""
    from bench_isolation import private_server  # main() put this folder on sys.path

    with private_server(gc) as env:
        ours, base = medians(gc + OP_SMALL, [sys.executable, "-c", "import torch"], repeat, env_a=env)
        row("op, server up", ours, base, f"none (opt-in `gradcheck server start`): {ours - base:+.2f} s against "
            "importing torch alone")
        ours, base = medians(gc + SEED, [sys.executable, "-c", "import torch, sympy"], repeat, env_a=env)
        row("check, server up", ours, base, f"none (opt-in): {ours - base:+.2f} s against importing torch, sympy")


def row(name: str, ours: float, theirs: float | None, goal: str, unit: str = "s") -> None:
    ratio = f"{ours / theirs:6.2f}x" if theirs else "      "
    base = f"{theirs:8.3f} {unit}" if theirs else " " * 10
    print(f"{name:<16} {ours:8.3f} {unit}  {base}  {ratio}   goal {goal}", flush=True)


def symbolic_100k() -> float:
    start = time.perf_counter()
    from gradcheck_cli import check_expression

    report = check_expression("mean((x - mean(x))**2)", {"x": "randn(100000)"})
    assert report.checks[0].gradients[0].symbolic is not None
    return time.perf_counter() - start


def numdifftools_row() -> tuple[float, float | None, str]:
    import numpy as np

    from gradcheck_cli.engines import finite_diff
    from gradcheck_cli.expr import parse, shapes

    x = np.random.default_rng(0).standard_normal(200)
    root = parse("sum(sin(x)*exp(x))")
    node_shapes = shapes.infer(root, {"x": x.shape}, "sum(sin(x)*exp(x))")
    start = time.perf_counter()
    ours = finite_diff.jacobian(root, {"x": x}, "x", (), scheme="richardson", max_numel=200).jacobian.reshape(-1)
    t_ours = time.perf_counter() - start
    truth = np.exp(x) * (np.sin(x) + np.cos(x))
    err_ours = float(np.max(np.abs(ours - truth) / np.abs(truth)))
    try:
        import numdifftools as nd
    except ImportError:
        return t_ours, None, f"ours max rel err {err_ours:.1e}; numdifftools not installed (pip install numdifftools)"
    start = time.perf_counter()
    theirs = nd.Gradient(lambda v: float(np.sum(np.sin(v) * np.exp(v))))(x)
    t_theirs = time.perf_counter() - start
    err_theirs = float(np.max(np.abs(theirs - truth) / np.abs(truth)))
    del node_shapes
    return t_ours, t_theirs, f"max rel err: ours {err_ours:.1e}, numdifftools {err_theirs:.1e}"


def worker_peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory of the worker process that ran gradcheck's check (MiB, from the
    JSON report: the check runs in a worker forked from a server, which the parent never
    waits for, so RUSAGE_CHILDREN would see only the parent)."""
    import json

    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True).stdout
    return float(json.loads(out)["checks"][0]["worker_peak_rss_mib"])


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory of a child process, in MiB (ru_maxrss of the largest child)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True).stdout.strip()
    return int(out) / 1024


OP_FLOOR = """import sys, torch
if sys.argv[2] == "same-allocator":  # the malloc setting gradcheck's fast mode uses at this size
    import ctypes
    ctypes.CDLL(None).mallopt(-3, 1 << 20)
sys.path.insert(0, sys.argv[1])
from swish import Swish
x = torch.randn(1000000, dtype=torch.float64, requires_grad=True)
y = Swish.apply(x)
g1, = torch.autograd.grad(y, x, torch.randn_like(y), retain_graph=True)
g2, = torch.autograd.grad(y, x, torch.randn_like(y))
"""

TORCH_FAST = """import sys, torch
sys.path.insert(0, sys.argv[1])
from swish import Swish
x = torch.randn(1000000, dtype=torch.float64, requires_grad=True)
assert torch.autograd.gradcheck(Swish.apply, (x,), fast_mode=True)
"""


def memory_row(repeat: int) -> dict:
    """Peak RSS (MiB, median of `repeat` processes) of gradcheck's 1e6-element fast-mode op
    check and of what it is measured against: torch's own gradcheck (fast mode) on the same
    op, and torch running the op's forward and two backward calls in a bare script (with
    glibc's default malloc settings, which vary from run to run, and with the setting
    gradcheck uses, which does not)."""
    op = ROOT / "samples" / "ops" / "swish.py"
    runs = {
        "ours": gradcheck_cmd() + ["op", f"{op}:Swish", "--at", "x=randn(1000000)", "--mode", "fast"],
        "torch_fast": [sys.executable, "-c", TORCH_FAST, str(op.parent)],
        "floor": [sys.executable, "-c", OP_FLOOR, str(op.parent), "default"],
        "floor_same": [sys.executable, "-c", OP_FLOOR, str(op.parent), "same-allocator"],
        "import": [sys.executable, "-c", "import torch, sympy, numpy"],
    }
    out = {k: [] for k in runs}
    for _ in range(repeat):
        for k, cmd in runs.items():
            out[k].append(worker_peak_rss_mb(cmd) if k == "ours" else peak_rss_mb(cmd))
    row = {k: statistics.median(v) for k, v in out.items()}
    row["floor_range"] = (min(out["floor"]), max(out["floor"]))
    row["inputs"] = 1e6 * 8 / 2**20
    return row


def print_memory(mem: dict) -> None:
    ours, inputs = mem["ours"], mem["inputs"]
    print(f"{'memory':<16} {ours:8.0f} MiB  {mem['torch_fast']:6.0f} MiB   {ours / mem['torch_fast']:6.2f}x   goal "
          f"below torch.autograd.gradcheck(fast_mode=True) on the same op: "
          f"{'met' if ours <= mem['torch_fast'] else 'NOT met'}")
    for key, label in (("floor_same", "same malloc setting"), ("floor", "glibc default")):
        floor = mem[key]
        extra = f" (range {mem['floor_range'][0]:.0f}-{mem['floor_range'][1]:.0f})" if key == "floor" else ""
        print(f"{'':<16} {ours:8.0f} MiB  {floor:6.0f} MiB   {ours / floor:6.2f}x   goal <= torch running the op "
              f"itself (forward + 2 backwards, {label}{extra}) + 3x inputs = {floor + 3 * inputs:.0f} MiB: "
              f"{'met' if ours <= floor + 3 * inputs else 'NOT met'} (ours - floor = {ours - floor:+.0f} MiB, "
              f"{(ours - floor) / inputs:+.1f}x inputs)")
    print(f"{'':<16} (bare `import torch, sympy, numpy`: {mem['import']:.0f} MiB; inputs {inputs:.0f} MiB)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else 7
    gc = gradcheck_cmd()
    sys.path.insert(0, str(HERE))
    from bench_isolation import byte_compile

    byte_compile()  # as a regular install has it (see bench_isolation.py)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; medians of {repeat} runs\n")
    print(f"{'':<16} {'gradcheck':>10}  {'baseline':>10}  {'ratio':>7}")
    ours, base = medians(gc + ["--help"], [sys.executable, "-c", "pass"], repeat)
    row("help", ours, base, "no torch/sympy import (tests/test_startup.py)")
    ours, base = medians(gc + SEED, [sys.executable, "-c", "import torch, sympy"], repeat)
    row("single check", ours, base, "<= 1.25x import torch, sympy")
    ours, base = medians(gc + OP_SMALL, [sys.executable, "-c", "import torch"], repeat)
    row("op start-up", ours, base, f"<= import torch + 0.15 s: {'met' if ours <= base + 0.15 else 'NOT met'} "
        f"({ours - base:+.2f} s)")
    served_rows(gc, repeat)
    ours, base = medians(gc + SEED, [sys.executable, str(HERE / "hand_written_check.py")], repeat)
    row("hand script", ours, base, "same work as a hand-written script, plus the table")
    row("symbolic 1e5", symbolic_100k(), None, "a few seconds")
    t_ours, t_theirs, note = numdifftools_row()
    row("numdifftools", t_ours, t_theirs, note)
    if (ROOT / "samples" / "ops" / "swish.py").exists():
        print_memory(memory_row(repeat))
    for script in ("bench_suite.py", "bench_op.py", "bench_expr.py", "bench_op_scale.py", "bench_op_fast.py",
                   "bench_isolation.py"):
        if (HERE / script).exists():
            print(f"\n$ python benchmarks/{script}", flush=True)
            extra = ["--repeat", "2"] if args.quick else []
            subprocess.run([sys.executable, str(HERE / script), *extra], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
