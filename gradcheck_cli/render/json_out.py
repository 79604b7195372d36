"""The JSON report: strict RFC 8259 (allow_nan=False, so a stray NaN is a bug, not output).

The layout scales: the report's structure is indented (one line per key of the report
and of each check), while each gradient, diagnostic and array is written on one line,
numbers never one per line.  A check with a 2000-element Jacobian is a few lines, not
millions (jsonform.py keeps the arrays themselves small).
"""

from __future__ import annotations

import json

# the containers laid out over several lines (paths from the root; "*" is any list index)
_MULTILINE = {(), ("checks",), ("checks", "*"), ("checks", "*", "gradients"), ("checks", "*", "diagnostics"),
              ("meta",), ("error",), ("tool",)}
_INDENT = "  "


def render(report, detail: str = "full") -> str:
    """The report as JSON text; `detail` "summary" leaves the arrays out.  The cyclic
    garbage collector waits meanwhile: a suite's report is millions of new floats in new
    lists, and collections triggered by their allocation would scan them over and over
    (4x the time of building them; none of them is garbage until the text is done)."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return dumps(report.to_dict(detail))
    finally:
        if was_enabled:
            gc.enable()


def dumps(doc) -> str:
    """`doc` as strict JSON in the report layout."""
    parts: list[str] = []
    _write(doc, (), 0, parts)
    return "".join(parts)


def _compact(value) -> str:
    return json.dumps(value, allow_nan=False, separators=(", ", ": "))


def _write(value, path: tuple, depth: int, parts: list) -> None:
    if path not in _MULTILINE or not isinstance(value, (dict, list)) or not value:
        parts.append(_compact(value))
        return
    inner = _INDENT * (depth + 1)
    if isinstance(value, dict):
        parts.append("{\n")
        for i, (key, item) in enumerate(value.items()):
            parts.append(f"{inner}{json.dumps(str(key))}: ")
            _write(item, path + (key,), depth + 1, parts)
            parts.append(",\n" if i < len(value) - 1 else "\n")
        parts.append(_INDENT * depth + "}")
    else:
        parts.append("[\n")
        for i, item in enumerate(value):
            parts.append(inner)
            _write(item, path + ("*",), depth + 1, parts)
            parts.append(",\n" if i < len(value) - 1 else "\n")
        parts.append(_INDENT * depth + "]")


def render_error(message: str, kind: str, column: int | None = None) -> str:
    """What `--json` prints on exit 2: {"schema_version": 1, "error": {"message", "kind"}, ...}."""
    return dumps(error_document(message, kind, column))


def error_document(message: str, kind: str, column: int | None = None) -> dict:
    """What `--json` prints on exit 2: the input could not be used, and why (without
    importing the report and numpy: a usage error answers at once)."""
    from gradcheck_cli.versions import SCHEMA_VERSION, tool_versions

    error = {"message": message, "kind": kind}
    if column is not None:
        error["column"] = column
    return {"schema_version": SCHEMA_VERSION, "passed": False, "error": error, "tool": dict(tool_versions())}
