"""Worker processes: where every check's user code runs (`gradcheck op`, `gradcheck run`);
this is the parent's side, child.py the worker's.

An op can do anything: call sys.exit or os._exit, crash the interpreter, loop forever,
leave a thread running, change torch's global state.  None of it may take the run down,
hang CI, or change another check's verdict.  So:

* checks run in worker processes forked from a server process that imported torch and
  SymPy once (multiprocessing's forkserver, or the persistent server of `gradcheck server
  start` when one serves this environment: daemon.py, remote.py).  Never a fork of the
  parent: a process whose OpenMP pool has run deadlocks a forked child, and the parent
  never imports user code.
  Forking a worker costs milliseconds, so one that died or misbehaved is replaced;
* the parent waits on every worker's result pipe, output pipe and process sentinel, the
  running checks' deadlines, and a signal wake-up fd, all at once;
* a worker that dies is that check's failure (worker_crashed, with the exit status or
  the signal); a check past its timeout is killed (timeout); the other checks go on;
* a worker's stdout and stderr (what the op prints) are relayed to the parent's stderr:
  stdout carries the report and nothing else;
* a worker retires after a check that left threads running (none of them runs during
  another check) and always ends with os._exit, so a non-daemon thread cannot hold it;
* workers ignore SIGINT (a Ctrl-C reaches the whole process group: the parent decides)
  and exit the moment the parent goes, even when it is killed with SIGKILL (a lifeline
  pipe only the parent holds), or the server does (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import types
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

# What the worker server imports before it forks workers: a suite may hold expression checks
# (SymPy and the engines); a plain `gradcheck op` needs torch and the op gate only, and SymPy
# (~0.4 s) is left out of its start-up unless --reference asks for an exact forward.
# Everything a first check would import is imported here, once, not again in every worker
# (a worker's first expression check took 63 ms instead of 10 ms before the last lines).
OP_PRELOAD = ["numpy", "torch", "gradcheck_cli.suite.child", "gradcheck_cli.op.api", "gradcheck_cli.op.full",
              "gradcheck_cli.op.fast", "gradcheck_cli.op.loading", "gradcheck_cli.op.mutation",
              "gradcheck_cli.op.reference", "gradcheck_cli.op.targets", "numpy.random", "torch.utils._device"]
PRELOAD = OP_PRELOAD + ["sympy", "gradcheck_cli.suite.runner", "gradcheck_cli.checker",
                        "gradcheck_cli.engines.symbolic", "gradcheck_cli.engines.finite_diff",
                        "gradcheck_cli.engines.autograd", "gradcheck_cli.engines.fd_screen",
                        "gradcheck_cli.engines.sympy_tensor", "gradcheck_cli.engines.tensor_model", "numpy.ma",
                        "sympy.combinatorics", "sympy.tensor.tensor", "sympy.assumptions.wrapper",
                        "torch.fx.experimental.symbolic_shapes"]
GRACE_S = 2.0  # how long a worker told to exit may take before it is killed


@dataclass
class Task:
    """One unit of work for a worker: `job` is plain data (see execute)."""

    key: Any  # the caller's handle (a check's index)
    job: tuple
    timeout: float | None  # seconds; None or 0: no limit
    group: Any = None  # tasks of one group share what a worker caches (a SymPy model): one worker takes them


@dataclass
class Outcome:
    """What became of a task: 'result' (payload: the job's return value), 'user_error'
    (payload: (class name, message, source, column)), 'internal_error' (payload: the
    traceback), 'crashed' (payload: a description of the exit), 'timeout' (payload: the
    seconds allowed)."""

    kind: str
    payload: Any
    seconds: float = 0.0


_CONTEXT: list = []


def _context(preload: list | None = None):
    """The forkserver context, its server preloading `preload` (default PRELOAD: torch,
    SymPy and the engines), started on first use; later calls get the same one."""
    if not _CONTEXT:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        # server.py first: the server lets go of the parent's stdout and stderr before its imports
        # (a reader waiting for end-of-file must not wait for them) and exits at once
        ctx.set_forkserver_preload(["gradcheck_cli.suite.server"] + (PRELOAD if preload is None else preload))
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def warm_up(symbolic: bool = True) -> None:
    """Start the server now, so its imports overlap with the parent's own work;
    symbolic=False: a server for op checks without an expression (no SymPy).  Nothing to
    start when a persistent server (`gradcheck server start`) serves this environment."""
    if _persistent() is not None:
        return
    from multiprocessing import forkserver

    _context(None if symbolic else OP_PRELOAD)
    forkserver.ensure_running()


_PERSISTENT: list = []


def _persistent(failed: bool = False):
    """The socket of the persistent server workers come from (remote.py), or None: decided
    once a process; `failed` (it went away mid-run): None from now on, the forkserver's turn."""
    if failed:
        _PERSISTENT[:] = [None]
    if not _PERSISTENT:
        from gradcheck_cli.suite import remote

        _PERSISTENT.append(remote.available())
    return _PERSISTENT[0]


@dataclass
class Worker:
    process: Any
    jobs: Any  # Connection: parent -> worker
    results: Any  # Connection: worker -> parent
    output: Any  # Connection whose fd carries the worker's stdout/stderr
    lifeline: Any  # Connection never written: the worker exits when it closes (watch_parent)
    task: Task | None = None
    started: float = 0.0
    groups: set = field(default_factory=set)  # the task groups this worker has run (its caches hold them)


def _spawn(threads: int) -> Worker:
    """A worker from the persistent server when one serves this environment (remote.py),
    else from the run's own forkserver."""
    ctx = _context()
    jobs_r, jobs_w = ctx.Pipe(duplex=False)
    results_r, results_w = ctx.Pipe(duplex=False)
    out_r, out_w = ctx.Pipe(duplex=False)
    life_r, life_w = ctx.Pipe(duplex=False)
    theirs = (jobs_r, results_w, out_w, life_r)
    proc, path = None, _persistent()
    if path is not None:
        from gradcheck_cli.suite import remote

        proc = remote.spawn(path, theirs, threads)
        if proc is None:
            _persistent(failed=True)
    if proc is None:
        from gradcheck_cli.suite.child import worker_main

        proc = ctx.Process(target=worker_main, args=(*theirs, threads), daemon=True, name="gradcheck-worker")
        with _main_module_hidden():
            proc.start()
    for end in theirs:
        end.close()
    return Worker(proc, jobs_w, results_r, out_r, life_w)


def _assign(worker: Worker, task: Task) -> Worker:
    """`worker` takes `task` (its clock starts; its caches will hold the task's group)."""
    worker.task, worker.started = task, time.perf_counter()
    worker.groups.add(task.group)
    return worker


@contextlib.contextmanager
def _main_module_hidden():
    """multiprocessing would re-run the parent's __main__ script in every worker (a user's
    script without an `if __name__ == "__main__"` guard would run again, and the console
    script loads typer and rich for nothing): workers need only gradcheck_cli, so they
    are started while __main__ is an empty module."""
    real = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if real is not None:
            sys.modules["__main__"] = real


def describe_exit(exitcode: int | None) -> str:
    """'killed by signal SIGSEGV (11)' / 'exited with status 0'."""
    if exitcode is None:
        return "stopped without an exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {signal.SIGKILL: " (out of memory? the kernel's OOM killer sends SIGKILL)",
                signal.SIGSEGV: " (a segmentation fault in native code)",
                signal.SIGABRT: " (abort(), e.g. a failed C++ assertion)"}.get(-exitcode, "")
        return f"killed by signal {name} ({-exitcode}){hint}"
    return f"exited with status {exitcode} (sys.exit or os._exit in user code?)"


class _Signals:
    """SIGINT / SIGTERM recorded instead of raised, with a wake-up fd for wait()."""

    def __init__(self):
        self.received: int | None = None
        self.active = threading.current_thread() is threading.main_thread()
        self.read_fd = self.write_fd = None

    def __enter__(self):
        if not self.active:
            return self
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.old_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc):
        if not self.active:
            return False
        for s, h in self.old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(self.old_fd)
        os.close(self.read_fd)
        os.close(self.write_fd)
        return False


