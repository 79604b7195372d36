"""Whole commands run by the persistent server (suite/forward.py, suite/hosted.py): with
`gradcheck server` up, `gradcheck check`, `op`, `run` and `steps` are handed to it and must
be indistinguishable from running them here -- the same stdout, stderr and exit code, in a
pipe and on a terminal, with the caller's cwd, environment and window -- except for the
time they take.  Ctrl-C and SIGTERM reach the command, a caller killed with SIGKILL takes
the command and its workers with it, and a server gone mid-command is said in one line.

Every check runs twice, with the server and with GRADCHECK_SERVER=off, and the two are
compared; the server's own count of the commands it ran proves which way each one went.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_util import gradcheck_command, run_gradcheck, terminal_output
from proc_util import alive, children_of, state, wait_gone
from server_util import OPS, comparable, own_server_env, running_server, start, wait_for

ROOT = Path(__file__).resolve().parent.parent
SEED = ["check", "sigmoid(w*x+b)", "--loss", "bce", "--target", "0", "--at", "w=2", "--at", "b=1", "--at", "x=6.7",
        "--wrt", "w,b", "--dtype", "float32"]
OFF = {"GRADCHECK_SERVER": "off"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running_server(tmp_path_factory, "hosted_ops")


def _commands_run(server) -> int:
    done = run_gradcheck(["server", "status", "--json"], env=server.env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["commands"]


CASES = [
    ("seed table", SEED, {}, 0),
    ("seed table, COLUMNS=64", SEED, {"COLUMNS": "64"}, 0),
    ("seed table, FORCE_COLOR", SEED, {"FORCE_COLOR": "1"}, 0),
    ("seed JSON", SEED + ["--json"], {}, 0),
    ("a syntax error", ["check", "sigmoid(w*x+"], {}, 2),
    ("a syntax error, --json", ["check", "sigmoid(w*x+", "--json"], {}, 2),
    ("an unknown option", ["check", "x**2", "--nope"], {}, 2),
    ("a failing op", ["op", "samples/ops/buggy.py:SwishFlatKernel", "--at", "x=randn(3,4)", "--json"], {}, 1),
    ("a failing suite, summary", ["run", "samples/specs_failing"], {}, 1),
    ("a suite, --jobs 2, JSON", ["run", "samples/specs/seed.toml", "samples/specs/activations.toml", "--jobs", "2",
                                 "--json"], {}, 0),
    ("steps", ["steps", "sin(x)", "--at", "x=1"], {}, 0),
    ("a command's help", ["op", "--help"], {}, 0),
]


@pytest.mark.parametrize("label, args, extra, code", CASES, ids=[c[0] for c in CASES])
def test_a_command_run_by_the_server_prints_what_it_prints_without(server, label, args, extra, code):
    before = _commands_run(server)
    hosted = run_gradcheck(args, env={**server.env, **extra}, cwd=ROOT)
    assert _commands_run(server) == before + 1, "the command was not run by the server"
    here = run_gradcheck(args, env={**server.env, **extra, **OFF}, cwd=ROOT)
    assert (hosted.returncode, here.returncode) == (code, code), hosted.stderr + here.stderr
    if "--json" in args and hosted.stdout.strip():
        assert comparable(json.loads(hosted.stdout)) == comparable(json.loads(here.stdout))
    else:
        assert hosted.stdout == here.stdout
    assert hosted.stderr == here.stderr
    assert "Traceback" not in hosted.stderr


def test_python_dash_m_names_itself_the_same_way(server):
    args = [sys.executable, "-m", "gradcheck_cli", "check", "x", "--bogus"]
    before = _commands_run(server)
    hosted = subprocess.run(args, env=server.env, capture_output=True, text=True, timeout=120)
    assert _commands_run(server) == before + 1
    here = subprocess.run(args, env={**server.env, **OFF}, capture_output=True, text=True, timeout=120)
    assert hosted.returncode == here.returncode == 2
    assert "Usage: python -m gradcheck_cli check" in hosted.stderr and hosted.stderr == here.stderr


def test_a_terminal_stays_a_terminal_with_its_width_and_colour(server):
    before = _commands_run(server)
    code, hosted, _ = terminal_output(SEED, server.env, 96, ROOT)
    assert _commands_run(server) == before + 1
    code_here, here, _ = terminal_output(SEED, {**server.env, **OFF}, 96, ROOT)
    assert code == code_here == 0
    assert b"\x1b[" in hosted, "no colour on a terminal"
    assert hosted == here
    assert max(len(line) for line in _plain(hosted).splitlines()) <= 96


def _plain(shown: bytes) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", shown.decode("utf-8"))


def test_the_command_runs_in_the_callers_directory_with_its_environment(server, tmp_path):
    (tmp_path / "ops.py").write_text(OPS)
    record = tmp_path / "r.json"
    env = {**server.env, "GC_RECORD": str(record), "GC_VAR": "from-the-caller"}
    before = _commands_run(server)
    done = run_gradcheck(["op", "ops.py:recorded", "--at", "x=randn(3)"], env=env, cwd=tmp_path)  # a relative path
    assert done.returncode == 0, done.stderr
    assert _commands_run(server) == before + 1
    seen = json.loads(record.read_text())
    assert seen["ppid"] == server.pid and seen["cwd"] == str(tmp_path) and seen["var"] == "from-the-caller"


def _sleeping_command(server, tmp_path, launcher: tuple = (), **popen) -> tuple:
    """`gradcheck op` on an op that sleeps, handed to the server: (caller, worker pid, command pid)."""
    record = tmp_path / "r.json"
    env = {**server.env, "GC_RECORD": str(record), "GC_SLEEP": "120"}
    proc = subprocess.Popen([*launcher, *gradcheck_command(), "op", f"{server.ops}:sleeps", "--at", "x=1", "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, **popen)
    seen = wait_for(record)
    assert seen["ppid"] == server.pid, "the worker was not forked by the server"
    (command,) = [pid for pid in children_of(server.pid) if pid != seen["pid"]]
    return proc, seen["pid"], command


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_reach_the_command(server, tmp_path, sig, code):
    proc, worker, command = _sleeping_command(server, tmp_path)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    report = json.loads(out)
    assert report["interrupted"] is True and report["meta"]["interrupted"] == signal.Signals(sig).name
    assert b"Traceback" not in err
    assert wait_gone(worker) and wait_gone(command)
    assert alive(server.pid)


def test_a_caller_killed_by_sigkill_takes_its_command_and_workers_along(server, tmp_path):
    proc, worker, command = _sleeping_command(server, tmp_path)
    proc.kill()
    proc.communicate(timeout=10)
    assert wait_gone(command), "the command outlived its caller"
    assert wait_gone(worker), "the worker outlived its caller"
    assert alive(server.pid)


def test_a_command_killed_by_a_signal_kills_its_caller_with_the_same(server, tmp_path):
    proc, worker, command = _sleeping_command(server, tmp_path)
    os.kill(command, signal.SIGKILL)  # what the kernel's OOM killer does
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert wait_gone(worker)


def test_a_closed_stdout_runs_the_command_here(server):
    before = _commands_run(server)
    done = subprocess.run(gradcheck_command() + SEED, env=server.env, stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1), timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert _commands_run(server) == before


def test_a_server_gone_mid_command_is_said_in_one_line(tmp_path):
    folder, env, ops = own_server_env(tmp_path)
    info = start(env)
    record = tmp_path / "r.json"
    proc = subprocess.Popen(gradcheck_command() + ["op", f"{ops}:sleeps", "--at", "x=1"],
                            env={**env, "GC_RECORD": str(record), "GC_SLEEP": "120"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    worker = wait_for(record)
    (command,) = [pid for pid in children_of(info["pid"]) if pid != worker["pid"]]
    os.kill(info["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.decode().strip().splitlines()[-1] == ("gradcheck: error: the gradcheck server ended while it ran "
                                                     "this command")
    assert b"Traceback" not in err
    assert wait_gone(command) and wait_gone(worker["pid"])
    after = run_gradcheck(SEED, env=env)  # its socket is left behind: passed over, the command runs here
    assert after.returncode == 0, after.stderr
    shutil.rmtree(folder, ignore_errors=True)


def test_a_stopping_server_lets_a_running_command_finish_and_takes_no_new_one(tmp_path):
    folder, env, ops = own_server_env(tmp_path)
    info = start(env)
    record = tmp_path / "r.json"
    proc = subprocess.Popen(gradcheck_command() + ["op", f"{ops}:sleeps", "--at", "x=1", "--json"],
                            env={**env, "GC_RECORD": str(record), "GC_SLEEP": "3"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(record)
    stopped = run_gradcheck(["server", "stop", "--wait", "0"], env=env)
    assert "1 running worker(s) and 1 running command(s)" in stopped.stdout
    started = time.monotonic()
    after = run_gradcheck(SEED, env=env)  # runs here meanwhile
    assert after.returncode == 0 and time.monotonic() - started < 60
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["passed"] is True
    assert wait_gone(info["pid"])
    shutil.rmtree(folder, ignore_errors=True)


def _limited_cgroup(tmp_name: str):
    """A new cgroup under this process's own with a 64 GiB memory limit: (its folder, the
    line that puts a process in it), or None where this machine does not let us make one."""
    from gradcheck_cli.suite.cgroups import membership

    groups = membership(os.getpid()) or {}
    if "memory" in groups:  # cgroup v1
        folder, limit = Path("/sys/fs/cgroup/memory") / groups["memory"].lstrip("/") / tmp_name, "memory.limit_in_bytes"
    elif "" in groups and Path("/sys/fs/cgroup/cgroup.controllers").exists():
        folder, limit = Path("/sys/fs/cgroup") / groups[""].lstrip("/") / tmp_name, "memory.max"
    else:
        return None
    try:
        folder.mkdir()
    except OSError:
        return None
    try:
        (folder / limit).write_text(str(64 << 30))
        return folder
    except OSError:
        folder.rmdir()
        return None


def test_a_caller_under_a_cgroup_limit_the_server_is_not_under_runs_everything_itself(server, tmp_path):
    folder = _limited_cgroup(f"gradcheck-test-{os.getpid()}")
    if folder is None:
        pytest.skip("cannot make a cgroup with a memory limit here")
    try:
        record = tmp_path / "r.json"

        def enter() -> None:
            (folder / "cgroup.procs").write_text("0")

        before = _commands_run(server)
        done = subprocess.run(gradcheck_command() + ["op", f"{server.ops}:recorded", "--at", "x=randn(3)"],
                              env={**server.env, "GC_RECORD": str(record)}, capture_output=True, timeout=120,
                              preexec_fn=enter)
        assert done.returncode == 0, done.stderr.decode()
        assert _commands_run(server) == before, "the server took a command whose caller is under a limit it is not"
        assert json.loads(record.read_text())["ppid"] != server.pid, "the worker came from the server"
    finally:
        for _ in range(50):
            try:
                folder.rmdir()
                break
            except OSError:  # its last process is still leaving
                time.sleep(0.1)


def test_a_signal_the_caller_ignores_is_ignored_by_the_command_too(server, tmp_path):
    proc, worker, command = _sleeping_command(server, tmp_path,
                                              preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    with open(f"/proc/{command}/status") as status:
        ignored = int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGHUP - 1)), "nohup's SIGHUP is not ignored by the command"
    proc.send_signal(signal.SIGHUP)  # `nohup gradcheck ... &`, then the terminal closes
    time.sleep(1.0)
    assert proc.poll() is None and alive(command), "SIGHUP ended a command started under nohup"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143 and wait_gone(command) and wait_gone(worker)


# a shell's job control in miniature: a session of its own in which the caller is a process
# group apart from its parent, as a shell's job is (the kernel drops SIGTSTP sent to an
# orphaned group, which a test runner's child may well be in)
JOB_CONTROL = """
import os, subprocess, sys
os.setsid()
child = subprocess.Popen(sys.argv[1:], preexec_fn=lambda: os.setpgid(0, 0))
print(child.pid, flush=True)
code = child.wait()
sys.exit(128 - code if code < 0 else code)
"""


def _stoppable_command(server, tmp_path) -> tuple:
    """_sleeping_command run as a shell's job: (launcher, caller pid, worker pid, command pid)."""
    proc, worker, command = _sleeping_command(server, tmp_path, launcher=(sys.executable, "-c", JOB_CONTROL))
    return proc, int(proc.stdout.readline()), worker, command


