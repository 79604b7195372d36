"""A suite of 30 expression checks in one `gradcheck run` vs one `gradcheck check`.

Both are timed as a user (or a CI job) sees them: a fresh process each, wall clock,
best of --repeat runs.  The goal of issue 4: the suite costs at most 3x one check,
because torch and SymPy load once and parsed expressions and SymPy models are shared.

    python benchmarks/bench_suite.py            # prints the timings and the ratio
    python benchmarks/bench_suite.py --check    # also exits 1 when the ratio is above 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["GRADCHECK_SERVER"] = "off"  # cold timings: a persistent server running here must not serve them

GOAL = 3.0

# 30 checks: 20 distinct expressions (activations, losses, reductions, Jacobians) and
# 10 that reuse an expression at another point or dtype, as real suites do.
EXPRESSIONS = [
    ("sigmoid", "sigmoid(x)", {"x": "randn(4)"}),
    ("tanh", "tanh(x)", {"x": "randn(4)"}),
    ("softplus", "softplus(x)", {"x": "randn(5)"}),
    ("swish", "x*sigmoid(x)", {"x": "randn(5)"}),
    ("gelu-tanh", "0.5*x*(1 + tanh(0.7978845608*(x + 0.044715*x**3)))", {"x": "randn(5)"}),
    ("erf-gelu", "0.5*x*(1 + erf(x/sqrt(2)))", {"x": "randn(5)"}),
    ("logsumexp", "logsumexp(z)", {"z": "randn(6)"}),
    ("norm", "norm(v)", {"v": "randn(6)"}),
    ("dot", "dot(a, b)", {"a": "randn(4)", "b": "randn(4)"}),
    ("mean-sq", "mean(x1**2)", {"x1": "[1, 2, 3, 4, 5]"}),
    ("prod", "prod(x)", {"x": "rand(4)"}),
    ("atan2", "atan2(y, x)", {"y": 0.5, "x": 1.5}),
    ("log1p-exp", "log1p(exp(x))", {"x": "randn(3)"}),
    ("sin-cos", "sin(x)*cos(y)", {"x": 0.3, "y": 1.2}),
    ("rational", "(x**2 + 1)/(x**2 + 2)", {"x": "randn(4)"}),
    ("sqrt", "sqrt(x**2 + 1)", {"x": "randn(4)"}),
    ("asinh-like", "log(x + sqrt(x**2 + 1))", {"x": "randn(4)"}),
    ("softmax-0", "exp(z)/sum(exp(z))", {"z": "randn(4)"}),
    ("linear", "w*x + b", {"w": 0.5, "b": -0.3, "x": "randn(6)"}),
    ("poly", "sum(a*x**3 - 2*x)", {"a": 1.5, "x": "randn(5)"}),
]
LOSSES = [
    ("seed-bce-f32", "sigmoid(w*x+b)", {"w": 2.0, "b": 1.0, "x": 6.7}, "bce", 0, "float32"),
    ("seed-bce-f64", "sigmoid(w*x+b)", {"w": 2.0, "b": 1.0, "x": 6.7}, "bce", 0, "float64"),
    ("bce-logits", "w*x+b", {"w": 2.0, "b": 1.0, "x": 6.7}, "bce_logits", 0, "float32"),
    ("mse", "w*x + b", {"w": 0.5, "b": -0.3, "x": "randn(6)"}, "mse", "randn(6)", "float64"),
]
REUSED = [(f"{name}-again", expr, {k: ("randn(4)" if isinstance(v, str) and v.startswith("randn") else v)
                                   for k, v in at.items()})
          for name, expr, at in EXPRESSIONS[:6]]


def _toml_value(v) -> str:
    if isinstance(v, str):
        return f'"{v}"' if not v.startswith("[") else v
    return repr(v)


def write_suite(folder: Path) -> int:
    """The 30 checks as two spec files; returns how many."""
    lines, count = [], 0
    for name, expr, at in EXPRESSIONS + REUSED:
        at_text = ", ".join(f"{k} = {_toml_value(v)}" for k, v in at.items())
        lines += ["[[check]]", f'name = "{name}"', f'expr = "{expr}"', f"at = {{ {at_text} }}", ""]
        count += 1
    (folder / "expressions.toml").write_text("\n".join(lines), encoding="utf-8")
    lines = []
    for name, expr, at, loss, target, dtype in LOSSES:
        at_text = ", ".join(f"{k} = {_toml_value(v)}" for k, v in at.items())
        lines += ["[[check]]", f'name = "{name}"', f'expr = "{expr}"', f"at = {{ {at_text} }}",
                  f'loss = "{loss}"', f"target = {_toml_value(target)}", f'dtype = "{dtype}"', ""]
        count += 1
    (folder / "losses.toml").write_text("\n".join(lines), encoding="utf-8")
    return count


def gradcheck_command() -> list[str]:
    exe = shutil.which("gradcheck", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "gradcheck_cli"]


def timed(argv: list[str], repeat: int, env: dict | None = None) -> list[float]:
    """Wall seconds of `argv`, a fresh process each run (in `env`, else this one's)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (best is reported)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the ratio is above {GOAL:g}")
    args = parser.parse_args()
    cmd = gradcheck_command()
    with tempfile.TemporaryDirectory() as tmp:
        n = write_suite(Path(tmp))
        single = timed(cmd + ["check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2",
                              "--at", "b=1", "--at", "x=6.7", "--wrt", "w,b", "--dtype", "float32"], args.repeat)
        suite = timed(cmd + ["run", tmp], args.repeat)
    ratio = min(suite) / min(single)
    print(f"one `gradcheck check`:            best {min(single):.2f} s  (median {statistics.median(single):.2f} s)")
    print(f"`gradcheck run` of {n} checks:     best {min(suite):.2f} s  (median {statistics.median(suite):.2f} s)")
    print(f"ratio {ratio:.2f}x (goal <= {GOAL:g}x): {'ok' if ratio <= GOAL else 'ABOVE GOAL'}")
    return 1 if args.check and ratio > GOAL else 0


if __name__ == "__main__":
    sys.exit(main())
