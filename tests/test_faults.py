"""A gate that cannot be fooled or broken (issue 11): one case per fault an op can commit.

Each case asserts the exit code, that the other checks' results are in the JSON and the
JUnit report, and that nothing is left running.  Ops live in a file written per test
session; most cases go through typer's CliRunner in this process (the workers' server
starts once for the whole session), the ones about signals, closed or full stdout and
the console script's own exit through a real process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from cli_util import clean_env, gradcheck_command, run_gradcheck
from proc_util import alive, running_where

FAULTY_OPS = '''
import ctypes, os, sys, threading, time
import torch

sys.path.insert(0, SAMPLE_OPS)
from swish import Swish  # the sample op users copy: a correct custom Function

def good(x):
    return torch.tanh(x) * x

def exits(x):
    sys.exit(0)

def raises_system_exit(x):
    raise SystemExit("bye")

def hard_exit(x):
    os._exit(0)

def segfault(x):
    ctypes.string_at(0)

def aborts(x):
    os.abort()

def kills_itself(x):
    os.kill(os.getpid(), 9)

def loops(x):
    while True:
        pass

def interrupts(x):
    raise KeyboardInterrupt

def raising_in_backward(exc):
    class Doubling(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            raise exc

    return Doubling

ExitInBackward = raising_in_backward(SystemExit(0))
GeneratorExitInBackward = raising_in_backward(GeneratorExit())

def leaves_thread(x):
    threading.Thread(target=time.sleep, args=(3600,), name="stray-worker", daemon=False).start()
    return x * 3

def disables_grad(x):
    out = torch.sin(x)
    torch.set_grad_enabled(False)
    return out

def changes_dtype_and_seed(x):
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(1234)
    return torch.exp(x)

def slow(x):
    with open(os.environ["GRADCHECK_TEST_PIDS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(3600)
    return x
'''

IMPORT_EXIT = "import os\nos._exit(0)\n"
SAMPLE_OPS = Path(__file__).resolve().parent.parent / "samples" / "ops"


@pytest.fixture(scope="module")
def ops_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faulty")
    (d / "faulty.py").write_text(FAULTY_OPS.replace("SAMPLE_OPS", repr(str(SAMPLE_OPS))))
    (d / "exits_on_import.py").write_text(IMPORT_EXIT + "def f(x):\n    return x\n")
    return d


def spec_text(checks: list[tuple[str, str]]) -> str:
    """[[check]] tables for (name, op attribute of faulty.py or a full target)."""
    out = []
    for name, op in checks:
        target = op if ":" in op else f"faulty.py:{op}"
        out.append(f'[[check]]\nname = "{name}"\nop = "{target}"\nat = {{ x = [0.5, -1.25, 2.0] }}\n')
    return "\n".join(out)


def suite_of_20(bad: str) -> list[tuple[str, str]]:
    """20 checks, the 8th one faulty."""
    checks = [(f"good-{i:02d}", "good" if i % 2 else "Swish") for i in range(20)]
    checks[7] = (f"bad-{bad}", bad)
    return checks


def workersalive() -> list:
    """Worker processes still running: children of the workers' server (which lives as long
    as this test session), zombies aside."""
    from multiprocessing import forkserver

    server = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if server is None:
        return []
    return running_where(lambda ppid, pgid: ppid == server)


def run_suite(run_cli, strict_json, folder: Path, checks, *extra) -> tuple[int, dict, str, ET.Element]:
    (folder / "suite.toml").write_text(spec_text(checks))
    junit = folder / "junit.xml"
    code, out, err = run_cli("run", str(folder / "suite.toml"), "--json", "--junit", str(junit), *extra)
    assert workersalive() == [], "a worker outlived the run"
    return code, strict_json(out), err, ET.parse(junit).getroot()


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def junit_cases(root: ET.Element) -> dict:
    return {case.get("name"): case for case in root.iter("testcase")}


def codes(check: dict) -> set:
    return {d["code"] for d in check["diagnostics"]}


# ---- one op, through `gradcheck op` --------------------------------------------------------

@pytest.mark.parametrize("attr, code, fragment", [
    ("exits", "op_error", "SystemExit"),
    ("raises_system_exit", "op_error", "SystemExit: bye"),
    ("ExitInBackward", "op_error", "SystemExit"),
    ("GeneratorExitInBackward", "op_error", "GeneratorExit"),
    ("interrupts", "op_error", "KeyboardInterrupt"),
    ("hard_exit", "worker_crashed", "exited with status 0"),
    ("segfault", "worker_crashed", "SIGSEGV"),
    ("aborts", "worker_crashed", "SIGABRT"),
    ("kills_itself", "worker_crashed", "SIGKILL"),
])
def test_an_op_that_exits_or_crashes_fails_its_check_with_a_report(run_cli, strict_json, ops_dir, tmp_path, attr,
                                                                    code, fragment):
    junit = tmp_path / "r.xml"
    rc, out, err = run_cli("op", str(ops_dir / f"faulty.py:{attr}"), "--at", "x=[0.5, 2.0]", "--json",
                           "--junit", str(junit))
    assert rc == 1, err
    (check,) = strict_json(out)["checks"]
    assert check["passed"] is False and code in codes(check)
    assert fragment in " ".join(d["message"] for d in check["diagnostics"])
    assert [g["wrt"] for g in check["gradients"]] == ["x"]  # one entry per input, even when nothing ran
    assert check["gradients"][0]["shape"] == [2]
    (case,) = junit_cases(ET.parse(junit).getroot()).values()
    # a check that could not run to its end is a JUnit <error>: the exception's type, or the code
    error = case.find("error")
    assert error is not None and case.find("failure") is None
    assert error.get("type") == (fragment.split(":")[0] if code == "op_error" else code)
    assert "Traceback" not in err
    assert workersalive() == []


def test_an_op_that_exits_at_import_fails_its_check(run_cli, strict_json, ops_dir):
    rc, out, err = run_cli("op", str(ops_dir / "exits_on_import.py:f"), "--at", "x=1", "--json")
    assert rc == 1
    (check,) = strict_json(out)["checks"]
    assert "worker_crashed" in codes(check) and "exited with status 0" in check["diagnostics"][0]["message"]


def test_an_infinite_loop_times_out(run_cli, strict_json, ops_dir):
    started = time.perf_counter()
    rc, out, _ = run_cli("op", str(ops_dir / "faulty.py:loops"), "--at", "x=1", "--json", "--timeout", "1.5")
    assert rc == 1 and time.perf_counter() - started < 30
    (check,) = strict_json(out)["checks"]
    assert codes(check) == {"timeout"} and "1.5 s" in check["diagnostics"][0]["message"]


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_timeout_is_a_user_error(run_cli, ops_dir, value):
    rc, out, err = run_cli("op", str(ops_dir / "faulty.py:good"), "--at", "x=1", "--timeout", value)
    assert rc == 2 and out == "" and "--timeout" in err


# ---- a 20-check suite with one faulty check ------------------------------------------------

@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("bad, code", [
    ("segfault", "worker_crashed"), ("aborts", "worker_crashed"), ("hard_exit", "worker_crashed"),
    ("kills_itself", "worker_crashed"),
    ("exits", "op_error"), ("loops", "timeout"),
])
def test_one_faulty_check_in_twenty_is_named_and_the_others_run(run_cli, strict_json, ops_dir, bad, code, jobs):
    folder = ops_dir
    rc, report, err, junit = run_suite(run_cli, strict_json, folder, suite_of_20(bad), "--jobs", jobs,
                                       "--timeout", "3")
    assert rc == 1, err
    checks = by_name(report)
    assert len(checks) == 20
    assert [n for n, c in checks.items() if not c["passed"]] == [f"bad-{bad}"]  # the right check, always
    assert code in codes(checks[f"bad-{bad}"])
    cases = junit_cases(junit)
    assert len(cases) == 20 and cases[f"bad-{bad}"].find("error") is not None  # it did not run to its end
    assert all(cases[n].find("failure") is None and cases[n].find("error") is None
               for n in checks if n != f"bad-{bad}")


def test_an_op_exiting_at_import_fails_only_its_checks(run_cli, strict_json, ops_dir):
    checks = [("first", "good"), ("dies", "exits_on_import.py:f"), ("last", "Swish")]
    rc, report, err, junit = run_suite(run_cli, strict_json, ops_dir, checks)
    assert rc == 1
    got = by_name(report)
    assert got["first"]["passed"] and got["last"]["passed"] and not got["dies"]["passed"]
    assert "worker_crashed" in codes(got["dies"]) and "importing the op" in got["dies"]["diagnostics"][0]["message"]
    assert len(junit_cases(junit)) == 3


def test_a_leftover_thread_neither_hangs_the_run_nor_reaches_the_next_check(ops_dir):
    (ops_dir / "threads.toml").write_text(spec_text([("thread", "leaves_thread"), ("after", "good")]))
    result = run_gradcheck(["run", str(ops_dir / "threads.toml"), "--json"], cwd=ops_dir, timeout=60)
    assert result.returncode == 0, result.stderr
    checks = by_name(json.loads(result.stdout))
    assert all(c["passed"] for c in checks.values())
    note = [d for d in checks["thread"]["diagnostics"] if d["code"] == "global_state_changed"]
    assert note and "stray-worker" in note[0]["message"]
    assert "global_state_changed" not in codes(checks["after"])


# ---- global state --------------------------------------------------------------------------

@pytest.mark.parametrize("jobs", ["1", "2"])
def test_global_state_changes_are_restored_and_named(run_cli, strict_json, ops_dir, jobs):
    checks = [("grad-off", "disables_grad"), ("dtype-seed", "changes_dtype_and_seed")]
    checks += [(f"after-{i:02d}", "Swish" if i % 2 else "good") for i in range(13)]
    rc, report, err, _ = run_suite(run_cli, strict_json, ops_dir, checks, "--jobs", jobs)
    got = by_name(report)
    # an op that turns grad mode off breaks its own later calls (it fails); never another check's
    assert rc == 1 and [n for n, c in got.items() if not c["passed"]] == ["grad-off"], err
    grad_note = [d["message"] for d in got["grad-off"]["diagnostics"] if d["code"] == "global_state_changed"]
    assert grad_note and "grad mode" in grad_note[0]
    state_note = [d["message"] for d in got["dtype-seed"]["diagnostics"] if d["code"] == "global_state_changed"]
    assert state_note and "default dtype" in state_note[0] and "random number generator" in state_note[0]
    assert all("global_state_changed" not in codes(c) for n, c in got.items() if n.startswith("after"))


def test_the_python_api_restores_global_state(ops_dir):
    import importlib.util

    import gradcheck_cli

    spec = importlib.util.spec_from_file_location("faulty_api", ops_dir / "faulty.py")
    faulty = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(faulty)
    rng = torch.random.get_rng_state()
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    dtype = torch.get_default_dtype()
    report = gradcheck_cli.check_op(faulty.disables_grad, x)
    assert torch.is_grad_enabled()
    assert "global_state_changed" in report.checks[0].codes()
    report = gradcheck_cli.assert_op(faulty.changes_dtype_and_seed, x)
    assert torch.get_default_dtype() == dtype and torch.equal(torch.random.get_rng_state(), rng)
    message = next(d.message for d in report.checks[0].diagnostics if d.code == "global_state_changed")
    assert "default dtype" in message and "float64" in message
    clean = gradcheck_cli.check_op(faulty.good, x)
    assert "global_state_changed" not in clean.checks[0].codes()  # our own work changes nothing


def test_system_exit_in_the_python_api_is_a_failed_check(ops_dir):
    import importlib.util

    import gradcheck_cli

    spec = importlib.util.spec_from_file_location("faulty_api2", ops_dir / "faulty.py")
    faulty = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(faulty)
    report = gradcheck_cli.check_op(faulty.exits, torch.ones(2, dtype=torch.float64))
    assert not report.passed and "op_error" in report.checks[0].codes()


# ---- signals -------------------------------------------------------------------------------

def _running_in_group(pgid: int) -> list:
    """Processes of process group `pgid` that are still running."""
    return running_where(lambda ppid, group: group == pgid)


def _start_watched(argv: list, pids: Path, pipes: bool = True) -> subprocess.Popen:
    """`gradcheck ARGV` in a process group of its own; the slow op writes each worker's pid to `pids`."""
    pids.write_text("")
    out = subprocess.PIPE if pipes else subprocess.DEVNULL
    return subprocess.Popen(gradcheck_command() + argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                            env=clean_env(GRADCHECK_TEST_PIDS=str(pids)), start_new_session=True)


