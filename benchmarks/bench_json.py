"""The size and memory of a large JSON report (issue 15), printed as figures and ratios.

The issue's example, `gradcheck check "tanh(x)" --at "x=randn(2000)" --json`, wrote 304 MB
of JSON and took 2.7 GB (dense 2000x2000 Jacobians four times, one number per line).
Measured here, each in a fresh process (peak resident memory, ru_maxrss):

* imports   python with gradcheck, torch and SymPy imported (the floor every run pays);
* check     the check alone, no report written;
* check+json the check and its JSON report rendered (what --json does);
* cli       the command itself, stdout to /dev/null: its peak memory and the bytes written.

The check's own memory is `check - imports`; the JSON's cost is `check+json - check`.
Goals: the report under 5 MB, and the peak with the JSON under 2x the check's own
((check+json - imports) / (check - imports) < 2).

    python benchmarks/bench_json.py                    # this checkout
    python benchmarks/bench_json.py --before /path/to/an/older/checkout   # side by side
    python benchmarks/bench_json.py --n 500            # another size
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["GRADCHECK_SERVER"] = "off"  # cold timings: a persistent server running here must not serve them

ROOT = Path(__file__).resolve().parent.parent
GOAL_BYTES = 5_000_000
GOAL_RATIO = 2.0

STEP = """
import resource, sys
import sympy, torch
from gradcheck_cli import check_expression
stage = sys.argv[1]
n = int(sys.argv[2])
if stage != "imports":
    report = check_expression("tanh(x)", {"x": f"randn({n})"})
    if stage == "json":
        from gradcheck_cli.render import json_out
        text = json_out.render(report)
        sys.stderr.write(f"bytes={len(text.encode())}\\n")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

CLI = """
import resource, subprocess, sys
with open(sys.argv[1], "wb") as out:
    subprocess.run(sys.argv[2:], stdout=out, check=False)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _env(path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    env["PYTHONPATH"] = str(path) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _mib(kib: str) -> float:
    return int(kib) / 1024.0


def measure(path: Path, n: int) -> dict:
    """Peak memory (MiB) of each stage, and the CLI's bytes, for the code at `path`."""
    env = _env(path)
    out = {}
    for stage in ("imports", "check", "json"):
        proc = subprocess.run([sys.executable, "-c", STEP, stage, str(n)], capture_output=True, text=True, env=env,
                              cwd=tempfile.gettempdir(), check=True)
        out[stage] = _mib(proc.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "gradcheck_cli", "check", "tanh(x)", "--at", f"x=randn({n})", "--json"]
        proc = subprocess.run([sys.executable, "-c", CLI, str(report), *cmd], capture_output=True, text=True,
                              env=env, cwd=tmp, check=True)
        out["cli"] = _mib(proc.stdout.strip().splitlines()[-1])
        out["bytes"] = report.stat().st_size
    return out


def row(label: str, m: dict) -> str:
    own = m["check"] - m["imports"]
    ratio = (m["json"] - m["imports"]) / own if own > 0 else float("nan")
    return (f"{label:<8}{m['bytes'] / 1e6:>11.2f} MB{m['imports']:>10.0f}{m['check']:>10.0f}{m['json']:>12.0f}"
            f"{m['cli']:>10.0f}{own:>11.0f}{ratio:>11.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="elements of x (default 2000, the issue's example)")
    parser.add_argument("--before", type=Path, help="an older checkout to measure beside this one")
    args = parser.parse_args()
    rows = []
    if args.before is not None:
        rows.append(("before", measure(args.before.resolve(), args.n)))
    rows.append(("now", measure(ROOT, args.n)))
    print(f'gradcheck check "tanh(x)" --at "x=randn({args.n})" --json; python {sys.version.split()[0]}; '
          "peak resident memory in MiB")
    print(f"{'':<8}{'report':>14}{'imports':>10}{'check':>10}{'check+json':>12}{'cli':>10}{'own':>11}"
          f"{'json/own':>12}")
    for label, m in rows:
        print(row(label, m))
    now = rows[-1][1]
    ratio = (now["json"] - now["imports"]) / max(now["check"] - now["imports"], 1e-9)
    print(f"goal: report < {GOAL_BYTES / 1e6:.0f} MB: {now['bytes'] / 1e6:.2f} MB "
          f"{'met' if now['bytes'] < GOAL_BYTES else 'NOT MET'}; peak with the JSON < {GOAL_RATIO:.0f}x the check's "
          f"own: {ratio:.2f}x {'met' if ratio < GOAL_RATIO else 'NOT MET'}")
    if len(rows) == 2:
        before = rows[0][1]
        print(f"before / now: report {before['bytes'] / now['bytes']:.0f}x smaller, cli peak "
              f"{before['cli'] / now['cli']:.1f}x lower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
