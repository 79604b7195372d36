"""Expression checks at scale, steady state in process: `gradcheck_cli.check_expression`
against the hand-written torch autograd + central-difference script (hand_fd_check.py),
side by side in one run.

    python benchmarks/bench_expr.py                  # N = 1e3, 1e4, 1e5, 1e6, medians of 5
    python benchmarks/bench_expr.py --sizes 1e3,1e4 --repeat 3
    python benchmarks/bench_expr.py --threads 1       # steadier when other processes share the cores

Rows:
  var N        mean((x - mean(x))**2), x = randn(N): the goal is ours <= 5x the hand script
               at every N (issue 16)
  swish N      sum(x*sigmoid(x)): an elementwise function under a sum
  seed         sigmoid(w*x+b), --loss bce --target 0, --wrt w,b, float32: the few-variable check

Both sides work at the same point (the report's own x) and difference the same number of
elements: gradcheck differences every element up to its budget and a seeded sample above
it; the hand script gets exactly as many.  Each side is called once to warm up, then the
two are interleaved `--repeat` times (a noisy neighbour hits both alike); the table shows
both medians, the median of the pairwise ratios ("ratio") and the ratio of the best times
("best": each side when nothing else ran).  A row meets the goal when both ratios do.  Ours does more (symbolic derivatives, error estimates, a step per element,
the report); the ratio says what that costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

os.environ["GRADCHECK_SERVER"] = "off"  # cold timings: a persistent server running here must not serve them

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hand_fd_check import FUNCTIONS, hand_check, seed_check  # noqa: E402

from gradcheck_cli import check_expression  # noqa: E402

EXPRESSIONS = {"var": "mean((x - mean(x))**2)", "swish": "sum(x*sigmoid(x))"}
HAND = {"var": FUNCTIONS["var"], "swish": FUNCTIONS["swish_sum"]}
SEED = dict(at={"w": 2.0, "b": 1.0, "x": 6.7}, wrt=["w", "b"], loss="bce", target=0.0, dtype="float32")
GOAL = 5.0


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(ours, hand, repeat: int) -> tuple[float, float, float, float]:
    """Medians of both, the median of their pairwise ratios (each pair run back to back),
    and the ratio of the best times (what each costs when nothing else runs)."""
    ours(), hand()  # warm-up
    a, b = [], []
    for _ in range(repeat):
        a.append(timed(ours))
        b.append(timed(hand))
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in zip(a, b)), min(a) / min(b)


def expression_row(key: str, n: int, repeat: int) -> tuple[float, float, float, float, int]:
    expr = EXPRESSIONS[key]
    at = {"x": f"randn({n})"}
    check = check_expression(expr, at).checks[0]
    assert check.passed, [d.message for d in check.diagnostics]
    x = np.asarray(check.point["x"], dtype=np.float64)
    fd = np.asarray(check.gradients[0].finite_difference).reshape(-1)
    elements = np.flatnonzero(~np.isnan(fd))  # what ours differenced
    times = side_by_side(lambda: check_expression(expr, at), lambda: hand_check(HAND[key], x, elements), repeat)
    return (*times, elements.size)


def print_row(label: str, ours: float, hand: float, ratio: float, best: float, note: str = "",
              goal: float | None = None) -> None:
    verdict = "" if goal is None else ("   ok" if max(ratio, best) <= goal else "   ABOVE GOAL")
    print(f"{label:<14} {ours * 1e3:10.1f} ms {hand * 1e3:10.1f} ms {ratio:8.2f}x {best:8.2f}x{verdict}  {note}",
          flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e3,1e4,1e5,1e6", help="comma-separated N")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["var", "swish", "seed"], action="append",
                        help="rows to run (repeatable; default all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both sides (default torch's; 1 is steadier on a busy machine)")
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    only = args.only or ["var", "swish", "seed"]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeat}, steady state "
          "in process\n")
    print(f"{'':<14} {'gradcheck':>13} {'hand script':>13} {'ratio':>9} {'best':>9}")
    for key in ("var", "swish"):
        if key not in only:
            continue
        for n in sizes:
            ours, hand, ratio, best, k = expression_row(key, n, args.repeat)
            print_row(f"{key} {n:.0e}", ours, hand, ratio, best, f"({k} elements differenced)",
                      GOAL if key == "var" else None)
    if "seed" in only:
        ours, hand, ratio, best = side_by_side(lambda: check_expression("sigmoid(w*x+b)", **SEED), seed_check,
                                               args.repeat)
        print_row("seed", ours, hand, ratio, best, "(2 scalars, float32)")
    print(f"\ngoal (var rows): gradcheck <= {GOAL:g}x the hand script at every N (both ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
