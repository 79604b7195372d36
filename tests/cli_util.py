"""Run the installed `gradcheck` console script in a subprocess, as a user or CI job does.

A subprocess is the only honest way to see what a user sees: the real entry point
(`gradcheck_cli.front:main`), real pipes (not terminals), and whatever the interpreter
prints on its way out (a traceback, a BrokenPipeError during the final flush).
"""

from __future__ import annotations

import os
import pty
import shutil
import struct
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path


def gradcheck_command() -> list[str]:
    """The console script next to this interpreter, else `python -m gradcheck_cli`."""
    script = shutil.which("gradcheck", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "gradcheck_cli"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float


def clean_env(**extra: str) -> dict:
    """The environment minus anything that changes output style, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "FORCE_COLOR", "PY_COLORS", "CLICOLOR_FORCE", "TERM", "COLUMNS")}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def run_gradcheck(args: list[str], *, cwd: Path | str | None = None, env: dict | None = None,
                  timeout: float = 120) -> Result:
    """Run `gradcheck ARGS` with stdout and stderr captured through pipes."""
    started = time.perf_counter()
    proc = subprocess.run(gradcheck_command() + list(args), cwd=cwd, env=env or clean_env(),
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    result = Result(proc.returncode, proc.stdout.decode("utf-8", errors="replace"),
                    proc.stderr.decode("utf-8", errors="replace"), elapsed)
    if "--json" in args and result.stdout.strip() and (not args or args[0] not in ("steps", "server")):
        from report_audit import audit_json_text

        audit_json_text(result.stdout, f"gradcheck {' '.join(map(str, args))[:200]}")
    return result


def unsafe_characters(text: str) -> list[str]:
    """Characters that must never reach a terminal from user input: control characters
    other than newline (ESC starts escape codes, CR overwrites the line) and format
    characters (bidi overrides such as U+202E reorder what the reader sees)."""
    return [f"U+{ord(c):04X}" for c in text
            if c != "\n" and unicodedata.category(c) in ("Cc", "Cf")]


def terminal_output(args: list[str], env: dict, columns: int | None = None, cwd: Path | str | None = None,
                    timeout: float = 120) -> tuple[int, bytes, bytes]:
    """`gradcheck ARGS` with stdout on a pseudo-terminal (`columns` wide if given), as a
    user's shell gives it: (exit code, what it showed, its stderr)."""
    import tempfile

    leader, follower = pty.openpty()
    try:
        if columns is not None:
            import fcntl
            import termios

            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: a long stderr cannot stall the run
            proc = subprocess.Popen(gradcheck_command() + args, stdout=follower, stderr=err,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd)
            os.close(follower)
            follower = None
            chunks = []
            while True:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not data:
                    break
                chunks.append(data)
            proc.wait(timeout=timeout)
            err.seek(0)
            return proc.returncode, b"".join(chunks), err.read()
    finally:
        os.close(leader)
        if follower is not None:
            os.close(follower)
