"""The README's quick start is what CI runs: .ci/run must run the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no '## Quick start' bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_exactly_two_commands():
    lines = _quick_start()
    assert len(lines) == 2
    assert "gradcheck check" in lines[0] and "-c constraints.txt" in lines[0]
    assert "pytest" in lines[1] and "-c constraints.txt" in lines[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _quick_start()[1] in ci.splitlines()


def test_torch_pin_lives_in_one_place():
    assert "torch==" in (ROOT / "constraints.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "torch>=2.2" in pyproject and "torch==" not in pyproject
