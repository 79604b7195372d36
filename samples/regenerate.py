"""Run every command shown in a samples page again and write what it prints into the page.

    python samples/regenerate.py samples/models.md samples/ops.md samples/seed.md

A page shows commands in fenced blocks (```text or ```console) whose first line is
`$ gradcheck ...`; the rest of the block is what that command printed, and a last line
`[exit N]`, where the page shows one, its exit code.  Commands run from the repository
root in a clean environment (no COLUMNS, no colour): the width a pipe gets.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```(text|console)\n\$ (gradcheck [^\n]*)\n(.*?)```", re.S)


def run(command: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "NO_COLOR", "TERM")}
    exe = Path(sys.executable).with_name("gradcheck")
    args = shlex.split(command)
    args[0] = str(exe) if exe.exists() else "gradcheck"
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).rstrip("\n"), done.returncode


def regenerate(page: Path) -> int:
    text = page.read_text(encoding="utf-8")
    count = 0

    def redo(m: re.Match) -> str:
        nonlocal count
        fence, command, old = m.group(1), m.group(2), m.group(3)
        printed, code = run(command)
        count += 1
        tail = f"\n[exit {code}]" if re.search(r"^\[exit \d+\]\s*$", old, re.M) else ""
        return f"```{fence}\n$ {command}\n{printed}{tail}\n```"

    page.write_text(BLOCK.sub(redo, text), encoding="utf-8")
    return count


def main(argv: list[str]) -> int:
    for name in argv or ["samples/models.md", "samples/ops.md", "samples/seed.md"]:
        print(f"{name}: {regenerate(ROOT / name)} command(s) run again")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
