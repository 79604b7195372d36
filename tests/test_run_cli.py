"""`gradcheck run` end to end through the CLI: exit codes, summary, JSON, JUnit,
shards, jobs, fail-fast.  Truths are hand-derived (the buggy swish's wrong and right
derivatives) or come from the suite itself run another way (--jobs 1 vs 2, one run vs
the union of its shards)."""

from __future__ import annotations

import json
import math
import shutil
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli import app
from schema_util import validate_json_text

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


MIXED = """
# a passing expression, a passing custom op, the buggy op, and one more expression
[[check]]
name = "seed-mean"
expr = "mean(x1**2)"
at = { x1 = [1.0, 2.0, 3.0, 4.0, 5.0] }

[[check]]
name = "swish-ok"
op = "ops/swish.py:Swish"
at = { x = "randn(3)" }
reference = "x*sigmoid(x)"

[[check]]
name = "swish-buggy"
op = "ops/buggy_swish.py:BuggySwish"
at = { x = [-2.0, -0.5, 0.0, 1.5] }
reference = "x*sigmoid(x)"

[[check]]
name = "tanh-sq"
expr = "sum(tanh(x)**2)"
at = { x = "randn(4)" }
"""


@pytest.fixture
def mixed_suite(tmp_path) -> Path:
    """A suite in its own folder, with its op files next to it (paths relative to the spec)."""
    suite = tmp_path / "suite"
    (suite / "ops").mkdir(parents=True)
    shutil.copy(SAMPLES / "ops" / "swish.py", suite / "ops" / "swish.py")
    shutil.copy(SAMPLES / "specs_failing" / "ops" / "buggy_swish.py", suite / "ops" / "buggy_swish.py")
    (suite / "mixed.toml").write_text(textwrap.dedent(MIXED), encoding="utf-8")
    return suite


def _strip_times(obj):
    """The report without wall-clock durations (the only thing allowed to differ between runs)."""
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if k not in ("duration_s", "worker_peak_rss_mib")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def test_sample_suite_passes():
    result = invoke("run", SAMPLES / "specs")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "seed-bce-float32" in result.stdout and "swish-op" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("PASS")


def test_failing_sample_suite_fails():
    result = invoke("run", SAMPLES / "specs_failing")
    assert result.exit_code == 1
    assert "FAILED buggy-swish-op" in result.stdout


def test_mixed_suite_exit_1_with_one_failed_junit_testcase(mixed_suite, tmp_path):
    junit_path = tmp_path / "report.xml"
    result = invoke("run", mixed_suite, "--junit", junit_path)
    assert result.exit_code == 1, result.stdout + result.stderr
    root = ET.parse(junit_path).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["seed-mean", "swish-ok", "swish-buggy", "tanh-sq"]
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["swish-buggy"]
    assert failed[0].get("classname") == "gradcheck.op"
    assert failed[0].get("file") == (mixed_suite / "mixed.toml").as_posix()
    text = failed[0].find("failure").text
    assert "FAIL" in text and "swish-buggy" in text


