"""Spec files: loading, validation (each kind of error), defaults, sharding, caching."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gradcheck_cli import suite as spec_mod
from gradcheck_cli.report import Report
from gradcheck_cli.errors import SpecError, UserInputError

ROOT = Path(__file__).resolve().parent.parent


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


GOOD = """
[[check]]
name = "square"
expr = "x**2"
at = { x = 3.0 }
"""


# Each row: (spec text, fragments the message must contain).  Every message names the
# file; the fragments name the check (by name or index) and the key.
INVALID = [
    ("unknown-key", """
        [[check]]
        name = "a"
        expr = "x**2"
        at = { x = 1.0 }
        dtpye = "float32"
        """, ["check 'a' (#1)", "unknown key 'dtpye'", "did you mean 'dtype'"]),
    ("unknown-top-level", """
        [settings]
        dtype = "float32"
        [[check]]
        expr = "x"
        at = { x = 1.0 }
        """, ["top level", "unknown key 'settings'"]),
    ("wrong-type-dtype", """
        [[check]]
        name = "a"
        expr = "x**2"
        at = { x = 1.0 }
        dtype = 32
        """, ["check 'a'", "key 'dtype'", "must be a string", "an integer"]),
    ("bad-enum-fd", """
        [[check]]
        name = "a"
        expr = "x**2"
        at = { x = 1.0 }
        fd = "backward"
        """, ["key 'fd'", "must be one of", "'backward'"]),
    ("wrong-type-at", """
        [[check]]
        name = "a"
        expr = "x**2"
        at = [1.0]
        """, ["key 'at'", "must be a table"]),
    ("wrong-type-at-entry", """
        [[check]]
        name = "a"
        expr = "x**2"
        at = { x = true }
        """, ["key 'at'", "entry 'x'", "a boolean"]),
    ("wrong-type-points", """
        [[check]]
        name = "a"
        expr = "x**2"
        at = { x = 1.0 }
        points = 2.5
        """, ["key 'points'", "must be an integer"]),
    ("bool-is-not-number", """
        [[check]]
        name = "a"
        expr = "x**2"
        at = { x = 1.0 }
        atol = true
        """, ["key 'atol'", "must be a number", "a boolean"]),
    ("order-range", """
        [[check]]
        name = "a"
        expr = "x**2"
        at = { x = 1.0 }
        order = 3
        """, ["key 'order'", "between 1 and 2"]),
    ("wrt-type", """
        [[check]]
        name = "a"
        expr = "x**2"
        at = { x = 1.0 }
        wrt = [1]
        """, ["key 'wrt'", "names"]),
    ("missing-expr-op", """
        [[check]]
        name = "a"
        at = { x = 1.0 }
        """, ["check 'a' (#1)", "missing key 'expr' or 'op'"]),
    ("both-expr-op", """
        [[check]]
        name = "a"
        expr = "x"
        op = "ops/f.py:f"
        at = { x = 1.0 }
        """, ["check 'a'", "either 'expr' or 'op', not both"]),
    ("op-only-key-on-expr", """
        [[check]]
        name = "a"
        expr = "x"
        at = { x = 1.0 }
        reference = "x"
        """, ["key 'reference'", "only to 'op' checks"]),
    ("expr-only-key-on-op", """
        [[check]]
        name = "a"
        op = "ops/f.py:f"
        at = { x = 1.0 }
        loss = "mse"
        """, ["key 'loss'", "only to 'expr' checks"]),
    ("index-when-unnamed", """
        [[check]]
        expr = "x"
        at = { x = 1.0 }
        [[check]]
        expr = "y"
        at = { y = 1.0 }
        eps = -1.0
        """, ["check #2", "key 'eps'"]),
    ("toml-syntax", """
        [[check]]
        name = "a"
        expr = "x**2
        """, ["not valid TOML", "line 4"]),
    ("check-not-array", """
        [check]
        expr = "x"
        """, ["key 'check' must be an array of tables"]),
    ("no-checks", """
        [defaults]
        dtype = "float32"
        """, ["no checks"]),
    ("defaults-bad-key", """
        [defaults]
        expr = "x"
        [[check]]
        expr = "x"
        at = { x = 1.0 }
        """, ["[defaults]", "unknown key 'expr'"]),
    ("target-without-loss", """
        [[check]]
        name = "a"
        expr = "x"
        at = { x = 1.0 }
        target = 0
        """, ["key 'target' needs 'loss'"]),
    ("loss-without-target", """
        [[check]]
        name = "a"
        expr = "x"
        at = { x = 1.0 }
        loss = "bce"
        """, ["key 'loss' needs 'target'"]),
    ("duplicate-names", """
        [[check]]
        name = "same"
        expr = "x"
        at = { x = 1.0 }
        [[check]]
        name = "same"
        expr = "x**2"
        at = { x = 1.0 }
        """, ["check 'same' (#2)", "duplicate check name"]),
    ("duplicate-default-names", """
        [[check]]
        expr = "x**2"
        at = { x = 1.0 }
        [[check]]
        expr = "x**2"
        at = { x = 2.0 }
        """, ["duplicate check name 'x**2'", "unique 'name'"]),
]


@pytest.mark.parametrize("text,fragments", [(t, f) for _, t, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_spec_is_a_user_error_naming_file_check_and_key(tmp_path, text, fragments):
    path = write(tmp_path, "suite.toml", text)
    with pytest.raises(SpecError) as info:
        spec_mod.load([str(path)])
    message = info.value.message
    assert path.as_posix() in message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text,fragments", [
    ('expr = "sin(x"', ["check 'a' (#2)", "column"]),  # unparsable expression
    ('expr = "x + y"', ["check 'a' (#2)", "no value for 'y'"]),
    ('expr = "foo(x)"', ["check 'a' (#2)", "foo"]),
], ids=["parse", "missing-value", "unknown-function"])
def test_expression_errors_are_found_before_any_check_runs(tmp_path, monkeypatch, text, fragments):
    """A bad expression in the last check fails the run before the first check runs."""
    write(tmp_path, "suite.toml", GOOD + f'\n[[check]]\nname = "a"\n{text}\nat = {{ x = 1.0 }}\n')
    ran = []
    monkeypatch.setattr(spec_mod.Runner, "run", lambda self, s: ran.append(s))
    with pytest.raises(UserInputError) as info:
        spec_mod.run_paths([str(tmp_path)], {})
    for fragment in fragments:
        assert fragment in info.value.message
    assert "suite.toml" in info.value.message
    assert ran == []


@pytest.mark.parametrize("defaults,fragment", [
    ({"dtype": "float8"}, "--dtype must be one of"),
    ({"points": -1}, "--points must be between 0"),
    ({"mode": "slow"}, "--mode must be one of"),
], ids=["dtype", "points", "mode"])
def test_bad_cli_defaults_name_the_flag(tmp_path, defaults, fragment):
    path = write(tmp_path, "s.toml", GOOD)
    with pytest.raises(UserInputError, match=fragment):
        spec_mod.load([str(path)], defaults)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(SpecError, match="no such file or folder"):
        spec_mod.load([str(tmp_path / "nope.toml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="no \\*.toml spec files"):
        spec_mod.load([str(tmp_path / "empty")])


def test_folders_are_searched_recursively_in_sorted_order(tmp_path):
    for rel, name in [("b.toml", "b"), ("a/z.toml", "a/z"), ("a.toml", "a"), ("a/b/c.toml", "a/b/c"),
                      (".hidden/h.toml", "hidden")]:
        write(tmp_path, rel, f'[[check]]\nname = "{name}"\nexpr = "x"\nat = {{ x = 1.0 }}\n')
    write(tmp_path, "pyproject.toml", '[project]\nname = "not-a-spec"\n')
    specs, files = spec_mod.load([str(tmp_path)])
    assert [s.name for s in specs] == ["a/b/c", "a/z", "a", "b"]
    assert files["skipped_files"] == [(tmp_path / "pyproject.toml").as_posix()]


def test_near_miss_top_level_key_is_reported_not_skipped(tmp_path):
    write(tmp_path, "typo.toml", '[[checks]]\nexpr = "x"\nat = { x = 1.0 }\n')
    with pytest.raises(SpecError, match="unknown key 'checks'.*did you mean 'check'"):
        spec_mod.load([str(tmp_path)])


def test_a_file_named_twice_is_read_once(tmp_path):
    path = write(tmp_path, "s.toml", GOOD)
    specs, _ = spec_mod.load([str(path), str(tmp_path)])
    assert [s.name for s in specs] == ["square"]


def test_precedence_builtin_cli_file_defaults_check(tmp_path):
    path = write(tmp_path, "s.toml", """
        [defaults]
        dtype = "float32"
        points = 2

        [[check]]
        name = "uses-file-defaults"
        expr = "x"
        at = { x = 1.0 }

        [[check]]
        name = "overrides"
        expr = "x"
        at = { x = 1.0 }
        dtype = "float16"
        wrt = "x"
        """)
    specs, _ = spec_mod.load([str(path)], {"dtype": "bfloat16", "seed": 7, "fd": "central"})
    first, second = specs
    assert (first.options["dtype"], first.options["points"], first.options["seed"]) == ("float32", 2, 7)
    assert (second.options["dtype"], second.options["fd"], second.options["order"]) == ("float16", "central", 1)
    assert second.options["wrt"] == ["x"]
    assert first.options["base_dir"] == tmp_path.as_posix()


def test_spec_values_are_used_as_given(tmp_path):
    """TOML numbers, arrays and value strings reach the check unchanged (the report's
    point is the spec's point), and the gradient is the hand-derived one."""
    path = write(tmp_path, "s.toml", """
        [[check]]
        name = "poly"
        expr = "sum(a*x**3)"
        at = { a = 2, x = [1.0, -2.0, 0.5] }
        wrt = ["x"]
        """)
    report = spec_mod.run_paths([str(path)], {})
    (check,) = report.checks
    assert check.point["x"].tolist() == [1.0, -2.0, 0.5]
    assert check.gradients[0].autograd.tolist() == [6.0, 24.0, 1.5]  # d/dx 2x^3 = 6x^2
    assert check.extra["spec_file"] == path.as_posix()


# --------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "3", "1/2/3", "-1/2", ""],
                         ids=["zero-k", "k-above-n", "zero-n", "letters", "no-slash", "two-slashes",
                              "negative", "empty"])
