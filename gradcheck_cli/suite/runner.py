"""Running validated checks: in this one process (torch and SymPy imported once; parsed
expressions and SymPy models cached across checks that share an expression), or in
`--jobs N` worker processes whose results are put back in the suite's order, so the
report does not depend on N."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.suite.shard import parse_shard, select_shard
from gradcheck_cli.suite.spec import CheckSpec, load


class Runner:
    """Runs checks in this process, caching what checks can share: the parsed and
    shape-checked expression of each check (from the up-front validation) and the SymPy
    model of each (expression, loss, input shapes), which together fix the model."""

    def __init__(self):
        self._models: dict = {}
        self._prepared: dict = {}

    def prepare(self, spec: CheckSpec):
        """Validate and prepare an expression check (parse, values, shapes) without
        running it; UserInputError names the check.  The result is kept for run()."""
        from gradcheck_cli.checker import Options, prepare

        if (spec.file, spec.index) in self._prepared:
            return self._prepared[spec.file, spec.index]
        o = spec.options
        try:
            opts = Options(dtype=o["dtype"], fd=o["fd"], eps=o["eps"], atol=o["atol"], rtol=o["rtol"],
                           points=o["points"], seed=o["seed"], order=o["order"], device=o["device"]).validate()
            prep = prepare(spec.source, o.get("at", {}), wrt=o.get("wrt"), loss=o.get("loss", "none"),
                           target=o.get("target"), seed=o["seed"], name=spec.name)
        except UserInputError as err:
            raise _in_check(err, spec) from None
        key = (prep.source, prep.loss, tuple(sorted(prep.var_shapes.items())))
        self._prepared[spec.file, spec.index] = (prep, opts, key)
        return prep, opts, key

    def run(self, spec: CheckSpec):
        """One check's CheckResult (a wrong gradient is a verdict; unusable input raises
        UserInputError naming the spec file and check)."""
        if spec.kind == "expression":
            result = self._run_expression(spec)
        else:
            result = self._run_op(spec)
        return replace(result, extra={**result.extra, "spec_file": spec.file})

    def _run_expression(self, spec: CheckSpec):
        from gradcheck_cli.checker import run_prepared

        prep, opts, key = self.prepare(spec)
        self._prepared.pop((spec.file, spec.index), None)
        if prep.model is None and prep.symbolic_error is None and key in self._models:
            prep.model, prep.symbolic_error = self._models[key]
        try:
            result = run_prepared(prep, opts)
        except UserInputError as err:
            raise _in_check(err, spec) from None
        if prep.model is not None or prep.symbolic_error is not None:
            self._models.setdefault(key, (prep.model, prep.symbolic_error))
        return result

    def preflight_op(self, spec: CheckSpec) -> None:
        """Import an op check's target (FILE.py relative to the spec file, or a module),
        so that a missing or broken op stops the run before any check runs."""
        from gradcheck_cli.op.loading import load_target

        try:
            load_target(spec.source, spec.options["base_dir"])
        except UserInputError as err:
            raise _in_check(err, spec) from None

    def _run_op(self, spec: CheckSpec):
        from gradcheck_cli.op.api import check_op_target

        o = spec.options
        try:
            report = check_op_target(
                spec.source, list(o.get("at", {}).items()), _kw_items(o.get("kw", {})), wrt=o.get("wrt"),
                reference=o.get("reference"), mode=o["mode"], dtype=o["dtype"], fd=o["fd"], eps=o["eps"],
                atol=o["atol"], rtol=o["rtol"], points=o["points"], seed=o["seed"], order=o["order"],
                device=o["device"], base_dir=o["base_dir"], name=spec.name)
        except UserInputError as err:
            raise _in_check(err, spec) from None
        (result,) = report.checks
        return result


def _kw_items(kw: dict) -> list:
    """Spec `kw` entries for the op.  A TOML string is a string: it is quoted so that
    `kw = { mode = "1" }` passes "1", not the number 1 (unquoted text is read the way
    --kw reads it)."""
    return [(k, f'"{v}"' if isinstance(v, str) else v) for k, v in kw.items()]


def _in_check(err: UserInputError, spec: CheckSpec) -> UserInputError:
    """The same error, prefixed with the spec file and check it comes from."""
    return type(err)(f"{spec.where}: {err.message}", source=err.source, column=err.column)


_WORKER_RUNNER: Runner | None = None


def _worker_init(threads: int) -> None:
    """Worker start-up: import the heavy modules once, before the first check."""
    global _WORKER_RUNNER
    import sympy  # noqa: F401
    import torch

    torch.set_num_threads(threads)
    _WORKER_RUNNER = Runner()


def _worker_run(spec: CheckSpec):
    assert _WORKER_RUNNER is not None
    return _WORKER_RUNNER.run(spec)


def run_specs(specs: list[CheckSpec], *, jobs: int = 1, fail_fast: bool = False,
              progress: Callable[[int, int], None] | None = None, runner: Runner | None = None) -> tuple[list, bool]:
    """Run the checks in order; returns (results, stopped_early).  With fail_fast the
    results end at the first failed check, whatever `jobs` is."""
    if jobs < 1:
        raise UserInputError(f"--jobs must be >= 1, got {jobs}")
    runner = runner or Runner()
    for spec in specs:  # input errors (expressions, op imports) before any check runs
        if spec.kind == "expression":
            runner.prepare(spec)
        else:
            runner.preflight_op(spec)
    if jobs == 1 or len(specs) <= 1:
        return _run_serial(specs, runner, fail_fast, progress)
    return _run_parallel(specs, min(jobs, len(specs)), fail_fast, progress)


def _run_serial(specs, runner, fail_fast, progress) -> tuple[list, bool]:
    results = []
    for i, spec in enumerate(specs):
        result = runner.run(spec)
        results.append(result)
        if progress:
            progress(i + 1, len(specs))
        if fail_fast and not result.passed and i + 1 < len(specs):
            return results, True
    return results, False


def _run_parallel(specs, jobs, fail_fast, progress) -> tuple[list, bool]:
    # 'spawn', not fork: a forked torch (its thread pools, OpenMP state) can deadlock.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    results = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_worker_run, spec) for spec in specs]
        try:
            # Collected in suite order, so the report (and where --fail-fast stops) is the
            # same as with --jobs 1.
            for i, future in enumerate(futures):
                try:
                    result = future.result()
                except BrokenProcessPool:
                    # a worker died (an op crashed the interpreter, or ran out of memory):
                    # there is no report to give, only where it happened
                    raise UserInputError(f"{specs[i].where}: a worker process died while running this check "
                                         "(or one running beside it); run with --jobs 1 to see which "
                                         "check crashes") from None
                results.append(result)
                if progress:
                    progress(i + 1, len(specs))
                if fail_fast and not result.passed and i + 1 < len(specs):
                    pool.shutdown(wait=True, cancel_futures=True)
                    return results, True
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results, False


def run_paths(paths: list[str], defaults: dict, *, shard: str | None = None, jobs: int = 1,
              fail_fast: bool = False, progress: Callable[[int, int], None] | None = None, on_ready=None):
    """Load, validate, shard and run every check under PATHs; one Report with every
    check's result, in suite order.  `defaults` are `gradcheck run`'s options, which a
    spec's keys override; `on_ready()` is called once every spec is valid, before any runs."""
    from gradcheck_cli.report import Report

    if shard is not None:
        parse_shard(shard)  # a bad --shard is reported before any file is read
    if jobs < 1:
        raise UserInputError(f"--jobs must be >= 1, got {jobs}")
    try:
        specs, files = load(paths, {k: v for k, v in defaults.items() if v is not None})
        selected = select_shard(specs, shard)
        if on_ready is not None:
            on_ready()
        if progress:
            progress(0, len(selected))  # the bar shows the total from the start (and ends if it is 0)
        results, stopped = run_specs(selected, jobs=jobs, fail_fast=fail_fast, progress=progress)
    except UserInputError:
        if progress:
            progress(0, 0)  # end the bar before the error message is printed
        raise
    meta = {"command": "run", **files, "checks_total": len(specs), "checks_selected": len(selected),
            "checks_run": len(results)}
    if shard is not None:
        meta["shard"] = shard
    if stopped:
        meta["stopped_early"] = "--fail-fast: stopped at the first failed check"
    return Report(tuple(results), meta)
