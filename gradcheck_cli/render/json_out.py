"""The JSON report: strict RFC 8259 (allow_nan=False, so a stray NaN is a bug, not output)."""

from __future__ import annotations

import json


def render(report) -> str:
    return json.dumps(report.to_dict(), allow_nan=False, indent=2)
