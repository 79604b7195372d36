"""What the tests of the persistent server share: the ops they check (each records, in
the file GC_RECORD names, the process it ran in), a private server folder, starting a
server, and waiting for processes."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from cli_util import clean_env, run_gradcheck
from proc_util import wait_gone

OPS = '''
import json, os, resource, signal, time
import torch

def _record():
    path = os.environ.get("GC_RECORD")
    if path:
        with open(path, "w") as f:
            mask = os.umask(0)
            os.umask(mask)
            json.dump({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "var": os.environ.get("GC_VAR"),
                       "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "umask": mask,
                       "nice": os.getpriority(os.PRIO_PROCESS, 0), "cpus": sorted(os.sched_getaffinity(0))}, f)

def recorded(x):
    _record()
    return torch.tanh(x) * x

_SLEPT = []

def sleeps(x):
    _record()
    if not _SLEPT:  # the first call only: a check calls the op many times
        _SLEPT.append(True)
        time.sleep(float(os.environ.get("GC_SLEEP", "60")))
    return torch.tanh(x) * x

def segfault(x):
    _record()
    os.kill(os.getpid(), signal.SIGSEGV)
'''


def private_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="gcs", dir="/tmp"))  # short: a socket's path holds 107 bytes


def own_server_env(tmp_path: Path) -> tuple[Path, dict, Path]:
    """A private folder, an environment that uses servers there, and the ops file."""
    folder = private_folder()
    ops = tmp_path / "ops.py"
    ops.write_text(OPS)
    return folder, clean_env(GRADCHECK_SERVER="on", GRADCHECK_SERVER_DIR=str(folder)), ops


def wait_for(record: Path) -> dict:
    """What the op recorded, once it has run (it may still be running)."""
    deadline = time.monotonic() + 60
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return json.loads(record.read_text())


def start(env: dict, *extra: str) -> dict:
    started = run_gradcheck(["server", "start", "--json", *extra], env=env)
    assert started.returncode == 0, started.stderr
    return json.loads(started.stdout)


def running_server(tmp_path_factory, label: str):
    """A module's server (a fixture's body: yields it, stops it after), started in a
    private folder with the ops file beside: .env .pid .folder .ops."""
    folder, env, ops = own_server_env(tmp_path_factory.mktemp(label))
    info = start(env, "--idle-timeout", "10")
    yield SimpleNamespace(env=env, pid=info["pid"], folder=folder, ops=ops)
    run_gradcheck(["server", "stop"], env=env)
    wait_gone(info["pid"])
    shutil.rmtree(folder, ignore_errors=True)


def comparable(report: dict) -> dict:
    """A JSON report without what differs from run to run (times, memory, the tool block)."""
    if isinstance(report, dict):
        return {k: comparable(v) for k, v in report.items()
                if k not in ("duration_s", "worker_peak_rss_mib", "tool", "meta")}
    if isinstance(report, list):
        return [comparable(v) for v in report]
    return report
