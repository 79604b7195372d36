"""`gradcheck run`: TOML spec files -> validated checks -> one Report.

A spec file holds `[[check]]` tables whose keys mirror the command-line options
(contract, "Spec files"), and optionally one `[defaults]` table that applies to every
check of that file.  Precedence, lowest first: the built-in defaults, `gradcheck run`'s
options, the file's `[defaults]`, the check's own keys.

Everything the user wrote is validated before the first check runs, so a typo fails
the whole run with exit 2 (naming the file, the check and the key) instead of
surfacing halfway through a CI job.  Then every check runs in this one process (torch
and SymPy imported once; parsed expressions and SymPy models cached across checks that
share an expression), or in `--jobs N` spawned worker processes whose results are put
back in the suite's order, so the report does not depend on N.

`--shard K/N` keeps the checks whose name hashes (SHA-256, not Python's salted hash)
to K-1 modulo N: a check's shard depends only on its own name, so adding a check never
moves another one, and the N shards are disjoint and together cover every check.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from gradcheck_cli.errors import SpecError, UserInputError

EXPRESSION_ONLY = ("loss", "target")
OP_ONLY = ("kw", "reference", "mode")
OPTION_KEYS = ("at", "kw", "wrt", "loss", "target", "dtype", "fd", "eps", "atol", "rtol", "points", "seed",
               "order", "reference", "mode", "device")
CHECK_KEYS = ("name", "expr", "op") + OPTION_KEYS
# Keys a [defaults] table may set: options that make sense for many checks at once.
DEFAULT_KEYS = ("wrt", "loss", "dtype", "fd", "eps", "atol", "rtol", "points", "seed", "order", "mode", "device")
TOP_LEVEL_KEYS = ("check", "defaults")
# Options `gradcheck run` itself may pass as defaults (its command-line flags).
CLI_DEFAULT_KEYS = ("dtype", "fd", "eps", "atol", "rtol", "points", "seed", "order", "mode", "device")

BUILTIN_DEFAULTS = {"dtype": "float64", "fd": "auto", "eps": None, "atol": None, "rtol": None, "points": 0,
                    "seed": 0, "order": 1, "mode": "auto", "device": "cpu", "loss": "none"}


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
            inner = [p for p in path.rglob("*.toml")
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts[:-1])]
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
        raise SpecError(f"{shown}: key 'defaults' must be a table ([defaults]), got {_type_name(file_defaults)}")
    for key, value in file_defaults.items():
        if key not in DEFAULT_KEYS:
            raise SpecError(f"{shown}: [defaults]: {_unknown(key, DEFAULT_KEYS)}")
        validate_value(key, value, f"{shown}: [defaults]: key {key!r}")
    checks = doc.get("check")
    if checks is None:
        raise SpecError(f"{shown}: no checks: add [[check]] tables")
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        raise SpecError(f"{shown}: key 'check' must be an array of tables ([[check]]), got {_type_name(checks)}")
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


# ---------------------------------------------------------------------------------------
# Validation of one key's value


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_numeric_array(v: Any, depth: int = 0) -> bool:
    if _is_number(v):
        return depth > 0
    return isinstance(v, list) and bool(v) and depth <= 32 and all(
        _is_number(x) or _is_numeric_array(x, depth + 1) for x in v)


def _is_value(v: Any) -> bool:
    """A value as `at` takes it: a number, a (nested) array of numbers, or a string in
    the value language (a generator like "randn(3)")."""
    return _is_number(v) or isinstance(v, str) or _is_numeric_array(v)


def _is_kw(v: Any) -> bool:
    return (isinstance(v, (bool, str)) or _is_number(v) or
            (isinstance(v, list) and all(_is_number(x) for x in v)))


def _enum(allowed: Iterable[str]) -> Callable[[Any], str | None]:
    allowed = tuple(allowed)

    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return f"must be a string, one of {', '.join(allowed)}; got {_type_name(v)}"
        return None if v in allowed else f"must be one of {', '.join(allowed)}; got {v!r}"

    return check


def _string(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, got {_type_name(v)}"
    return None if v.strip() else "must not be empty"


def _nonneg_number(v: Any) -> str | None:
    if not _is_number(v):
        return f"must be a number, got {_type_name(v)}"
    return None if math.isfinite(v) and v >= 0 else f"must be a finite number >= 0, got {v!r}"


def _positive_number(v: Any) -> str | None:
    bad = _nonneg_number(v)
    return bad or (None if v > 0 else f"must be > 0, got {v!r}")


def _integer(lo: int, hi: int | None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return f"must be an integer, got {_type_name(v)}"
        if v < lo or (hi is not None and v > hi):
            return f"must be between {lo} and {hi}, got {v}" if hi is not None else f"must be >= {lo}, got {v}"
        return None

    return check


def _table_of(test: Callable[[Any], bool], what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"must be a table like {{ x = 1.0 }}, got {_type_name(v)}"
        for name, item in v.items():
            if not test(item):
                return f"entry {name!r} must be {what}, got {_type_name(item)}"
        return None

    return check


def _wrt(v: Any) -> str | None:
    if isinstance(v, str):
        return None if all(w.strip() for w in v.split(",")) else "has an empty name"
    if not isinstance(v, list) or not v:
        return f"must be an array of names like [\"w\", \"b\"], got {_type_name(v)}"
    bad = [x for x in v if not isinstance(x, str) or not x.strip()]
    return f"must hold only names (strings), got {_type_name(bad[0])}" if bad else None


def _value(v: Any) -> str | None:
    return None if _is_value(v) else (f"must be a number, an array of numbers or a value string like "
                                      f"\"randn(3)\", got {_type_name(v)}")


def _validators() -> dict:
    from gradcheck_cli.checker import DEVICES, LOSSES, MAX_POINTS
    from gradcheck_cli.ops import MODES
    from gradcheck_cli.engines.finite_diff import SCHEMES
    from gradcheck_cli.tolerances import DTYPES

    return {
        "name": _string, "expr": _string, "op": _string, "reference": _string,
        "at": _table_of(_is_value, "a number, an array of numbers or a value string like \"randn(3)\""),
        "kw": _table_of(_is_kw, "a number, a boolean, a string or an array of numbers"),
        "wrt": _wrt, "target": _value,
        "loss": _enum(LOSSES), "dtype": _enum(DTYPES), "fd": _enum(SCHEMES), "mode": _enum(MODES),
        "device": _enum(DEVICES),
        "eps": _positive_number, "atol": _nonneg_number, "rtol": _nonneg_number,
        "points": _integer(0, MAX_POINTS), "seed": _integer(0, 2**63 - 1), "order": _integer(1, 2),
    }


_VALIDATORS: dict | None = None


def validate_value(key: str, value: Any, where: str) -> None:
    """Raise a SpecError (`where: why`) unless `value` is right for `key`."""
    global _VALIDATORS
    if _VALIDATORS is None:
        _VALIDATORS = _validators()
    if value is None:  # only from CLI defaults left unset
        return
    problem = _VALIDATORS[key](value)
    if problem:
        raise SpecError(f"{where} {problem}")


# ---------------------------------------------------------------------------------------
# Sharding


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    k_text, sep, n_text = text.partition("/")
    try:
        k, n = int(k_text.strip()), int(n_text.strip())
    except ValueError:
        k = n = 0
    if not sep or n < 1 or not 1 <= k <= n:
        raise UserInputError(f"--shard must be K/N with 1 <= K <= N (like 2/4), got {text!r}")
    return k, n


def shard_of(name: str, n: int) -> int:
    """The shard (1..n) a check belongs to: a stable hash of its name alone."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select_shard(specs: list[CheckSpec], shard: str | None) -> list[CheckSpec]:
    """The checks of shard K/N, in suite order (every check when shard is None)."""
    if shard is None:
        return list(specs)
    k, n = parse_shard(shard)
    return [s for s in specs if shard_of(s.name, n) == k]


