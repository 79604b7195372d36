"""Validate gradcheck's JSON reports against the published schema (for any test to import).

`validate_json_text(stdout)` is what a CI consumer does: parse strictly (RFC 8259, so a
bare NaN or Infinity is an error, not a float), then validate against
`gradcheck_cli/schema/report.schema.json` (the file `gradcheck schema` prints), then
check what JSON Schema cannot say: every tensor's nesting matches its declared `shape`,
a Hessian is square, and the top-level `passed` is the conjunction of the checks'.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

NONFINITE = ("nan", "inf", "-inf")


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The published schema, as `gradcheck schema` prints it (the package's file with the
    codes of gradcheck_cli/codes.py filled in)."""
    from gradcheck_cli.report_schema import text

    return json.loads(text())


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not strict JSON: bare {name} (non-finite numbers must be the strings {NONFINITE})")


def strict_loads(text: str) -> Any:
    """json.loads that refuses NaN/Infinity/-Infinity (Python's json accepts them by default)."""
    return json.loads(text, parse_constant=_reject_constant)


def nested_shape(value: Any) -> tuple | None:
    """The shape of a nested list (None when ragged); a scalar (number, string, null) is ()."""
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    inner = [nested_shape(v) for v in value]
    if any(s is None for s in inner) or len(set(inner)) != 1:
        return None
    return (len(value),) + inner[0]


def semantic_errors(doc: dict) -> list[str]:
    """Consistency rules the JSON Schema cannot express."""
    problems = []
    if "error" in doc:
        return problems
    checks = doc.get("checks", [])
    if not doc.get("interrupted") and doc.get("passed") != all(c.get("passed") for c in checks):
        problems.append(f"top-level passed={doc.get('passed')} but checks say "
                        f"{[c.get('passed') for c in checks]}")
    for c in checks:
        where = f"check {c.get('name')!r}"
        for g in c.get("gradients", []):
            shape = tuple(g["shape"])
            if "input_shape" in g and "output_shape" in g and \
                    tuple(g["output_shape"]) + tuple(g["input_shape"]) != shape:
                problems.append(f"{where} d/d{g['wrt']}: shape {shape} is not output_shape + input_shape")
            for method in ("autograd", "symbolic", "finite_difference", "fd_error_estimate"):
                if g.get(method) is None:
                    continue
                got = nested_shape(g[method])
                if got != shape:
                    problems.append(f"{where} d/d{g['wrt']}: {method} has shape {got}, declared {shape}")
            if not g["passed"] and c.get("passed"):
                problems.append(f"{where}: passed although d/d{g['wrt']} failed")
        failing = [d["code"] for d in c.get("diagnostics", []) if d.get("severity") == "failure"]
        if c.get("passed") and failing:
            problems.append(f"{where}: passed with failure diagnostics {failing}")
        if not c.get("passed") and not failing:
            problems.append(f"{where}: failed without a diagnostic of severity failure "
                            f"({[d['code'] for d in c.get('diagnostics', [])]})")
        hessian = c.get("hessian")
        if hessian and hessian.get("detail") != "summary":
            n = None
            for method in ("autograd", "symbolic", "finite_difference"):
                if hessian.get(method) is None:
                    continue
                got = nested_shape(hessian[method])
                if got is None or len(got) != 2 or got[0] != got[1]:
                    problems.append(f"{where}: hessian {method} is not square ({got})")
                elif n is None:
                    n = got[0]
                elif got[0] != n:
                    problems.append(f"{where}: hessian {method} is {got[0]}x{got[0]}, autograd {n}x{n}")
            if n is not None and "labels" in hessian and len(hessian["labels"]) != n:
                problems.append(f"{where}: {len(hessian['labels'])} hessian labels for {n} rows")
    return problems


def validate_report(doc: Any) -> dict:
    """Raise AssertionError listing every schema violation and inconsistency; return doc."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    messages = [f"at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:20]]
    if not messages:
        messages = semantic_errors(doc)
    if messages:
        raise AssertionError("report does not match report.schema.json:\n  " + "\n  ".join(messages))
    return doc


def validate_json_text(text: str) -> dict:
    """Strictly parse a report printed by `--json` and validate it; return the document."""
    try:
        doc = strict_loads(text)
    except ValueError as exc:
        raise AssertionError(f"stdout is not strict JSON: {exc}\n--- stdout ---\n{text[:2000]}") from None
    return validate_report(doc)
