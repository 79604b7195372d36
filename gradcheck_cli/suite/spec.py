"""Spec files: TOML `[[check]]` tables -> validated CheckSpecs (plain data).

A spec file holds `[[check]]` tables whose keys mirror the command-line options
(contract, "Spec files"), and optionally one `[defaults]` table that applies to every
check of that file.  Precedence, lowest first: the built-in defaults, `gradcheck run`'s
options, the file's `[defaults]`, the check's own keys.

Everything the user wrote is validated (validate.py) before the first check runs, so a
typo fails the whole run with exit 2 (naming the file, the check and the key) instead
of surfacing halfway through a CI job.  shard.py selects a shard; runner.py runs them.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from gradcheck_cli.errors import SpecError, UserInputError
from gradcheck_cli.suite.validate import type_name, validate_value

EXPRESSION_ONLY = ("loss", "target")
OP_ONLY = ("kw", "init", "reference", "mode")
OPTION_KEYS = ("at", "kw", "init", "wrt", "loss", "target", "dtype", "fd", "eps", "atol", "rtol", "points", "seed",
               "order", "reference", "mode", "device", "timeout")
CHECK_KEYS = ("name", "expr", "op") + OPTION_KEYS
# Keys a [defaults] table may set: options that make sense for many checks at once.
DEFAULT_KEYS = ("wrt", "loss", "dtype", "fd", "eps", "atol", "rtol", "points", "seed", "order", "mode", "device",
                "timeout")
TOP_LEVEL_KEYS = ("check", "defaults")
# Options `gradcheck run` itself may pass as defaults (its command-line flags).
CLI_DEFAULT_KEYS = ("dtype", "fd", "eps", "atol", "rtol", "points", "seed", "order", "mode", "device", "timeout")
TIMEOUT_S = 300.0  # seconds a check may run (in its worker) before it is stopped; 0: no limit

BUILTIN_DEFAULTS = {"dtype": "float64", "fd": "auto", "eps": None, "atol": None, "rtol": None, "points": 0,
                    "seed": 0, "order": 1, "mode": "auto", "device": "cpu", "loss": "none",
                    "timeout": TIMEOUT_S}


@dataclass(frozen=True)
class CheckSpec:
    """One validated check: plain data (picklable, for worker processes)."""

    name: str
    kind: str  # 'expression' | 'op'
    source: str  # the expression, or the op target FILE.py:ATTR / module:ATTR
    file: str  # the spec file, as found
    index: int  # 1-based position among the file's [[check]] tables
    options: dict = field(default_factory=dict)  # every option, defaults filled in

    @property
    def where(self) -> str:
        """How messages point at this check: file, name and position."""
        # A check without a name is named by its expression, which may be 10,000 characters
        # (or a hostile 100,000): messages quote at most 80 of them.
        name = self.name if len(self.name) <= 80 else self.name[:77] + "..."
        return f"{self.file}: check {name!r} (#{self.index})"


# ---------------------------------------------------------------------------------------
# Finding and reading spec files


def discover(paths: Iterable[str]) -> list[tuple[Path, bool]]:
    """The spec files named by PATHs: (path, explicit).  Folders are searched
    recursively for *.toml in sorted order (hidden folders skipped); a file named twice
    is read once."""
    found: list[tuple[Path, bool]] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inner = _toml_files(path)
            candidates = [(p, False) for p in sorted(inner, key=lambda p: p.relative_to(path).parts)]
            if not candidates:
                raise SpecError(f"{raw}: no *.toml spec files in this folder")
        elif path.is_file():
            candidates = [(path, True)]
        else:
            raise SpecError(f"{raw}: no such file or folder")
        for p, explicit in candidates:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                found.append((p, explicit))
    return found


def _toml_files(folder: Path) -> list[Path]:
    """Every *.toml file under `folder` (hidden folders skipped).  A subfolder that cannot
    be read is an error: skipping it would pass a CI job that checked less than it says."""
    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename).as_posix() if exc.filename else folder.as_posix()
        raise SpecError(f"{where}: cannot read this folder ({exc.strerror}); its spec files would be skipped")

    found = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if f.endswith(".toml") and (Path(root) / f).is_file()]
    return found


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def read_toml(path: Path) -> dict:
    """Parse one TOML file; a syntax error is a SpecError naming the file and position."""
    toml = _toml()
    try:
        with path.open("rb") as fh:
            return toml.load(fh)
    except toml.TOMLDecodeError as exc:
        raise SpecError(f"{path.as_posix()}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path.as_posix()}: not valid TOML: the file is not UTF-8") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays / tables
        raise SpecError(f"{path.as_posix()}: not valid TOML here: its arrays or tables are nested too deeply") from None
    except OSError as exc:
        raise SpecError(f"{path.as_posix()}: cannot read the file: {exc.strerror}") from None


def is_spec_document(doc: dict) -> bool:
    """Whether a TOML file found by searching a folder is meant as a spec file: it has a
    `check` or `defaults` key, or a near miss of one (so `[[checks]]` is reported, not
    skipped).  Other TOML files (pyproject.toml, ...) are skipped."""
    return any(k in TOP_LEVEL_KEYS or difflib.get_close_matches(k, TOP_LEVEL_KEYS, n=1, cutoff=0.8)
               for k in doc)


def _unknown(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; known keys: {', '.join(known)}"


def load_file(path: Path, cli_defaults: dict | None = None, doc: dict | None = None) -> list[CheckSpec]:
    """Every [[check]] of one spec file, validated, with defaults filled in (`doc`: the
    file already parsed)."""
    shown = path.as_posix()
    doc = read_toml(path) if doc is None else doc
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise SpecError(f"{shown}: top level: {_unknown(key, TOP_LEVEL_KEYS)}")
    file_defaults = doc.get("defaults", {})
    if not isinstance(file_defaults, dict):
        raise SpecError(f"{shown}: key 'defaults' must be a table ([defaults]), got {type_name(file_defaults)}")
    for key, value in file_defaults.items():
        if key not in DEFAULT_KEYS:
            raise SpecError(f"{shown}: [defaults]: {_unknown(key, DEFAULT_KEYS)}")
        validate_value(key, value, f"{shown}: [defaults]: key {key!r}")
    checks = doc.get("check")
    if checks is None:
        raise SpecError(f"{shown}: no checks: add [[check]] tables")
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        raise SpecError(f"{shown}: key 'check' must be an array of tables ([[check]]), got {type_name(checks)}")
    base = {**BUILTIN_DEFAULTS, **(cli_defaults or {}), **file_defaults}
    return [_check_spec(shown, i, table, base) for i, table in enumerate(checks, start=1)]


def _check_spec(shown: str, index: int, table: dict, base: dict) -> CheckSpec:
    label = repr(table["name"]) if isinstance(table.get("name"), str) and table["name"].strip() else None
    where = f"{shown}: check {label} (#{index})" if label else f"{shown}: check #{index}"
    for key in table:
        if key not in CHECK_KEYS:
            raise SpecError(f"{where}: {_unknown(key, CHECK_KEYS)}")
    for key, value in table.items():
        validate_value(key, value, f"{where}: key {key!r}")
    has_expr, has_op = "expr" in table, "op" in table
    if has_expr == has_op:
        raise SpecError(f"{where}: " + ("give either 'expr' or 'op', not both" if has_expr else
                                        "missing key 'expr' or 'op' (what to check)"))
    kind = "expression" if has_expr else "op"
    wrong = [k for k in (OP_ONLY if has_expr else EXPRESSION_ONLY) if k in table]
    if wrong:
        other = "'op'" if has_expr else "'expr'"
        raise SpecError(f"{where}: key {wrong[0]!r} applies only to {other} checks")
    source = table["expr"] if has_expr else table["op"]
    name = table.get("name", source)
    options = {**base, **{k: v for k, v in table.items() if k in OPTION_KEYS}}
    if has_op:
        options.pop("loss", None)  # a [defaults] loss is for the file's expression checks
    if "target" in options and options.get("loss", "none") == "none":
        raise SpecError(f"{where}: key 'target' needs 'loss' (bce, bce_logits or mse)")
    if has_expr and options.get("loss", "none") != "none" and "target" not in options:
        raise SpecError(f"{where}: key 'loss' needs 'target' (the loss target's value)")
    if isinstance(options.get("wrt"), str):
        options["wrt"] = [w.strip() for w in options["wrt"].split(",")]
    options["base_dir"] = str(Path(shown).parent)
    return CheckSpec(name, kind, source, shown, index, options)


def load(paths: Iterable[str], cli_defaults: dict | None = None) -> tuple[list[CheckSpec], dict]:
    """Every check of every spec file under PATHs, in a stable order; also the files
    read and the ones skipped (TOML files in a folder that are not spec files)."""
    cli_defaults = dict(cli_defaults or {})
    for key, value in cli_defaults.items():
        if key not in CLI_DEFAULT_KEYS:
            raise UserInputError(f"gradcheck run has no default option {key!r}")
        validate_value(key, value, f"--{key}")
    specs: list[CheckSpec] = []
    files, skipped = [], []
    for path, explicit in discover(paths):
        doc = read_toml(path)
        if not explicit and not is_spec_document(doc):
            skipped.append(path.as_posix())
            continue
        files.append(path.as_posix())
        specs.extend(load_file(path, cli_defaults, doc))
    if not specs:
        raise SpecError("no checks found: the TOML files under " + ", ".join(map(str, paths)) +
                        " have no [[check]] tables")
    first: dict[str, CheckSpec] = {}
    for spec in specs:
        if spec.name in first:
            other = first[spec.name]
            raise SpecError(f"{spec.where}: duplicate check name {spec.name!r} (also {other.file} #{other.index}); "
                            "give each check a unique 'name'")
        first[spec.name] = spec
    return specs, {"spec_files": files, "skipped_files": skipped}