def test_bad_shard_is_a_user_error(text):
    with pytest.raises(UserInputError, match="--shard must be K/N"):
        spec_mod.parse_shard(text)


def _named(names):
    return [spec_mod.CheckSpec(n, "expression", "x", "s.toml", i + 1) for i, n in enumerate(names)]


@pytest.mark.parametrize("n", [1, 2, 3, 7], ids=lambda n: f"N={n}")
def test_shards_are_disjoint_and_complete(n):
    specs = _named([f"check-{i}" for i in range(60)])
    shards = [spec_mod.select_shard(specs, f"{k}/{n}") for k in range(1, n + 1)]
    names = [s.name for shard in shards for s in shard]
    assert sorted(names) == sorted(s.name for s in specs)  # complete, and no check twice
    assert len(names) == len(set(names))
    if n > 1:
        assert all(shards), "60 checks should land in every one of a few shards"
    for shard in shards:  # each shard keeps suite order
        assert [s.index for s in shard] == sorted(s.index for s in shard)


def test_adding_a_check_does_not_move_the_others():
    before = _named([f"check-{i}" for i in range(40)])
    after = _named(["new-check"] + [f"check-{i}" for i in range(40)])
    for k in (1, 2, 3):
        old = {s.name for s in spec_mod.select_shard(before, f"{k}/3")}
        new = {s.name for s in spec_mod.select_shard(after, f"{k}/3")} - {"new-check"}
        assert old == new