@dataclass
class Pool:
    """Up to `size` workers running tasks; see run()."""

    size: int
    threads: int = 1
    idle: list = field(default_factory=list)
    busy: list = field(default_factory=list)

    def run(self, tasks: Iterable[Task], on_outcome: Callable[[Task, Outcome], None],
            wanted: Callable[[Task], bool] = lambda task: True) -> int | None:
        """Run the tasks, at most `size` at a time, in the order given; on_outcome after
        each.  Tasks no longer `wanted` (asked after every outcome) are dropped, or killed
        when running.  Returns the signal (SIGINT, SIGTERM) that stopped the run early,
        after killing every running task, else None."""
        pending = deque(tasks)
        cwd, environ = os.getcwd(), dict(os.environ)
        with _Signals() as signals:
            while pending or self.busy:
                if signals.received is not None:
                    self._kill_busy()
                    return signals.received
                while pending and len(self.busy) < self.size:
                    worker = self.idle.pop() if self.idle else None
                    self._start(_pick(pending, worker, self.busy), cwd, environ, worker)
                for worker, outcome in self._wait(signals):
                    on_outcome(worker.task, outcome)
                    worker.task = None
                pending = deque(t for t in pending if wanted(t))
                for worker in [w for w in self.busy if not wanted(w.task)]:
                    self._kill(worker)
            return signals.received

    def _start(self, task: Task, cwd: str, environ: dict, worker: Worker | None = None) -> None:
        worker = _assign(worker or _spawn(self.threads), task)
        try:
            worker.jobs.send((cwd, environ, task.job))
        except (OSError, EOFError):  # it died while idle: the next one takes the task
            self._discard(worker)
            worker = _assign(_spawn(self.threads), task)
            worker.jobs.send((cwd, environ, task.job))
        self.busy.append(worker)

    def _wait(self, signals: _Signals) -> list:
        from multiprocessing.connection import wait

        now = time.perf_counter()
        deadlines = [w.started + w.task.timeout for w in self.busy if w.task.timeout]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        handles = {}
        for w in self.busy:
            handles[w.results] = (w, "result")
            handles[w.output] = (w, "output")
            handles[w.process.sentinel] = (w, "exit")
        if signals.read_fd is not None:
            handles[signals.read_fd] = (None, "signal")
        ready = wait(list(handles), timeout)
        done = []
        for handle in ready:
            worker, what = handles[handle]
            if what == "signal":
                try:
                    os.read(signals.read_fd, 512)
                except OSError:
                    pass
            elif what == "output":
                self._relay(worker)
        for handle in ready:
            worker, what = handles[handle]
            if worker is None or worker.task is None or worker in (w for w, _ in done):
                continue
            if what == "result":
                done.append((worker, self._receive(worker)))
            elif what == "exit" and not worker.results.poll():
                self._relay(worker, drain=True)
                outcome = Outcome("crashed", describe_exit(self._reap(worker)), self._elapsed(worker))
                self._discard(worker)
                done.append((worker, outcome))
        now = time.perf_counter()
        for worker in list(self.busy):
            if worker.task is not None and worker.task.timeout and now - worker.started >= worker.task.timeout \
                    and worker not in (w for w, _ in done):
                self._kill(worker)
                done.append((worker, Outcome("timeout", worker.task.timeout, self._elapsed(worker))))
        return done

    def _elapsed(self, worker: Worker) -> float:
        return round(time.perf_counter() - worker.started, 4)

    def _receive(self, worker: Worker) -> Outcome:
        try:
            kind, payload, retire = worker.results.recv()
        except (EOFError, OSError):
            self._relay(worker, drain=True)
            outcome = Outcome("crashed", describe_exit(self._reap(worker)), self._elapsed(worker))
            self._discard(worker)
            return outcome
        outcome = Outcome(kind, payload, self._elapsed(worker))
        self.busy.remove(worker)
        self._relay(worker, drain=True)  # it flushed before answering: what it printed is here
        if retire:
            self._reap(worker)
            self._close(worker)
        else:
            self.idle.append(worker)
        return outcome

    def _relay(self, worker: Worker, drain: bool = False) -> None:
        """Copy what the worker printed to our stderr (all of it, when `drain`)."""
        fd = worker.output.fileno()
        while True:
            if drain and not worker.output.poll(0):
                return
            try:
                data = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            try:
                sys.stderr.write(data.decode("utf-8", errors="replace"))
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            if not drain:
                return

    def _reap(self, worker: Worker) -> int | None:
        worker.process.join(GRACE_S)
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
        return worker.process.exitcode

    def _kill(self, worker: Worker) -> None:
        worker.process.kill()
        worker.process.join()
        self._relay(worker, drain=True)
        self._discard(worker)

    def _kill_busy(self) -> None:
        for worker in list(self.busy):
            self._kill(worker)

    def _discard(self, worker: Worker) -> None:
        if worker in self.busy:
            self.busy.remove(worker)
        self._close(worker)

    def _close(self, worker: Worker) -> None:
        for conn in (worker.jobs, worker.results, worker.output, worker.lifeline):
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        """Tell idle workers to exit; kill any that do not within GRACE_S, and busy ones."""
        self._kill_busy()
        for worker in self.idle:
            try:
                worker.jobs.send(None)
            except (OSError, EOFError):
                pass
        deadline = time.perf_counter() + GRACE_S
        for worker in self.idle:
            worker.process.join(max(0.0, deadline - time.perf_counter()))
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            self._relay(worker, drain=True)
            self._close(worker)
        self.idle.clear()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pick(pending: deque, worker: Worker | None, busy: list) -> Task:
    """The next task for `worker` (None: a new one), taken out of `pending`: the first of
    a group it has already run (its cached SymPy model is reused), else the first of a
    group no busy worker is on (two workers do not build one model twice), else the first.
    With one worker this is the given order."""
    taken = {g for w in busy for g in w.groups}
    mine = worker.groups if worker is not None else set()
    choice = next((t for t in pending if t.group is not None and t.group in mine), None)
    if choice is None and busy:
        choice = next((t for t in pending if t.group is None or t.group not in taken), None)
    choice = choice or pending[0]
    pending.remove(choice)
    return choice


def rebuild_user_error(payload):
    """The UserInputError a worker raised, from the plain data it sent."""
    from gradcheck_cli import errors

    cls_name, message, source, column = payload
    cls = getattr(errors, cls_name, errors.UserInputError)
    return cls(message, source=source, column=column)


def run_one(job: tuple, timeout: float | None) -> tuple[Outcome, int | None]:
    """One job in one fresh worker: (its outcome, the signal that interrupted it or None)."""
    got: list = []
    with Pool(1, threads=os.cpu_count() or 1) as pool:
        interrupted = pool.run([Task(0, job, timeout)], lambda task, outcome: got.append(outcome))
    return (got[0] if got else None), interrupted