def _wait_for_workers(pids: Path, n: int = 1) -> list:
    """The pids of the first `n` workers on the slow op (fewer if they never start)."""
    deadline = time.monotonic() + 60
    while len(pids.read_text().split()) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return [int(p) for p in pids.read_text().split()]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_signal_writes_the_partial_report_and_leaves_nothing_running(ops_dir, tmp_path, sig, code, jobs):
    pids = tmp_path / "pids"
    checks = [("quick-1", "good"), ("quick-2", "Swish"), ("slow-1", "slow"), ("slow-2", "slow")]
    (tmp_path / "s.toml").write_text(spec_text(checks).replace("faulty.py", str(ops_dir / "faulty.py")))
    junit = tmp_path / "r.xml"
    proc = _start_watched(["run", str(tmp_path / "s.toml"), "--json", "--junit", str(junit), "--jobs", jobs], pids)
    busy = int(jobs)  # every worker on a slow check: the quick ones are done
    assert len(_wait_for_workers(pids, busy)) == busy, "the slow checks never started"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err.decode()
    report = json.loads(out)
    assert report["interrupted"] is True and report["passed"] is False
    assert {c["name"] for c in report["checks"]} >= {"quick-1", "quick-2"}
    assert report["meta"]["interrupted"] == signal.Signals(sig).name
    cases = junit_cases(ET.parse(junit).getroot())
    assert {"quick-1", "quick-2"} <= set(cases) and cases["(run interrupted)"].find("error") is not None
    workers = [int(p) for p in pids.read_text().split()]
    assert not any(alive(p) for p in workers), "a worker survived its parent"
    deadline = time.monotonic() + 10
    while _running_in_group(proc.pid) and time.monotonic() < deadline:  # the server exits after its workers
        time.sleep(0.1)
    assert _running_in_group(proc.pid) == [], "processes of the run are still alive"
    assert b"Traceback" not in err