# ---------------------------------------------------------------------------------------
# Running


class Runner:
    """Runs checks in this process, caching what checks can share: the parsed and
    shape-checked expression of each check (from the up-front validation) and the SymPy
    model of each (expression, loss, input shapes), which together fix the model."""

    def __init__(self):
        self._models: dict = {}
        self._prepared: dict = {}

    def prepare(self, spec: CheckSpec):
        """Validate and prepare an expression check (parse, values, shapes) without
        running it; UserInputError names the check.  The result is kept for run()."""
        from gradcheck_cli.checker import Options, prepare

        if (spec.file, spec.index) in self._prepared:
            return self._prepared[spec.file, spec.index]
        o = spec.options
        try:
            opts = Options(dtype=o["dtype"], fd=o["fd"], eps=o["eps"], atol=o["atol"], rtol=o["rtol"],
                           points=o["points"], seed=o["seed"], order=o["order"], device=o["device"]).validate()
            prep = prepare(spec.source, o.get("at", {}), wrt=o.get("wrt"), loss=o.get("loss", "none"),
                           target=o.get("target"), seed=o["seed"], name=spec.name)
        except UserInputError as err:
            raise _in_check(err, spec) from None
        key = (prep.source, prep.loss, tuple(sorted(prep.var_shapes.items())))
        self._prepared[spec.file, spec.index] = (prep, opts, key)
        return prep, opts, key

    def run(self, spec: CheckSpec):
        """One check's CheckResult (a wrong gradient is a verdict; unusable input raises
        UserInputError naming the spec file and check)."""
        if spec.kind == "expression":
            result = self._run_expression(spec)
        else:
            result = self._run_op(spec)
        return replace(result, extra={**result.extra, "spec_file": spec.file})

    def _run_expression(self, spec: CheckSpec):
        from gradcheck_cli.checker import run_prepared

        prep, opts, key = self.prepare(spec)
        self._prepared.pop((spec.file, spec.index), None)
        if prep.model is None and prep.symbolic_error is None and key in self._models:
            prep.model, prep.symbolic_error = self._models[key]
        try:
            result = run_prepared(prep, opts)
        except UserInputError as err:
            raise _in_check(err, spec) from None
        if prep.model is not None or prep.symbolic_error is not None:
            self._models.setdefault(key, (prep.model, prep.symbolic_error))
        return result

    def preflight_op(self, spec: CheckSpec) -> None:
        """Import an op check's target (FILE.py relative to the spec file, or a module),
        so that a missing or broken op stops the run before any check runs."""
        from gradcheck_cli.ops_loading import load_target

        try:
            load_target(spec.source, spec.options["base_dir"])
        except UserInputError as err:
            raise _in_check(err, spec) from None

    def _run_op(self, spec: CheckSpec):
        from gradcheck_cli.ops import check_op_target

        o = spec.options
        try:
            report = check_op_target(
                spec.source, list(o.get("at", {}).items()), _kw_items(o.get("kw", {})), wrt=o.get("wrt"),
                reference=o.get("reference"), mode=o["mode"], dtype=o["dtype"], fd=o["fd"], eps=o["eps"],
                atol=o["atol"], rtol=o["rtol"], points=o["points"], seed=o["seed"], order=o["order"],
                device=o["device"], base_dir=o["base_dir"], name=spec.name)
        except UserInputError as err:
            raise _in_check(err, spec) from None
        (result,) = report.checks
        return result


