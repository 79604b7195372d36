"""The cost of running every check in a worker process (issue 11), side by side.

Baseline: the same checks run the way `gradcheck run` ran them before isolation, one
after another in one process (torch and SymPy imported once, a Runner caching parsed
expressions and SymPy models), started as a fresh process like the CLI.  Ours: the CLI
with --jobs 1 and --jobs 2 (a forkserver that imports torch and SymPy once; workers
forked from it).  Suites: samples/specs, and 200 small checks (160 expressions, 40 ops).

    python benchmarks/bench_isolation.py             # best of 3, medians beside
    python benchmarks/bench_isolation.py --repeat 5

Goals: the 200-check suite with --jobs 1 at most 1.3x the in-process baseline (issue 11),
and --jobs 2 at most 0.7x --jobs 1 (issue 16).  Two 200-check suites: the small one (3 to
6 elements a check: the whole suite's checking is under a second beside ~1.9 s of
importing torch and SymPy, which no number of workers shortens) and one of checks at a
working size (64-element expressions, 256-element ops).  The last row is the workers'
share alone: the same suites run again by a warm server (the imports already done).

The persistent server (`gradcheck server start`, suite/daemon.py) removes the imports
from every run: the last rows time the CLI, a fresh process each, with one running (it
is started before and stopped after, in a private folder).  The whole command runs in a
process forked from it (suite/forward.py, hosted.py), and so do its workers.  Before timing, gradcheck_cli
is byte-compiled into its __pycache__ (what `pip install` does for a regular install;
this machine sets PYTHONDONTWRITEBYTECODE=1, so an editable install would compile ~90
modules on every run, 0.09 s that no user of a regular install pays).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["GRADCHECK_SERVER"] = "off"  # cold timings: a persistent server running here must not serve them
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suite import gradcheck_command, timed  # noqa: E402  (the same timing as the suite benchmark)

ROOT = Path(__file__).resolve().parent.parent
GOAL_RATIO = 1.3
EXPRESSIONS = ["sigmoid(x)", "tanh(x)*x", "softplus(x)", "x*sigmoid(x)", "logsumexp(x)", "norm(x)",
               "mean(x**2)", "sum(sin(x)*exp(x))", "log1p(exp(x))", "sqrt(x**2 + 1)"]
OPS = ["samples/ops/swish.py:Swish", "torch.nn.functional:softplus", "torch:tanh", "torch.nn.functional:silu"]

IN_PROCESS = """
import sys
import sympy, torch
from gradcheck_cli.suite import Runner, load
specs, _ = load(sys.argv[1:])
runner = Runner()
failed = sum(not runner.run(spec).passed for spec in specs)
sys.exit(1 if failed else 0)
"""


def write_suite(folder: Path, n_expr: int = 160, n_ops: int = 40, size: int = 1) -> int:
    """n_expr expression checks and n_ops op checks; `size` scales every input (1: 3 to 6
    elements an expression, 2 to 6 rows of 3 an op)."""
    lines = []
    for i in range(n_expr):
        expr = EXPRESSIONS[i % len(EXPRESSIONS)]
        lines += ["[[check]]", f'name = "expr-{i:03d}"', f'expr = "{expr}"',
                  f'at = {{ x = "randn({(3 + i % 4) * size})" }}', f"seed = {i}", ""]
    for i in range(n_ops):
        op = OPS[i % len(OPS)]
        target = str(ROOT / op) if op.startswith("samples") else op
        lines += ["[[check]]", f'name = "op-{i:03d}"', f'op = "{target}"',
                  f'at = {{ x = "randn({(2 + i % 5) * size}, 3)" }}', f"seed = {i}", ""]
    (folder / "suite.toml").write_text("\n".join(lines), encoding="utf-8")
    return n_expr + n_ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cmd = gradcheck_command()
    byte_compile()
    rows = []
    with tempfile.TemporaryDirectory() as small, tempfile.TemporaryDirectory() as large:
        n = write_suite(Path(small))
        write_suite(Path(large), size=16)
        for label, path in (("samples/specs", str(ROOT / "samples" / "specs")), (f"{n} checks", small),
                            (f"{n} at size", large)):
            base = timed([sys.executable, "-c", IN_PROCESS, path], args.repeat)
            one = timed(cmd + ["run", path, "--jobs", "1"], args.repeat)
            two = timed(cmd + ["run", path, "--jobs", "2"], args.repeat)
            rows.append((label, base, one, two))
        warm = {jobs: [warm_run(small, jobs) for _ in range(args.repeat)] for jobs in (1, 2)}
        served = with_server(cmd, [(f"{n} checks", small), (f"{n} at size", large)], args.repeat)
    print(f"python {sys.version.split()[0]}; best of {args.repeat} (median)")
    print(f"{'suite':<16}{'in process (before)':>22}{'--jobs 1':>18}{'--jobs 2':>18}{'1 / before':>12}{'2 / 1':>8}")
    for label, base, one, two in rows:
        def cell(t):
            return f"{min(t):.2f} s ({statistics.median(t):.2f})"
        print(f"{label:<16}{cell(base):>22}{cell(one):>18}{cell(two):>18}{min(one) / min(base):>11.2f}x"
              f"{min(two) / min(one):>7.2f}x")
    print(f"{n} checks, workers' share (a warm server)    --jobs 1 {min(warm[1]):.2f} s   --jobs 2 "
          f"{min(warm[2]):.2f} s   {min(warm[2]) / min(warm[1]):.2f}x")
    for label, one, two in served:
        print(f"{label + ', server up':<28}{'--jobs 1':>10} {min(one):.2f} s ({statistics.median(one):.2f})"
              f"{'--jobs 2':>10} {min(two):.2f} s ({statistics.median(two):.2f}){min(two) / min(one):>8.2f}x")
    label, base, one, two = rows[1]
    ratio = min(one) / min(base)
    print(f"goal: {label} with --jobs 1 <= {GOAL_RATIO}x in process: {ratio:.2f}x "
          f"{'met' if ratio <= GOAL_RATIO else 'NOT MET'}")
    for label, base, one, two in rows[1:]:
        r = min(two) / min(one)
        print(f"goal: {label}, --jobs 2 <= 0.7x --jobs 1: {r:.2f}x {'met' if r <= 0.7 else 'NOT MET'}")
    for label, one, two in served:
        r = min(two) / min(one)
        print(f"goal: {label}, server up, --jobs 2 <= 0.7x --jobs 1: {r:.2f}x {'met' if r <= 0.7 else 'NOT MET'}")
    return 0


@contextlib.contextmanager
def private_server(cmd: list):
    """A persistent server (`gradcheck server start`) in a private folder for the block,
    stopped after; yields the environment whose commands it serves."""
    folder = tempfile.mkdtemp(prefix="gcs", dir="/tmp")  # a socket's path holds 107 bytes
    env = {**os.environ, "GRADCHECK_SERVER": "on", "GRADCHECK_SERVER_DIR": folder}
    subprocess.run(cmd + ["server", "start"], env=env, check=True, capture_output=True)
    try:
        yield env
    finally:
        subprocess.run(cmd + ["server", "stop"], env=env, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def with_server(cmd: list, suites: list, repeat: int) -> list:
    """(label, --jobs 1 times, --jobs 2 times) for each suite, run while a persistent
    server serves this environment; at least 5 runs each: with the imports gone, a run is
    short and noise is larger."""
    rows = []
    with private_server(cmd) as env:
        for label, path in suites:  # --jobs 1 and 2 alternate, so a noisy moment hits both alike
            runs = [(timed(cmd + ["run", path, "--jobs", "1"], 1, env=env)[0],
                     timed(cmd + ["run", path, "--jobs", "2"], 1, env=env)[0]) for _ in range(max(repeat, 5))]
            rows.append((label, [one for one, _ in runs], [two for _, two in runs]))
    return rows


def byte_compile() -> None:
    """gradcheck_cli's bytecode in its __pycache__, as a regular install has it."""
    import compileall

    compileall.compile_dir(str(ROOT / "gradcheck_cli"), quiet=1)


WARM = """
import sys, time
from gradcheck_cli.suite import workers
from gradcheck_cli.suite.run import run_paths
workers.warm_up()
run_paths([sys.argv[1]], {}, jobs=int(sys.argv[2]))  # the server's imports, and a first pass
start = time.perf_counter()
run_paths([sys.argv[1]], {}, jobs=int(sys.argv[2]))
print(time.perf_counter() - start)
"""


def warm_run(path: str, jobs: int) -> float:
    """Seconds of a suite run by a server that is already up (fresh workers, warm imports)."""
    done = subprocess.run([sys.executable, "-c", WARM, path, str(jobs)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