def test_a_signal_during_gradcheck_op_writes_an_interrupted_report(ops_dir, tmp_path):
    pids = tmp_path / "pids"
    junit = tmp_path / "r.xml"
    proc = _start_watched(["op", str(ops_dir / "faulty.py:slow"), "--at", "x=1", "--json", "--junit", str(junit)],
                          pids)
    _wait_for_workers(pids)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err.decode()
    report = json.loads(out)
    assert report["interrupted"] is True and report["checks"] == [] and report["meta"]["checks_not_run"] == 1
    assert junit_cases(ET.parse(junit).getroot())["(run interrupted)"].find("error") is not None
    assert not alive(int(pids.read_text().split()[0]))


def test_workers_die_with_a_parent_killed_by_sigkill(ops_dir, tmp_path):
    pids = tmp_path / "pids"
    (tmp_path / "s.toml").write_text(spec_text([("slow", str(ops_dir / "faulty.py") + ":slow")]))
    proc = _start_watched(["run", str(tmp_path / "s.toml")], pids, pipes=False)
    (worker,) = _wait_for_workers(pids)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker), "the worker outlived a parent killed with SIGKILL"
    while _running_in_group(proc.pid) and time.monotonic() < deadline:  # the server follows its workers
        time.sleep(0.1)
    assert _running_in_group(proc.pid) == []


