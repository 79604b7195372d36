"""The published JSON Schema of the report (`gradcheck schema`): the file
schema/report.schema.json, with the list of diagnostic codes filled in from codes.py,
the one registry of codes (so adding a code is one line there, and the schema never
lags behind it)."""

from __future__ import annotations

import json
from importlib import resources


def load() -> dict:
    """The schema as a dict, every diagnostic code listed under $defs/code."""
    from gradcheck_cli.codes import CODES

    schema = json.loads(resources.files("gradcheck_cli").joinpath("schema/report.schema.json").read_text("utf-8"))
    code = schema["$defs"]["code"]
    code["enum"] = sorted(CODES)
    code["x-gradcheck-codes"] = {name: {"severity": c.severity, "meaning": c.meaning, "crash": c.crash}
                                 for name, c in sorted(CODES.items())}
    return schema


def text() -> str:
    """The schema as `gradcheck schema` prints it."""
    return json.dumps(load(), indent=2) + "\n"