def _wait_state(pid: int, stopped: bool) -> bool:
    deadline = time.monotonic() + 10
    while (state(pid) == "T") is not stopped and time.monotonic() < deadline:
        time.sleep(0.05)
    return (state(pid) == "T") is stopped


def test_ctrl_z_stops_the_command_and_fg_continues_it(server, tmp_path):
    proc, caller, worker, command = _stoppable_command(server, tmp_path)
    try:
        os.kill(caller, signal.SIGTSTP)
        assert _wait_state(caller, stopped=True), "the caller did not stop on SIGTSTP"
        assert _wait_state(command, stopped=True), "the command runs on while its caller is stopped"
        os.kill(caller, signal.SIGCONT)  # fg
        assert _wait_state(command, stopped=False), "the command stayed stopped after its caller continued"
    finally:
        os.kill(caller, signal.SIGCONT)
        os.kill(caller, signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 143 and wait_gone(command) and wait_gone(worker)


def _raises(exc):
    def command():
        raise exc
    return command


@pytest.mark.parametrize("command, code, shown, traceback", [
    (lambda: None, 0, "", False),
    (_raises(SystemExit(3)), 3, "", False),
    (_raises(SystemExit("gradcheck: a message")), 1, "gradcheck: a message\n", False),
    (_raises(RuntimeError("a bug of ours")), 1, "RuntimeError: a bug of ours", True),
])
def test_a_hosted_command_ends_as_the_interpreter_would_end_it(capsys, command, code, shown, traceback):
    from gradcheck_cli.suite.hosted import exit_code_of

    assert exit_code_of(command) == code
    err = capsys.readouterr().err
    assert shown in err and ("Traceback (most recent call last)" in err) is traceback


def test_the_callers_niceness_and_cpus_hold_for_the_command_and_its_workers(server, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))[:1]
    record = tmp_path / "r.json"

    def modest() -> None:  # `nice -n 7 taskset -c N gradcheck ...`
        os.nice(7)
        os.sched_setaffinity(0, cpus)

    before = _commands_run(server)
    done = subprocess.run(gradcheck_command() + ["op", f"{server.ops}:recorded", "--at", "x=randn(2)"],
                          env={**server.env, "GC_RECORD": str(record)}, capture_output=True, preexec_fn=modest,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert _commands_run(server) == before + 1
    seen = json.loads(record.read_text())
    assert seen["ppid"] == server.pid and seen["nice"] == os.getpriority(os.PRIO_PROCESS, 0) + 7
    assert seen["cpus"] == cpus


def test_a_caller_killed_while_its_command_is_stopped_takes_it_along(server, tmp_path):
    proc, caller, worker, command = _stoppable_command(server, tmp_path)
    os.kill(caller, signal.SIGTSTP)
    assert _wait_state(command, stopped=True)
    os.kill(caller, signal.SIGKILL)  # Ctrl-Z, then `kill -9 %1`
    proc.communicate(timeout=60)
    assert wait_gone(command), "a stopped command outlived its caller"
    assert wait_gone(worker)
    assert run_gradcheck(["server", "status", "--json"], env=server.env).returncode == 0