def test_mixed_suite_json_report(mixed_suite):
    result = invoke("run", mixed_suite, "--json")
    assert result.exit_code == 1
    report = validate_json_text(result.stdout)  # stdout is the report, strict JSON, per the schema
    assert report["schema_version"] == 1 and report["passed"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == ["seed-mean", "swish-ok", "swish-buggy", "tanh-sq"]
    assert [c["passed"] for c in report["checks"]] == [True, True, False, True]
    assert [c["kind"] for c in report["checks"]] == ["expression", "op", "op", "expression"]
    # seed notebook: d mean(x1^2)/dx1 = 2*x1/5
    mean_grad = checks["seed-mean"]["gradients"][0]
    assert mean_grad["autograd"] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0], rel=1e-15)
    # the buggy backward returns sigmoid(x) on the diagonal; the truth is
    # sigmoid(x)*(1 + x*(1 - sigmoid(x))).  The largest error is at x = 1.5 (index 3),
    # the worst relative to its tolerance at x = -2 (index 0), where even the sign is wrong.
    (grad,) = checks["swish-buggy"]["gradients"]
    assert grad["wrt"] == "x" and grad["passed"] is False
    xs = [-2.0, -0.5, 0.0, 1.5]
    auto = grad["autograd"]
    for i, x in enumerate(xs):
        assert auto[i][i] == pytest.approx(sigmoid(x), rel=1e-12)
    fd = grad["finite_difference"]
    for i, x in enumerate(xs):
        s = sigmoid(x)
        assert fd[i][i] == pytest.approx(s * (1 + x * (1 - s)), rel=1e-7)
    assert grad["worst_index"] == [0, 0]
    assert grad["failed_elements"] == 3  # x = 0 is right by accident: the missing term is x*s*(1-s)
    s = sigmoid(1.5)
    assert grad["max_abs_error"] == pytest.approx(1.5 * s * (1 - s), rel=1e-6)
    assert report["meta"]["checks_total"] == 4 and report["meta"]["spec_files"] == [
        (mixed_suite / "mixed.toml").as_posix()]
    assert all(c["spec_file"] == (mixed_suite / "mixed.toml").as_posix() for c in report["checks"])


def test_summary_shows_one_row_per_check_and_the_failed_table_only(mixed_suite):
    result = invoke("run", mixed_suite)
    out = result.stdout
    for name in ("seed-mean", "swish-ok", "swish-buggy", "tanh-sq"):
        assert name in out
    assert out.count("FAILED ") == 1 and "FAILED swish-buggy" in out
    header_rows = [line for line in out.splitlines() if "autograd" in line and "symbolic" in line and "┃" in line]
    assert len(header_rows) == 1  # the full per-element table is printed for the failure only
    assert out.rstrip().splitlines()[-1].startswith("FAIL  1 of 4 checks failed: swish-buggy")
    assert "\x1b[" not in out  # no escape codes when stdout is not a terminal
    assert result.stderr == ""  # no progress bar off a terminal


def test_jobs_2_gives_the_same_report_as_jobs_1(mixed_suite):
    one = invoke("run", mixed_suite, "--json", "--jobs", "1")
    two = invoke("run", mixed_suite, "--json", "--jobs", "2")
    assert one.exit_code == two.exit_code == 1, two.stderr
    a, b = _strip_times(json.loads(two.stdout)), _strip_times(json.loads(one.stdout))
    assert a == b, _differences(a, b)