def test_the_worker_server_holds_neither_stdout_nor_stderr(ops_dir, tmp_path):
    """A reader of the run's output (`| jq`, a CI step, capture_output) waits for end-of-file,
    which a server still holding the pipes would delay by its own shutdown."""
    pids = tmp_path / "pids"
    (tmp_path / "s.toml").write_text(spec_text([("slow", str(ops_dir / "faulty.py") + ":slow")]))
    proc = _start_watched(["run", str(tmp_path / "s.toml")], pids)
    try:
        (worker,) = _wait_for_workers(pids)
        with open(f"/proc/{worker}/stat") as f:
            server = int(f.read().split(")")[-1].split()[1])
        assert server != proc.pid
        assert os.readlink(f"/proc/{proc.pid}/fd/1").startswith("pipe:")  # what the server must not hold
        assert os.readlink(f"/proc/{server}/fd/1") == os.devnull
        assert os.readlink(f"/proc/{server}/fd/2") == os.devnull
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 143


def test_the_server_setup_does_nothing_outside_the_server():
    """Imported anywhere else, server.py neither silences the process nor changes its exit status."""
    import sys

    proc = subprocess.run([sys.executable, "-c", "import sys, gradcheck_cli.suite.server as s; "
                           "print('still here', s.in_server()); sys.stderr.write('err'); sys.exit(3)"],
                          capture_output=True, text=True, env=clean_env(), timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "still here False\n", "err")


