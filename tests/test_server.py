"""The persistent worker server (`gradcheck server start|stop|status`, issue 16): checks run
in workers forked from it, as they would from the run's own server -- the caller's cwd,
environment, sys.path, umask and limits; crashes, timeouts and a killed caller handled the
same -- and it is never used by another environment, with GRADCHECK_SERVER=off, from an
unsafe directory, or after it died.

Everything goes through real processes: the server is one, and so is every caller.  Each
op records, in the file GC_RECORD names, the process it ran in.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli_util import clean_env, gradcheck_command, run_gradcheck
from proc_util import alive, wait_gone
from server_util import comparable, own_server_env, private_folder, running_server, start, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running_server(tmp_path_factory, "server_ops")


def _op(server, attr: str, tmp_path: Path, *extra: str, env: dict | None = None, **run) -> tuple:
    record = tmp_path / f"{attr}.json"
    env = {**(env or server.env), "GC_RECORD": str(record), "GC_VAR": "from-the-caller"}
    done = run_gradcheck(["op", f"{server.ops}:{attr}", "--at", "x=randn(3)", "--json", *extra], env=env,
                         cwd=tmp_path, **run)
    return done, (json.loads(record.read_text()) if record.exists() else None)


def test_a_check_runs_in_a_worker_of_the_server_with_the_callers_context(server, tmp_path):
    before = json.loads(run_gradcheck(["server", "status", "--json"], env=server.env).stdout)
    done, seen = _op(server, "recorded", tmp_path)
    assert done.returncode == 0, done.stderr
    assert seen["ppid"] == server.pid, "the worker was not forked by the server"
    assert seen["cwd"] == str(tmp_path) and seen["var"] == "from-the-caller"
    after = json.loads(run_gradcheck(["server", "status", "--json"], env=server.env).stdout)
    assert after["served"] > before["served"] and after["running"] is True
    alone, seen_alone = _op(server, "recorded", tmp_path, env={**server.env, "GRADCHECK_SERVER": "off"})
    assert seen_alone["ppid"] != server.pid
    assert comparable(json.loads(done.stdout)) == comparable(json.loads(alone.stdout))


def test_the_callers_umask_and_resource_limits_hold_in_the_worker(server, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    mine = min(soft, 300)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (mine, hard))
        os.umask(0o027)

    record = tmp_path / "r.json"
    env = {**server.env, "GC_RECORD": str(record)}
    done = subprocess.run(gradcheck_command() + ["op", f"{server.ops}:recorded", "--at", "x=randn(2)"], env=env,
                          capture_output=True, preexec_fn=limited, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    seen = json.loads(record.read_text())
    assert seen["ppid"] == server.pid and seen["nofile"] == mine and seen["umask"] == 0o027


def test_a_crash_in_a_server_worker_is_that_checks_failure_and_the_server_lives_on(server, tmp_path):
    done, seen = _op(server, "segfault", tmp_path)
    assert done.returncode == 1, done.stderr
    (check,) = json.loads(done.stdout)["checks"]
    assert [d["code"] for d in check["diagnostics"]][0] == "worker_crashed"
    assert "SIGSEGV" in check["diagnostics"][0]["message"] and seen["ppid"] == server.pid
    assert alive(server.pid)
    again, _ = _op(server, "recorded", tmp_path)
    assert again.returncode == 0


def test_a_timeout_kills_the_server_worker(server, tmp_path):
    done, seen = _op(server, "sleeps", tmp_path, "--timeout", "1")
    assert done.returncode == 1
    (check,) = json.loads(done.stdout)["checks"]
    assert check["diagnostics"][0]["code"] == "timeout"
    assert seen["ppid"] == server.pid and wait_gone(seen["pid"])


def test_a_server_worker_dies_with_a_caller_killed_by_sigkill(server, tmp_path):
    record = tmp_path / "r.json"
    env = {**server.env, "GC_RECORD": str(record)}
    proc = subprocess.Popen(gradcheck_command() + ["op", f"{server.ops}:sleeps", "--at", "x=1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = wait_for(record)
    assert worker["ppid"] == server.pid
    proc.kill()
    proc.wait(timeout=10)
    assert wait_gone(worker["pid"]), "the worker outlived its caller"
    assert alive(server.pid)


def test_stop_lets_a_running_check_finish_and_a_new_server_start_meanwhile(tmp_path):
    folder, env, ops = own_server_env(tmp_path)
    info = start(env)
    record = tmp_path / "r.json"
    proc = subprocess.Popen(gradcheck_command() + ["op", f"{ops}:sleeps", "--at", "x=1", "--json"],
                            env={**env, "GC_RECORD": str(record), "GC_SLEEP": "4"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_for(record)
    stopped = run_gradcheck(["server", "stop", "--wait", "0"], env=env)
    assert stopped.returncode == 0 and f"stopping (pid {info['pid']})" in stopped.stdout
    assert "1 running worker(s)" in stopped.stdout
    status = run_gradcheck(["server", "status"], env=env)
    assert status.returncode == 1 and "none running" in status.stdout  # it takes no new caller
    new = start(env)  # the stopping one let go of the environment's lock
    assert new["pid"] != info["pid"] and new["started_now"] is True
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert json.loads(record.read_text())["ppid"] == info["pid"] and wait_gone(info["pid"])
    assert alive(new["pid"])
    stopped = run_gradcheck(["server", "stop", "--json"], env=env)
    assert json.loads(stopped.stdout) == {"stopped": True, "pid": new["pid"], "exited": True}
    assert list(folder.glob("*.sock")) == []
    shutil.rmtree(folder, ignore_errors=True)


def test_a_malformed_request_leaves_the_server_up(server):
    import socket

    (path,) = server.folder.glob("*.sock")
    for payload in (b"\x00\x00\x00\x03[1]", b"\x00\x00\x00\x02{}", b"\xff\xff\xff\xff", b"garbage"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            assert sock.recv(100) == b""  # no answer, the connection closed
    assert run_gradcheck(["server", "status"], env=server.env).returncode == 0


def test_another_environment_off_or_an_unsafe_folder_never_reaches_the_server(server, tmp_path):
    other = {**server.env, "TORCH_GRADCHECK_TEST_MARK": "1"}  # torch reads TORCH_* at import: another environment
    for env in (other, {**server.env, "GRADCHECK_SERVER": "off"}):
        done, seen = _op(server, "recorded", tmp_path, env=env)
        assert done.returncode == 0 and seen["ppid"] != server.pid
    assert run_gradcheck(["server", "status"], env=other).returncode == 1
    open_folder = private_folder()
    try:
        os.chmod(open_folder, 0o777)
        env = {**server.env, "GRADCHECK_SERVER_DIR": str(open_folder)}
        refused = run_gradcheck(["server", "start"], env=env)
        assert refused.returncode == 2 and "is not private" in refused.stderr and "Traceback" not in refused.stderr
        assert list(open_folder.iterdir()) == []
    finally:
        shutil.rmtree(open_folder, ignore_errors=True)
    off = run_gradcheck(["server", "start"], env={**server.env, "GRADCHECK_SERVER": "off"})
    assert off.returncode == 2 and "GRADCHECK_SERVER is off" in off.stderr


def test_a_dead_server_is_passed_over_and_replaced(tmp_path):
    folder, env, ops = own_server_env(tmp_path)
    first = start(env)
    assert start(env)["pid"] == first["pid"]  # already running: the same one
    os.kill(first["pid"], signal.SIGKILL)
    assert wait_gone(first["pid"])
    assert list(folder.glob("*.sock")), "the dead server's socket should still be there for this test"
    record = tmp_path / "r.json"
    done = run_gradcheck(["op", f"{ops}:recorded", "--at", "x=randn(3)"], env={**env, "GC_RECORD": str(record)})
    assert done.returncode == 0, done.stderr
    assert json.loads(record.read_text())["ppid"] != first["pid"]
    second = start(env)
    assert second["pid"] != first["pid"] and second["started_now"] is True
    run_gradcheck(["server", "stop"], env=env)
    assert wait_gone(second["pid"])
    shutil.rmtree(folder, ignore_errors=True)


def test_two_starts_at_once_give_one_server():
    folder = private_folder()
    env = clean_env(GRADCHECK_SERVER="on", GRADCHECK_SERVER_DIR=str(folder))
    procs = [subprocess.Popen(gradcheck_command() + ["server", "start", "--json", "--idle-timeout", "50000"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]  # past epoll's limit
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()
        answers.append(json.loads(out))
    assert answers[0]["pid"] == answers[1]["pid"] and sorted(a["started_now"] for a in answers) == [False, True]
    time.sleep(0.5)
    assert run_gradcheck(["server", "status"], env=env).returncode == 0
    run_gradcheck(["server", "stop"], env=env)
    assert wait_gone(answers[0]["pid"])
    shutil.rmtree(folder, ignore_errors=True)


def test_an_idle_server_exits_by_itself_counting_from_its_last_worker(tmp_path):
    folder, env, ops = own_server_env(tmp_path)
    info = start(env, "--idle-timeout", "0.04")  # 2.4 s
    record = tmp_path / "r.json"
    done = run_gradcheck(["op", f"{ops}:sleeps", "--at", "x=1"], env={**env, "GC_RECORD": str(record),
                                                                          "GC_SLEEP": "3.5"})
    assert done.returncode == 0 and json.loads(record.read_text())["ppid"] == info["pid"]
    time.sleep(1.2)  # half its idle time
    assert alive(info["pid"]), "busy longer than its idle time, it exited as its last worker ended"
    assert wait_gone(info["pid"], 20), "the idle server is still running"
    assert list(folder.glob("*.sock")) == []
    shutil.rmtree(folder, ignore_errors=True)


def test_a_suite_under_the_server_gives_the_report_it_gives_without(server, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text("\n".join([
        '[[check]]\nname = "expr"\nexpr = "sum(sin(x)*exp(x))"\nat = { x = "randn(4)" }\n',
        f'[[check]]\nname = "op"\nop = "{server.ops}:recorded"\nat = {{ x = "randn(2, 3)" }}\n',
        '[[check]]\nname = "scalar"\nexpr = "sigmoid(w*x)"\nat = { w = 2, x = 0.5 }\nwrt = ["w"]\n']))
    reports = []
    for mode in ("on", "off"):
        done = run_gradcheck(["run", str(spec), "--jobs", "2", "--json"], env={**server.env, "GRADCHECK_SERVER": mode})
        assert done.returncode == 0, done.stderr
        reports.append(comparable(json.loads(done.stdout)))
    assert reports[0] == reports[1]


@pytest.mark.parametrize("command, option", [("start", "--idle-timeout"), ("stop", "--wait")])
@pytest.mark.parametrize("bad", ["-1", "nan"])
def test_a_bad_idle_timeout_or_wait_is_a_user_error(command, option, bad):
    done = run_gradcheck(["server", command, option, bad],
                         env=clean_env(GRADCHECK_SERVER="on", GRADCHECK_SERVER_DIR="/nonexistent/gcs"))
    assert done.returncode == 2 and option in done.stderr and "Traceback" not in done.stderr
