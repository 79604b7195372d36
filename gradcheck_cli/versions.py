"""The versions a report was made with (gradcheck, torch, SymPy, Python), for the report's
`tool` block and `gradcheck --version`.

torch and SymPy are never imported here: a module already loaded gives its own
__version__, else the installed distribution's metadata does.  So the parent process of
`gradcheck op` / `run` (which never imports torch: its workers do) can still say which
torch it runs, and every version is a plain str (torch's TorchVersion would make a
report import torch wherever it is unpickled).
"""

from __future__ import annotations

import platform
import sys
from functools import lru_cache

GRADCHECK_VERSION = "0.1.0"  # the package's version (pyproject.toml says the same)
SCHEMA_VERSION = 1  # the JSON report's schema_version (report.py and the error document)


def _version_of(module: str, distribution: str) -> str | None:
    loaded = sys.modules.get(module)
    version = getattr(loaded, "__version__", None)
    if version is not None:
        return str(version)
    from importlib import metadata

    try:
        return str(metadata.version(distribution))
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def tool_versions() -> dict:
    """{"gradcheck": ..., "torch": ..., "sympy": ..., "python": ...} (None for a package
    that is not installed)."""
    return {"gradcheck": GRADCHECK_VERSION, "torch": _version_of("torch", "torch"),
            "sympy": _version_of("sympy", "sympy"), "python": platform.python_version()}


def version_text() -> str:
    """`gradcheck --version`: one line per component."""
    v = tool_versions()
    return "\n".join([f"gradcheck {v['gradcheck']}", f"torch {v['torch'] or '(not installed)'}",
                      f"sympy {v['sympy'] or '(not installed)'}",
                      f"Python {v['python']} ({platform.python_implementation()}, {sys.platform})"])