def test_shard_hash_is_not_pythons_salted_hash():
    # sha256("check-0") starts with bytes whose big-endian integer mod 5 is fixed forever.
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"check-0").digest()[:8], "big") % 5 + 1
    assert spec_mod.shard_of("check-0", 5) == expected


# --------------------------------------------------------------------------- running

def test_checks_sharing_an_expression_share_one_sympy_model(tmp_path, monkeypatch):
    from gradcheck_cli.engines import symbolic

    builds = []
    real_build = symbolic.build
    monkeypatch.setattr(symbolic, "build", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    path = write(tmp_path, "s.toml", """
        [[check]]
        name = "at-1"
        expr = "tanh(x)*exp(-x**2)"
        at = { x = 1.0 }
        [[check]]
        name = "at-2"
        expr = "tanh(x)*exp(-x**2)"
        at = { x = 2.0 }
        [[check]]
        name = "other-shape"
        expr = "tanh(x)*exp(-x**2)"
        at = { x = [1.0, 2.0] }
        """)
    specs, _ = spec_mod.load([str(path)])
    runner = spec_mod.Runner()  # what each worker process keeps across its checks
    report = Report(tuple(runner.run(spec) for spec in specs))
    assert report.passed
    assert len(builds) == 2  # one model per (expression, shapes), not per check
    # d/dx tanh(x) e^{-x^2} = (sech^2 x - 2x tanh x) e^{-x^2}, by hand
    import math

    for check, x in zip(report.checks[:2], (1.0, 2.0)):
        want = (1 / math.cosh(x) ** 2 - 2 * x * math.tanh(x)) * math.exp(-x * x)
        assert check.gradients[0].symbolic == pytest.approx(want, rel=1e-14)


def test_fail_fast_stops_after_the_first_failure(tmp_path):
    path = write(tmp_path, "s.toml", """
        [[check]]
        name = "ok"
        expr = "x**2"
        at = { x = 1.0 }
        [[check]]
        name = "fails"
        expr = "sin(x)"
        at = { x = 0.3 }
        dtype = "float32"
        atol = 0
        rtol = 0
        [[check]]
        name = "never-runs"
        expr = "x**3"
        at = { x = 1.0 }
        """)
    full = spec_mod.run_paths([str(path)], {})
    assert [c.passed for c in full.checks] == [True, False, True]
    fast = spec_mod.run_paths([str(path)], {}, fail_fast=True)
    assert [c.name for c in fast.checks] == ["ok", "fails"]
    assert "stopped_early" in fast.meta and fast.meta["checks_run"] == 2


def test_progress_counts_every_check(tmp_path):
    path = write(tmp_path, "s.toml", GOOD + '\n[[check]]\nname = "b"\nexpr = "x**3"\nat = { x = 1.0 }\n')
    seen = []
    spec_mod.run_paths([str(path)], {}, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 2), (1, 2), (2, 2)]


def test_sample_suite_is_valid_and_names_are_unique():
    specs, files = spec_mod.load([str(ROOT / "samples" / "specs")])
    assert len(specs) >= 10
    assert any(s.kind == "op" for s in specs) and any(s.kind == "expression" for s in specs)