def _kw_items(kw: dict) -> list:
    """Spec `kw` entries for the op.  A TOML string is a string: it is quoted so that
    `kw = { mode = "1" }` passes "1", not the number 1 (unquoted text is read the way
    --kw reads it)."""
    return [(k, f'"{v}"' if isinstance(v, str) else v) for k, v in kw.items()]


def _in_check(err: UserInputError, spec: CheckSpec) -> UserInputError:
    """The same error, prefixed with the spec file and check it comes from."""
    return type(err)(f"{spec.where}: {err.message}", source=err.source, column=err.column)


_WORKER_RUNNER: Runner | None = None


def _worker_init(threads: int) -> None:
    """Worker start-up: import the heavy modules once, before the first check."""
    global _WORKER_RUNNER
    import sympy  # noqa: F401
    import torch

    torch.set_num_threads(threads)
    _WORKER_RUNNER = Runner()


def _worker_run(spec: CheckSpec):
    assert _WORKER_RUNNER is not None
    return _WORKER_RUNNER.run(spec)


def run_specs(specs: list[CheckSpec], *, jobs: int = 1, fail_fast: bool = False,
              progress: Callable[[int, int], None] | None = None, runner: Runner | None = None) -> tuple[list, bool]:
    """Run the checks in order; returns (results, stopped_early).  With fail_fast the
    results end at the first failed check, whatever `jobs` is."""
    if jobs < 1:
        raise UserInputError(f"--jobs must be >= 1, got {jobs}")
    runner = runner or Runner()
    for spec in specs:  # input errors (expressions, op imports) before any check runs
        if spec.kind == "expression":
            runner.prepare(spec)
        else:
            runner.preflight_op(spec)
    if jobs == 1 or len(specs) <= 1:
        return _run_serial(specs, runner, fail_fast, progress)
    return _run_parallel(specs, min(jobs, len(specs)), fail_fast, progress)


