"""The custom-op gate: load -> call -> jacobian -> checks -> verdict -> report -> render.

    loading.py      FILE.py:ATTR / module:ATTR targets, --kw values          (load)
    api.py          check_op / check_op_target: options, inputs, --points
    point.py        one point: call the op, check outputs and inputs         (call)
    runner.py       calling the op and its backward; every user exception caught here
    memory.py       inputs shared copy-on-write; freed memory returned at once
    batched.py      many forward / backward calls at once (vmap, broadcasting)
    gradients.py    references, determinism, then the Jacobian in the chosen mode
    jacobian.py     finite-difference entries, grouped backward calls (jacobian);
                    pattern.py: which outputs depend on which elements, at any size
    full.py         every Jacobian entry (full_entries.py: its O(nonzeros) bookkeeping,
                    full_results.py: verdicts into results);  fast.py: random projections
                    + sampled rows (fast_rows.py)
    checks.py       grad_output variety; determinism.py, mutation.py, order2.py (checks)
    verdict.py      tolerances, elementwise verdicts, naming the bug            (verdict)
    reference.py    --reference: the exact forward and Jacobians from an expression
    state.py        what one point's stages share (Point) and their common verdicts

The result is a report.Report (report), drawn by gradcheck_cli.render (render).
"""

from __future__ import annotations


def check_op(fn, *tensors, **options):
    """Check `fn` (a callable or a torch.autograd.Function) at the given tensors; see
    gradcheck_cli.op.api.check_op."""
    from gradcheck_cli.op.api import check_op as run

    return run(fn, *tensors, **options)


def check_op_target(target: str, at: list, kw: list, **options):
    """`gradcheck op TARGET`; see gradcheck_cli.op.api.check_op_target."""
    from gradcheck_cli.op.api import check_op_target as run

    return run(target, at, kw, **options)