def _differences(a, b, path="") -> list:
    """Where two JSON documents differ (the first few paths), for a readable failure."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in one" for k in set(a) ^ set(b)]
        for k in sorted(set(a) & set(b)):
            out += _differences(a[k], b[k], f"{path}/{k}")
        return out[:10]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")][:10]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"[:300]]


@pytest.mark.parametrize("n", [2, 3], ids=lambda n: f"N={n}")
def test_shards_together_are_the_whole_suite(n):
    whole = json.loads(invoke("run", SAMPLES / "specs", "--json").stdout)
    names, parts = [], []
    for k in range(1, n + 1):
        result = invoke("run", SAMPLES / "specs", "--json", "--shard", f"{k}/{n}")
        assert result.exit_code == 0, result.stderr
        part = json.loads(result.stdout)
        assert part["meta"]["shard"] == f"{k}/{n}"
        names.append([c["name"] for c in part["checks"]])
        parts.extend(part["checks"])
    flat = [name for shard in names for name in shard]
    assert len(flat) == len(set(flat))  # disjoint
    assert sorted(flat) == sorted(c["name"] for c in whole["checks"])  # complete
    by_name = {c["name"]: c for c in whole["checks"]}
    for c in parts:  # a check's result does not depend on which shard ran it
        assert _strip_times(c) == _strip_times(by_name[c["name"]])


def test_fail_fast_stops_at_the_buggy_op(mixed_suite):
    result = invoke("run", mixed_suite, "--json", "--fail-fast")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["checks"]] == ["seed-mean", "swish-ok", "swish-buggy"]
    assert report["meta"]["checks_run"] == 3 and "stopped_early" in report["meta"]


def test_cli_options_are_defaults_that_spec_keys_override(tmp_path):
    (tmp_path / "s.toml").write_text(textwrap.dedent("""
        [[check]]
        name = "takes-cli-dtype"
        expr = "x**2"
        at = { x = 1.5 }

        [[check]]
        name = "own-dtype"
        expr = "x**2"
        at = { x = 1.5 }
        dtype = "float64"
        """), encoding="utf-8")
    result = invoke("run", tmp_path, "--json", "--dtype", "float32", "--points", "2")
    report = json.loads(result.stdout)
    assert [c["dtype"] for c in report["checks"]] == ["float32", "float64"]
    assert [c["points_checked"] for c in report["checks"]] == [3, 3]


@pytest.mark.parametrize("args,fragment", [
    (["--shard", "3/2"], "--shard must be K/N"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--dtype", "float8"], "--dtype must be one of"),
], ids=["shard", "jobs", "dtype"])
def test_bad_options_exit_2(args, fragment):
    result = invoke("run", SAMPLES / "specs", *args)
    assert result.exit_code == 2
    assert fragment in result.stderr and result.stdout == ""


def test_bad_spec_exits_2_with_one_message_and_no_traceback(tmp_path):
    (tmp_path / "bad.toml").write_text('[[check]]\nname = "a"\nexpr = "x"\nat = { x = 1.0 }\ntolerance = 1\n')
    result = invoke("run", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.startswith("gradcheck: error: ")
    assert "bad.toml: check 'a' (#1): unknown key 'tolerance'" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_op_that_cannot_be_imported_exits_2_naming_the_check(tmp_path):
    (tmp_path / "s.toml").write_text('[[check]]\nname = "ghost"\nop = "ops/missing.py:f"\nat = { x = 1.0 }\n')
    result = invoke("run", tmp_path)
    assert result.exit_code == 2
    assert "s.toml: check 'ghost' (#1)" in result.stderr and "Traceback" not in result.stderr


def test_an_empty_shard_is_exit_2_unless_allowed(tmp_path):
    """A CI job that checks nothing must not pass (issue 11); --allow-empty accepts it."""
    (tmp_path / "s.toml").write_text('[[check]]\nname = "only"\nexpr = "x**2"\nat = { x = 1.0 }\n')
    from gradcheck_cli.suite.shard import shard_of

    empty = next(k for k in (1, 2) if shard_of("only", 2) != k)
    result = invoke("run", tmp_path, "--shard", f"{empty}/2")
    assert result.exit_code == 2 and result.stdout == ""
    assert f"--shard {empty}/2: this shard holds none of the 1 check(s)" in result.stderr
    assert "--allow-empty" in result.stderr and "Traceback" not in result.stderr
    result = invoke("run", tmp_path, "--shard", f"{empty}/2", "--allow-empty")
    assert result.exit_code == 0
    assert f"no checks in shard {empty}/2" in result.stdout


def test_op_paths_are_relative_to_the_spec_file_and_kw_strings_stay_strings(tmp_path, monkeypatch):
    """Run from another folder: ops/tagged.py is found next to the spec file.  The op
    multiplies by len(tag), so a TOML "12" passed as the number 12 would raise."""
    suite = tmp_path / "deep" / "suite"
    (suite / "ops").mkdir(parents=True)
    (suite / "ops" / "tagged.py").write_text(textwrap.dedent('''
        def tagged(x, tag="a"):
            if not isinstance(tag, str):
                raise TypeError(f"tag must be a string, got {type(tag).__name__}")
            return x * len(tag)
        '''), encoding="utf-8")
    (suite / "s.toml").write_text(textwrap.dedent('''
        [[check]]
        name = "tagged"
        op = "ops/tagged.py:tagged"
        at = { x = [1.0, 2.0] }
        kw = { tag = "12" }
        reference = "2*x"
        '''), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = invoke("run", "../deep/suite", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    (check,) = json.loads(result.stdout)["checks"]
    # d(len("12")*x)/dx = 2 on the diagonal, by hand
    assert check["gradients"][0]["autograd"] == [[2.0, 0.0], [0.0, 2.0]]
