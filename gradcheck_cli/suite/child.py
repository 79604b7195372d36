"""A worker process's life (workers.py starts them and talks to them): take a job, run
it, answer with (kind, payload, retire), until told to stop or the parent goes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from typing import Any


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def watch_parent(lifeline) -> None:
    """Exit the moment the parent goes, even mid-check: `lifeline`'s other end is held by
    the parent alone, so it reads EOF when the parent dies (even by SIGKILL).  (The server
    cannot tell: every worker holds its alive-pipe, so PR_SET_PDEATHSIG alone is not enough.)"""
    def watch() -> None:
        try:
            while True:
                lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="gradcheck-lifeline", daemon=True).start()


def worker_main(jobs, results, output, lifeline, threads: int) -> None:
    """A worker's life: take (cwd, environ, job) messages until told to stop or its parent
    goes; answer each with (kind, payload, retire)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    watch_parent(lifeline)
    os.dup2(output.fileno(), 1)  # what the op prints goes to the parent, which relays it to stderr
    os.dup2(output.fileno(), 2)
    output.close()
    sys.stdout = sys.stderr = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    import torch

    from gradcheck_cli.op.runner import catch_keyboard_interrupt

    torch.set_num_threads(max(1, threads))
    catch_keyboard_interrupt()
    import gc

    gc.freeze()  # torch's and SymPy's objects, from the server: out of the collector's way
    state: dict = {}
    while True:
        try:
            message = jobs.recv()
        except (EOFError, OSError):
            os._exit(0)
        if message is None:
            os._exit(0)
        cwd, environ, job = message
        before = set(threading.enumerate())
        reply = _run_job(state, cwd, environ, job)
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        try:
            sys.stdout.flush()
            results.send((*reply, bool(left)))
        except Exception as exc:  # noqa: BLE001 -- an unpicklable result is our failure, reported
            results.send(("internal_error", f"the check's result could not be sent back: {exc!r}", bool(left)))
        if left:  # the check's threads must not run during the next check: this worker retires
            os._exit(0)


def _run_job(state: dict, cwd: str, environ: dict, job: tuple) -> tuple:
    from gradcheck_cli.errors import UserInputError

    try:
        os.chdir(cwd)
        if os.environ != environ:
            os.environ.clear()
            os.environ.update(environ)
        return "result", _with_peak_memory(execute(state, job))
    except UserInputError as err:
        return "user_error", (type(err).__name__, err.message, err.source, err.column)
    except BaseException as exc:  # noqa: BLE001 -- whatever escaped is this check's failure, never the run's
        if isinstance(exc, (SystemExit, KeyboardInterrupt, GeneratorExit)):
            return "internal_error", f"user code raised {type(exc).__name__}({exc}) outside the op's calls"
        return "internal_error", "".join(traceback.format_exception(exc))


def _with_peak_memory(result):
    """An op check's CheckResult with the worker's peak resident memory so far (MiB; the
    torch and SymPy it shares with its server included): what the check cost at most.
    Like duration_s it varies from run to run."""
    if getattr(result, "kind", None) != "op":  # expression checks run no user code
        return result
    import dataclasses
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dataclasses.replace(result, extra={**result.extra, "worker_peak_rss_mib": round(peak, 1)})


def execute(state: dict, job: tuple) -> Any:
    """Run one job in this process: ("spec", CheckSpec) -> CheckResult; ("load", target,
    base_dir) -> None (the op can be imported); ("op", kwargs) -> CheckResult of
    check_op_target(**kwargs)."""
    kind = job[0]
    if kind == "spec":
        from gradcheck_cli.suite.runner import Runner

        runner = state.setdefault("runner", Runner())
        return runner.run(job[1])
    if kind == "load":
        from gradcheck_cli.op.loading import load_object

        load_object(job[1], job[2])  # importable and found (a module class is built later, with its init)
        return None
    if kind == "op":
        from gradcheck_cli.op.api import check_op_target

        (result,) = check_op_target(**job[1]).checks
        return result
    raise ValueError(f"unknown job {kind!r}")
