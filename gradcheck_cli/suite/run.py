"""Running a suite: every check in a worker process (workers.py: isolation, timeouts,
signals), at most --jobs at once, the results put back in the suite's order so the
report does not depend on N; op targets imported (in a worker) before any check runs;
--fail-fast; the partial report of an interrupted run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.suite.runner import Runner, in_check
from gradcheck_cli.suite.shard import parse_shard, select_shard
from gradcheck_cli.suite.spec import TIMEOUT_S, CheckSpec, load


@dataclass
class RunResult:
    """What running a suite gave: the results in suite order, whether --fail-fast stopped
    it, and the signal that interrupted it (None when it ran to its end)."""

    results: list
    stopped: bool = False
    interrupted: int | None = None


def run_specs(specs: list[CheckSpec], *, jobs: int = 1, fail_fast: bool = False,
              progress: Callable[[int, int], None] | None = None, runner: Runner | None = None,
              on_result: Callable[[list], None] | None = None, timeout: float | None = TIMEOUT_S) -> RunResult:
    """Run the checks, each in a worker process (workers.py), at most `jobs` at once.
    Returns the results in suite order (the report does not depend on `jobs`); with
    fail_fast they end at the first failed check.  `on_result(results)` is called with
    the results finished so far, in suite order, as each check ends (reports stream);
    `timeout` is the default per check, which a spec's `timeout` overrides."""
    from gradcheck_cli.suite import workers

    if jobs < 1:
        raise UserInputError(f"--jobs must be >= 1, got {jobs}")
    runner = runner or Runner()
    for spec in specs:  # the user's input errors before any check runs (no user code here)
        if spec.kind == "expression":
            runner.prepare(spec)
    size = max(1, min(jobs, len(specs)))
    done: dict = {}
    with workers.Pool(size, threads=max(1, (os.cpu_count() or 1) // size)) as pool:
        interrupted = _preflight(pool, specs, runner, done, timeout)
        if interrupted is None:
            interrupted = _run_checks(pool, specs, runner, done, fail_fast, progress, on_result, timeout)
    order = sorted(done)
    stop = next((i for i in order if not done[i].passed), None) if fail_fast else None
    if stop is not None:
        order = [i for i in order if i <= stop]
    results = [done[i] for i in order]
    stopped = stop is not None and stop + 1 < len(specs) and interrupted is None
    return RunResult(results, stopped, interrupted)


def _check_timeout(spec: CheckSpec, default: float | None) -> float | None:
    value = spec.options.get("timeout", default)
    return float(value) if value else None


def _preflight(pool, specs: list, runner: Runner, done: dict, timeout) -> int | None:
    """Import every op check's target in a worker before any check runs, so a missing or
    broken op stops the run (exit 2) first.  An op whose import kills the worker or
    hangs fails its checks (they are not run)."""
    from gradcheck_cli.suite.workers import Task, rebuild_user_error

    targets: dict = {}
    for i, spec in enumerate(specs):
        if spec.kind == "op":
            targets.setdefault((spec.source, spec.options["base_dir"]), []).append(i)
    tasks = [Task(key, ("load", *key), _check_timeout(specs[idx[0]], timeout)) for key, idx in targets.items()]
    errors: list = []

    def on_outcome(task, outcome) -> None:
        if outcome.kind == "user_error":
            errors.append((targets[task.key][0], outcome.payload))
        elif outcome.kind != "result":
            for i in targets[task.key]:
                done[i] = _failed(specs[i], runner, outcome, phase="importing the op")

    interrupted = pool.run(tasks, on_outcome, wanted=lambda task: not errors)
    if errors:
        index, payload = min(errors)
        raise in_check(rebuild_user_error(payload), specs[index])
    return interrupted


def _run_checks(pool, specs, runner, done, fail_fast, progress, on_result, timeout) -> int | None:
    from gradcheck_cli.suite.workers import Task, rebuild_user_error

    tasks = [Task(i, ("spec", spec), _check_timeout(spec, timeout), _group(spec, runner))
             for i, spec in enumerate(specs) if i not in done]
    errors: list = []
    first_failed = [min((i for i, r in done.items() if not r.passed), default=None)]

    def on_outcome(task, outcome) -> None:
        spec = specs[task.key]
        if outcome.kind == "user_error":
            errors.append((task.key, outcome.payload))
            return
        result = outcome.payload if outcome.kind == "result" else _failed(spec, runner, outcome)
        done[task.key] = result
        if not result.passed and (first_failed[0] is None or task.key < first_failed[0]):
            first_failed[0] = task.key
        if progress:
            progress(len(done), len(specs))
        if on_result:
            on_result([done[i] for i in sorted(done)])

    def wanted(task) -> bool:
        if errors:
            return False
        return not (fail_fast and first_failed[0] is not None and task.key > first_failed[0])

    interrupted = pool.run(tasks, on_outcome, wanted)
    if errors:
        index, payload = min(errors)
        err = rebuild_user_error(payload)
        raise err if err.message.startswith(specs[index].where) else in_check(err, specs[index])
    return interrupted


def _group(spec: CheckSpec, runner: Runner):
    """What a worker caches for a check: the SymPy model of an expression (the runner's key
    of expression, loss and shapes), or the op target it imported."""
    if spec.kind == "expression":
        return runner.prepare(spec)[2]
    return ("op", spec.source, spec.options.get("base_dir"))


def _failed(spec: CheckSpec, runner: Runner, outcome, phase: str | None = None):
    """The failed CheckResult of a check that did not finish (failures.py)."""
    from gradcheck_cli.suite.failures import failed_check, message_for, op_inputs

    code, message = message_for(outcome, f"{phase} for this check" if phase else "running this check")
    o = spec.options
    if spec.kind == "op":
        inputs = op_inputs(list(o.get("at", {}).items()), o.get("wrt"))
    else:
        prep = runner.prepare(spec)[0]
        inputs = [(w, prep.var_shapes[w]) for w in prep.wrt]
    return failed_check(spec.name, spec.kind, o["dtype"], inputs, code, message,
                        {"spec_file": spec.file, "duration_s": outcome.seconds})


def run_paths(paths: list[str], defaults: dict, *, shard: str | None = None, jobs: int = 1,
              fail_fast: bool = False, progress: Callable[[int, int], None] | None = None, on_ready=None,
              on_result: Callable[[list], None] | None = None, allow_empty: bool = False):
    """Load, validate, shard and run every check under PATHs; one Report with every
    check's result, in suite order.  `defaults` are `gradcheck run`'s options, which a
    spec's keys override; `on_ready()` is called once every spec is valid, before any runs;
    `on_result` as in run_specs.  An empty selection (a shard with no checks) is an error
    unless `allow_empty`: a CI job that checks nothing must not pass."""
    from gradcheck_cli.report import Report

    if shard is not None:
        parse_shard(shard)  # a bad --shard is reported before any file is read
    if jobs < 1:
        raise UserInputError(f"--jobs must be >= 1, got {jobs}")
    try:
        specs, files = load(paths, {k: v for k, v in defaults.items() if v is not None})
        selected = select_shard(specs, shard)
        if not selected and not allow_empty:
            raise UserInputError(f"--shard {shard}: this shard holds none of the {len(specs)} check(s), so nothing "
                                 "would be checked; use fewer shards, or --allow-empty to accept an empty shard")
        if on_ready is not None:
            on_ready()
        if progress:
            progress(0, len(selected))  # the bar shows the total from the start (and ends if it is 0)
        timeout = defaults.get("timeout", TIMEOUT_S)
        run = run_specs(selected, jobs=jobs, fail_fast=fail_fast, progress=progress, on_result=on_result,
                        timeout=timeout)
    except UserInputError:
        if progress:
            progress(0, 0)  # end the bar before the error message is printed
        raise
    meta = {"command": "run", **files, "checks_total": len(specs), "checks_selected": len(selected),
            "checks_run": len(run.results)}
    if shard is not None:
        meta["shard"] = shard
    if run.stopped:
        meta["stopped_early"] = "--fail-fast: stopped at the first failed check"
    if run.interrupted is not None:
        import signal

        meta["interrupted"] = signal.Signals(run.interrupted).name
        meta["checks_not_run"] = len(selected) - len(run.results)
    return Report(tuple(run.results), meta, interrupted=run.interrupted)