def _run_serial(specs, runner, fail_fast, progress) -> tuple[list, bool]:
    results = []
    for i, spec in enumerate(specs):
        result = runner.run(spec)
        results.append(result)
        if progress:
            progress(i + 1, len(specs))
        if fail_fast and not result.passed and i + 1 < len(specs):
            return results, True
    return results, False


def _run_parallel(specs, jobs, fail_fast, progress) -> tuple[list, bool]:
    # 'spawn', not fork: a forked torch (its thread pools, OpenMP state) can deadlock.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    results = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_worker_run, spec) for spec in specs]
        try:
            # Collected in suite order, so the report (and where --fail-fast stops) is the
            # same as with --jobs 1.
            for i, future in enumerate(futures):
                try:
                    result = future.result()
                except BrokenProcessPool:
                    # a worker died (an op crashed the interpreter, or ran out of memory):
                    # there is no report to give, only where it happened
                    raise UserInputError(f"{specs[i].where}: a worker process died while running this check "
                                         "(or one running beside it); run with --jobs 1 to see which "
                                         "check crashes") from None
                results.append(result)
                if progress:
                    progress(i + 1, len(specs))
                if fail_fast and not result.passed and i + 1 < len(specs):
                    pool.shutdown(wait=True, cancel_futures=True)
                    return results, True
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results, False


def run_paths(paths: list[str], defaults: dict, *, shard: str | None = None, jobs: int = 1,
              fail_fast: bool = False, progress: Callable[[int, int], None] | None = None, on_ready=None):
    """Load, validate, shard and run every check under PATHs; one Report with every
    check's result, in suite order.  `defaults` are `gradcheck run`'s options, which a
    spec's keys override; `on_ready()` is called once every spec is valid, before any runs."""
    from gradcheck_cli.report import Report

    if shard is not None:
        parse_shard(shard)  # a bad --shard is reported before any file is read
    if jobs < 1:
        raise UserInputError(f"--jobs must be >= 1, got {jobs}")
    try:
        specs, files = load(paths, {k: v for k, v in defaults.items() if v is not None})
        selected = select_shard(specs, shard)
        if on_ready is not None:
            on_ready()
        if progress:
            progress(0, len(selected))  # the bar shows the total from the start (and ends if it is 0)
        results, stopped = run_specs(selected, jobs=jobs, fail_fast=fail_fast, progress=progress)
    except UserInputError:
        if progress:
            progress(0, 0)  # end the bar before the error message is printed
        raise
    meta = {"command": "run", **files, "checks_total": len(specs), "checks_selected": len(selected),
            "checks_run": len(results)}
    if shard is not None:
        meta["shard"] = shard
    if stopped:
        meta["stopped_early"] = "--fail-fast: stopped at the first failed check"
    return Report(tuple(results), meta)
