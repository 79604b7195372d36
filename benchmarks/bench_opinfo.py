"""gradcheck op over PyTorch's own OpInfo corpus, beside torch.autograd.gradcheck (issue 12).

Every op in `torch.testing._internal.common_methods_invocations.op_db` that supports
autograd, its first sample input, in float64 (default), float32, complex128, complex64, bfloat16 or float16
(--dtype; the complex runs take the ops that have a complex backward).  The ops are
torch's own, so they are correct: every failed check is a false alarm of the gate, unless
torch.autograd.gradcheck fails the same op and sample too, or (float32, complex64) the
op's own backward in that dtype is measurably off its float64 backward at the sample
(torch alone: then the check reports the op's numerics); every exception that escapes
check_op is a crash.  Printed side by side: passes, false alarms (with their diagnostic
codes), crashes, what was skipped and why, and the time of both tools.

    python benchmarks/bench_opinfo.py                      # the whole corpus, float64
    python benchmarks/bench_opinfo.py --dtype float32 --limit 150 --seed 0
    python benchmarks/bench_opinfo.py --dtype complex128
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ["GRADCHECK_SERVER"] = "off"  # cold timings: a persistent server running here must not serve them

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from opinfo_cases import (bind, first_sample, low_precision_misses, nonfinite_forward, op_name,  # noqa: E402  (shared harness)
                          sample_dtype, torch_verdict)


def cases(limit: int | None, seed: int, dtype_name: str):
    """(name, fn, tensors, kwargs) for every op, else (name, None, reason, None)."""
    import torch
    from torch.testing._internal.common_methods_invocations import op_db

    dtype = {"float64": torch.float64, "float32": torch.float32, "complex128": torch.complex128,
             "complex64": torch.complex64, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    ops = [op for op in op_db if op.supports_autograd]
    if limit:
        import random

        ops = random.Random(seed).sample(ops, min(limit, len(ops)))
    for op in ops:
        name = op_name(op)
        use = sample_dtype(op, dtype)
        if use is None:
            yield name, None, f"no {dtype_name} backward", None
            continue
        try:
            sample = first_sample(op, use)
        except Exception as exc:  # noqa: BLE001 -- the corpus's own problem
            yield name, None, f"no sample ({type(exc).__name__})", None
            continue
        if sample is None:
            yield name, None, "no sample (StopIteration)", None
            continue
        yield name, bind(op, sample), (sample.input, *sample.args), dict(sample.kwargs)


def torch_ok(fn, tensors: tuple, kwargs: dict) -> tuple[bool | None, float]:
    """torch's verdict as (passed, seconds); None when it could not run."""
    verdict, seconds = torch_verdict(fn, tensors, kwargs)
    return {"pass": True, "fail": False}.get(verdict), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32", "complex128", "complex64",
                                                               "bfloat16", "float16"])
    parser.add_argument("--limit", type=int, default=None, help="a seeded sample of this many ops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true", help="skip torch.autograd.gradcheck's column")
    args = parser.parse_args()
    import torch

    import gradcheck_cli

    warnings.simplefilter("ignore")
    tally = collections.Counter()
    alarms, crashes, skipped, both, imprecise = [], [], collections.Counter(), [], []
    low = args.dtype in ("float32", "complex64", "bfloat16", "float16")  # where the op's own numerics can fail a check
    t_ours = t_torch = 0.0
    for name, fn, tensors, kwargs in cases(args.limit, args.seed, args.dtype):
        if fn is None:
            skipped[tensors] += 1
            continue
        start = time.perf_counter()
        try:
            report = gradcheck_cli.check_op(fn, *tensors, kwargs=kwargs, dtype=args.dtype)
        except gradcheck_cli.UserInputError as exc:  # a clear refusal (sparse inputs): not checked, not a crash
            t_ours += time.perf_counter() - start
            skipped[f"refused ({str(exc)[:40]}...)"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 -- what we are counting
            t_ours += time.perf_counter() - start
            crashes.append((name, f"{type(exc).__name__}: {exc}"[:160], traceback.format_exc(limit=-2)))
            tally["crash"] += 1
            continue
        t_ours += time.perf_counter() - start
        check = report.checks[0]
        torch_passed, seconds = (None, 0.0) if args.no_torch else torch_ok(fn, tensors, kwargs)
        t_torch += seconds
        if report.passed:
            tally["pass"] += 1
        elif torch_passed is False:  # torch's own gradcheck also finds the gradient wrong: not a known-correct op
            tally["both fail"] += 1
            both.append(name)
        elif low and nonfinite_forward(fn, tensors, kwargs):
            # the op's own forward overflows in this dtype at a sample made for float64 (torch alone)
            tally["imprecise"] += 1
            imprecise.append(f"{name} (forward not finite in {args.dtype})")
        elif low and (misses := low_precision_misses(fn, tensors, kwargs, check.gradients[0].tolerance)):
            # torch's own Jacobian in this dtype misses its float64 one beyond the tolerance
            # (torch alone): the failed check reports the op's numerics at this sample
            tally["imprecise"] += 1
            imprecise.append(f"{name} ({misses} entries)")
        else:
            tally["false alarm"] += 1
            codes = sorted(check.codes() - {"symbolic_unavailable"})
            alarms.append((name, codes, next((d.message for d in check.diagnostics
                                              if d.code not in ("symbolic_unavailable", "warning")), "")[:200]))
    total = sum(tally.values())
    print(f"torch {torch.__version__}; {args.dtype}; {total} ops checked, {sum(skipped.values())} skipped")
    print(f"  pass {tally['pass']}   false alarms {tally['false alarm']}   crashes {tally['crash']}   "
          f"fail in torch.autograd.gradcheck too {tally['both fail']} ({', '.join(both)})")
    if low:
        print(f"  torch's own {args.dtype} Jacobian misses its float64 one beyond the tolerance (torch alone, at "
              f"the sample): {tally['imprecise']} ({', '.join(imprecise)})")
    print(f"  time: gradcheck op {t_ours:.1f} s" + ("" if args.no_torch else
                                                   f"   torch.autograd.gradcheck (float64) {t_torch:.1f} s   ratio "
                                                   f"{t_ours / max(t_torch, 1e-9):.2f}x"))
    print("  skipped: " + ", ".join(f"{why} {n}" for why, n in skipped.most_common()))
    by_code = collections.Counter(c for _, codes, _ in alarms for c in codes)
    if alarms:
        print("false alarms by diagnostic: " + ", ".join(f"{c} {n}" for c, n in by_code.most_common()))
        for name, codes, message in alarms:
            print(f"  ALARM {name}: {','.join(codes)}: {message}")
    for name, message, _ in crashes:
        print(f"  CRASH {name}: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