# ---- reports that always arrive ------------------------------------------------------------

def test_an_unwritable_junit_path_fails_before_anything_runs(run_cli, ops_dir, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "mark.py").write_text(f"def f(x):\n    open({str(marker)!r}, 'w').close()\n    return x * 2\n")
    started = time.perf_counter()
    rc, out, err = run_cli("op", str(tmp_path / "mark.py:f"), "--at", "x=1", "--junit", "/dev/null/r.xml")
    assert rc == 2 and out == "" and "cannot write --junit file" in err
    assert not marker.exists() and time.perf_counter() - started < 5
    rc, out, err = run_cli("op", str(tmp_path / "mark.py:f"), "--at", "x=1", "--junit", "/dev/full")
    assert rc == 2 and "not a regular file" in err and not marker.exists()


def test_a_junit_write_that_fails_after_the_run_keeps_the_verdict_and_the_old_file(run_cli, strict_json, ops_dir,
                                                                                     tmp_path, monkeypatch):
    import gradcheck_cli.output as output

    junit = tmp_path / "r.xml"
    junit.write_text("<previous report/>")
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output.os, "fsync", full_disk)
    rc, out, err = run_cli("op", str(ops_dir / "faulty.py:exits"), "--at", "x=1", "--json", "--junit", str(junit))
    assert rc == 1  # the real verdict, not 2
    assert strict_json(out)["checks"][0]["passed"] is False  # the report still printed
    assert "No space left on device" in err and "Traceback" not in err
    assert junit.read_text() == "<previous report/>"  # not truncated
    assert not list(tmp_path.glob(".r.xml.*"))  # no temporary file left
    rc, out, err = run_cli("op", str(ops_dir / "faulty.py:good"), "--at", "x=1", "--json", "--junit", str(junit))
    assert rc == 2 and strict_json(out)["passed"] is True  # passing, but the requested report is missing
    monkeypatch.setattr(output.os, "fsync", real_fsync)


def test_json_to_a_full_stdout(ops_dir):
    with open("/dev/full", "w") as full:
        for attr, code in (("good", 2), ("exits", 1)):
            proc = subprocess.run(gradcheck_command() + ["op", str(ops_dir / f"faulty.py:{attr}"), "--at", "x=1",
                                                         "--json"], stdout=full, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, env=clean_env(), timeout=120)
            err = proc.stderr.decode()
            assert proc.returncode == code, err
            assert "No space left on device" in err and "Traceback" not in err


def test_a_closed_stdout(ops_dir):
    proc = subprocess.run(" ".join(gradcheck_command()) + f" op {ops_dir / 'faulty.py:good'} --at x=1 --json >&-",
                          shell=True, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env(), timeout=120)
    assert proc.returncode in (0, 2) and b"Traceback" not in proc.stderr


def test_a_500_deep_toml_array_is_a_spec_error(run_cli, tmp_path):
    (tmp_path / "deep.toml").write_text("x = " + "[" * 500 + "]" * 500 + "\n")
    rc, out, err = run_cli("run", str(tmp_path / "deep.toml"))
    assert rc == 2 and out == "" and "nested too deeply" in err and "Traceback" not in err


def test_an_unreadable_subfolder_is_an_error(run_cli, tmp_path, monkeypatch):
    (tmp_path / "ok.toml").write_text('[[check]]\nexpr = "x**2"\nat = { x = 1.0 }\n')
    (tmp_path / "locked").mkdir()
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rc, out, err = run_cli("run", str(tmp_path))
    assert rc == 2 and "locked" in err and "cannot read this folder" in err


def test_a_failed_check_is_never_exit_0_even_with_fail_fast(run_cli, strict_json, ops_dir):
    rc, report, _, _ = run_suite(run_cli, strict_json, ops_dir, [("a", "good"), ("b", "segfault"), ("c", "good")],
                                 "--fail-fast")
    assert rc == 1 and [c["name"] for c in report["checks"]] == ["a", "b"]


def test_isolation_docs_in_the_readme():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "## Faults and timeouts" in text
    section = text.split("## Faults and timeouts", 1)[1].split("\n## ", 1)[0]
    for word in ("worker_crashed", "timeout", "global_state_changed", "130", "143", "--allow-empty"):
        assert word in section, word
