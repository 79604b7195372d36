"""The table tells the truth at a glance (issue 15): every out-of-tolerance element is
marked, with counts; the worst is the largest error relative to the allowed error (never
an exact 0/0 entry); the error columns say which reference they compare against; a
reference that disagrees with the other is flagged; no number or verdict is ever cut at
60, 80 or 120 columns; COLUMNS, FORCE_COLOR and NO_COLOR are honoured, also in a pipe.

Truths are independent of the renderer: the report's own numbers (formatted here), hand
derived derivatives, and a stored 80-column rendering (tests/golden/).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_util import clean_env, run_gradcheck
from gradcheck_cli import check_expression, check_op
from gradcheck_cli.compare import compare, tolerance
from gradcheck_cli.op.verdict import judge, op_tolerance
from gradcheck_cli.render import summary, table
from gradcheck_cli.report import Report

GOLDEN = Path(__file__).with_name("golden")
ESC = "\x1b"
# the example: float32 against a 1e-9 relative tolerance fails on every element
FLOAT32 = ("sum(x*x*x/(1+x*x))", {"x": [1.1, 2.3, 3.7, 0.3]}, dict(dtype="float32", rtol=1e-9, atol=1e-30))


class SixTimes(torch.autograd.Function):
    """x**2 whose backward is 6x too large (relative error 5 on every nonzero entry)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 12 * x * g


@pytest.fixture(scope="module")
def float32_report():
    expr, at, opts = FLOAT32
    return check_expression(expr, at, **opts)


@pytest.fixture(scope="module")
def reports(float32_report):
    """Reports of every shape of table: symbolic and finite differences, finite
    differences only (an op), a Jacobian, a flagged reference, a kink."""
    return {
        "float32": float32_report,
        "op-six": check_op(SixTimes.apply, torch.tensor([1.0, 2.0], dtype=torch.float64)),
        "jacobian": check_expression("x*exp(y)", {"x": [1.0, 0.0, 2.0], "y": [0.5, 0.0, 1.0]}, dtype="float32",
                                     atol=0.0, rtol=0.0),
        "forward-fd": check_expression("exp(x)", {"x": 1.0}, fd="forward", eps=0.1),
        "kink": check_expression("relu(x) + x**2", {"x": 0.0}),
        "long-names": check_expression("a_rather_long_variable_name*b", {"a_rather_long_variable_name": [1.0, 2.0],
                                                                          "b": 3.0}),
    }


def _rows(text: str) -> list[str]:
    """The table's body rows (lines holding a verdict cell)."""
    return [line for line in text.splitlines() if re.search(r"(^|[\s│])(ok|FAIL)(\s*│?\s*)$", line)]


# ---- every failing element is marked, with counts ---------------------------------------------------

def test_every_out_of_tolerance_element_is_marked(float32_report):
    (g,) = float32_report.checks[0].gradients
    assert g.failed_elements == 4  # the JSON's count
    text = table.render_text(float32_report)
    rows = _rows(text)
    assert len(rows) == 4 and all(row.rstrip(" │").endswith("FAIL") for row in rows), text
    assert "d/dx [4]: 4 of 4 out of tolerance against symbolic" in text


def test_an_op_with_relative_error_5_is_marked_fail_on_those_entries(reports):
    text = table.render_text(reports["op-six"])
    rows = {r.split("│")[1].strip().replace(" (worst)", ""): r for r in _rows(text)}
    # d(x*x)/dx is diagonal: the two diagonal entries are 6x off, the zeros are right
    assert rows["out[0] / x0[0]"].rstrip(" │").endswith("FAIL") and "5.00e+00" in rows["out[0] / x0[0]"]
    assert rows["out[1] / x0[1]"].rstrip(" │").endswith("FAIL")
    assert rows["out[0] / x0[1]"].rstrip(" │").endswith("ok") and rows["out[1] / x0[0]"].rstrip(" │").endswith("ok")
    assert "2 of 2 entries compared out of tolerance against finite differences" in text


def test_a_large_gradient_shows_its_failing_elements_worst_first():
    report = check_expression("x*exp(y)", {"x": [1.0, 0.0, 2.0], "y": [0.5, 0.0, 1.0]}, dtype="float32",
                              atol=0.0, rtol=0.0)
    g = report.checks[0].gradients[0]
    text = table.render_text(report)
    shown = [r for r in _rows(text) if "/ x[" in r]
    assert len(shown) == g.failed_elements and all("FAIL" in r for r in shown)
    assert "(worst)" in shown[0]  # worst first
    assert f"d/dx [3, 3]: {g.failed_elements} of 9 out of tolerance" in text


# ---- the worst: error relative to the allowed error, never 0/0 ---------------------------------------

@pytest.mark.parametrize("auto, sym, tol, worst", [
    # the largest absolute error (5e-5 on 1000) is within tolerance; 1e-5 on 1 is 100x the allowed error
    ([1000.00005, 1.00001], [1000.0, 1.0], dict(atol=1e-9, rtol=1e-7), 1),
    # atol 0: an exact zero entry is 0/0, never the worst
    ([0.0, 1.0 + 1e-9, 5.0], [0.0, 1.0, 5.0], dict(atol=0.0, rtol=0.0), 1),
    ([0.0, 0.0, 2.5], [0.0, 0.0, 2.0], dict(atol=0.0, rtol=1e-7), 2),
], ids=["ratio-not-abs-error", "atol0-exact-zero", "atol0-zeros-first"])
def test_worst_is_the_largest_error_relative_to_the_allowed_error(auto, sym, tol, worst):
    result = compare("x", np.array(auto), np.array(sym), None, None, tol)
    assert result.worst == (worst,)
    assert int(result.failing[0]) == worst  # and the table lists it first


def test_the_op_verdict_never_picks_an_exact_zero_entry_with_atol_0():
    tol = op_tolerance("float64", atol=0.0)
    rows, cols = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    auto, fd = np.array([12.0, 0.0, 0.0, 24.0]), np.array([2.0, 0.0, 0.0, 4.0])
    v = judge(rows, cols, 2, 2, auto, fd, np.zeros(4), None, tol)
    assert v.worst() in (0, 3) and not v.ok[v.worst()]
    assert sorted(int(i) for i in v.failing()) == [0, 3]


def test_the_op_report_worst_is_a_failing_entry_with_atol_0():
    report = check_op(SixTimes.apply, torch.tensor([1.0, 2.0], dtype=torch.float64), atol=0.0)
    g = report.checks[0].gradients[0]
    assert g.autograd[tuple(g.worst_index)] != 0  # never an off-diagonal 0 == 0 entry


# ---- which reference; a reference that disagrees --------------------------------------------------

def test_error_columns_say_which_reference(reports):
    both = table.render_text(reports["float32"])
    assert "vs symbolic" in both and "vs finite" in both and "differences" in both
    fd_only = table.render_text(reports["op-six"])
    assert "vs symbolic" not in fd_only and "vs finite" in fd_only


def test_a_five_percent_off_finite_difference_is_flagged(reports):
    """exp'(1) = e; a forward difference with step 0.1 gives (e^1.1 - e)/0.1 = 2.8588 (5% off)."""
    check = reports["forward-fd"].checks[0]
    (g,) = check.gradients
    assert float(g.finite_difference) == pytest.approx((np.exp(1.1) - np.e) / 0.1, rel=1e-9)
    assert check.passed  # autograd agrees with the exact derivative
    flagged = [d for d in check.diagnostics if d.code == "reference_disagreement"]
    assert flagged and flagged[0].severity == "warning" and "too coarse" in flagged[0].message
    text = table.render_text(reports["forward-fd"])
    fd_cell = f"{(np.exp(1.1) - np.e) / 0.1:.10g} !"
    assert fd_cell in text and "disagree here by more than the tolerance" in text


def test_a_good_finite_difference_is_not_flagged():
    report = check_expression("exp(x)", {"x": 1.0})
    assert "reference_disagreement" not in report.checks[0].codes()
    assert " !" not in table.render_text(report)


# ---- widths: nothing cut ------------------------------------------------------------------------------

def _numbers_of(check) -> list[str]:
    """The numbers the table must show whole: every method's value of each element shown."""
    from gradcheck_cli.render.rows import fmt, shown_indices

    out = []
    for g in check.gradients:
        if g.autograd is None:
            continue
        for idx in shown_indices(g):
            out.append(fmt(np.asarray(g.autograd)[idx]))
            if g.symbolic is not None:
                out.append(fmt(np.asarray(g.symbolic)[idx]))
    return out


@pytest.mark.parametrize("width", [60, 80, 120])
@pytest.mark.parametrize("name", ["float32", "op-six", "jacobian", "forward-fd", "kink", "long-names"])
def test_no_number_or_verdict_is_cut(reports, name, width):
    report = reports[name]
    text = table.render_text(report, width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(l for l in lines if len(l) > width)
    assert "…" not in text
    words = set(re.split(r"[\s│┃]+", text))
    for number in _numbers_of(report.checks[0]):
        assert number in words, f"{number} is not shown whole at {width} columns:\n{text}"
    assert report.checks[0].dtype in words or f"{report.checks[0].dtype}" in text
    failing = sum(min(g.failed_elements, 8) for g in report.checks[0].gradients if g.autograd is not None)
    assert len(re.findall(r"\bFAIL\b", text)) >= failing


@pytest.mark.parametrize("width, dropped, kept", [
    (120, [], ["vs finite", "abs err", "rel err"]),
    (80, ["abs err"], ["rel err", "finite", "vs symbolic"]),
    (60, ["abs err", "finite"], ["rel err", "vs symbolic"]),
])
def test_narrow_consoles_drop_the_least_important_columns_first(float32_report, width, dropped, kept):
    text = table.render_text(float32_report, width=width)
    head = text.split("value ")[1].split("x[0]")[0]  # the table's header
    for word in dropped:
        assert word not in head, f"{word!r} still shown at {width}:\n{text}"
    for word in kept:
        assert word in head, f"{word!r} dropped at {width}:\n{text}"


def test_a_very_narrow_console_folds_rows_into_name_value_lines(float32_report):
    text = table.render_text(float32_report, width=40)
    assert max(len(line) for line in text.splitlines()) <= 40
    assert "autograd 1.042996645" in text and "x[0]  FAIL" in text


@pytest.mark.parametrize("width", [60, 80, 120])
def test_run_summary_never_cuts_dtype_or_verdict(width):
    checks = [check_expression("x**2", {"x": 3.0}, name="square-with-a-long-name").checks[0],
              check_expression(*FLOAT32[:2], **FLOAT32[2], name="f32").checks[0]]
    text = summary.render_text(Report(tuple(checks)), width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "float32" in text and "float6" not in text.replace("float64", "")
    assert re.search(r"\bPASS\b", text) and re.search(r"\bFAIL\b", text) and "…" not in text


# ---- the stored 80-column rendering ----------------------------------------------------------------

def test_the_80_column_table_matches_the_stored_rendering(float32_report):
    """tests/golden/table_80.txt; regenerate with GRADCHECK_UPDATE_GOLDEN=1 after a deliberate change."""
    text = table.render_text(float32_report, width=80)
    golden = GOLDEN / "table_80.txt"
    if os.environ.get("GRADCHECK_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


# ---- COLUMNS, FORCE_COLOR, NO_COLOR ---------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty, env, coloured, width", [
    (False, {}, False, 120),
    (False, {"COLUMNS": "70"}, False, 70),
    (False, {"FORCE_COLOR": "1"}, True, 120),
    (False, {"FORCE_COLOR": "1", "NO_COLOR": "1"}, True, 120),  # forcing wins (force-color.org)
    (True, {"NO_COLOR": "1", "COLUMNS": "90"}, False, 90),
    (True, {"COLUMNS": "100"}, True, 100),
], ids=["pipe", "pipe-COLUMNS", "pipe-FORCE_COLOR", "FORCE_COLOR-beats-NO_COLOR", "tty-NO_COLOR", "tty"])
def test_console_rules(monkeypatch, tty, env, coloured, width):
    for key in ("COLUMNS", "FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = FakeTerminal() if tty else io.StringIO()
    console = table.make_console(out)
    assert console.width == width
    table.render(check_expression("relu(x) + x**2", {"x": 0.0}), console)
    assert (ESC in out.getvalue()) is coloured


@pytest.mark.parametrize("env, width, coloured", [
    ({"COLUMNS": "60"}, 60, False),
    ({"FORCE_COLOR": "1"}, 120, True),
    ({"NO_COLOR": "1"}, 120, False),
], ids=["COLUMNS", "FORCE_COLOR", "NO_COLOR"])
def test_piped_output_honours_the_environment(env, width, coloured):
    expr, at, opts = FLOAT32
    result = run_gradcheck(["check", expr, "--at", "x=[1.1,2.3,3.7,0.3]", "--dtype", "float32", "--rtol", "1e-9",
                            "--atol", "1e-30"], env=clean_env(**env))
    assert result.returncode == 1, result.stderr
    assert (ESC in result.stdout) is coloured
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert max(len(line) for line in plain.splitlines()) <= width
    assert "1.042996645" in plain and "FAIL" in plain


@pytest.mark.parametrize("seed", range(6))
def test_fit_measures_a_few_rows_as_wide_as_all_of_them(seed, monkeypatch):
    """fit() measures only each column's widest row (render/fit.widest_rows): the table it
    picks must be the one measuring every row would pick, at every width."""
    import random

    from rich.text import Text

    import gradcheck_cli.render.fit as fit_module
    from gradcheck_cli.render.fit import FRAMES, Column, build_table, fit, natural_width, widest_rows

    rng = random.Random(seed)
    columns = [Column("name", "check", "left", flex=8), Column("kind", "kind", "left", rank=2),
               Column("err", "worst rel err"), Column("of", "of", "left", rank=1), Column("v", "verdict", "left")]
    words = ["x", "sigmoid(w*x+b)", "d/dx[3, 4]", "1.2e-07", "—", "naïve", "界面", "a\nlonger second line", ""]
    rows = [{c.key: (Text(rng.choice(words)) if rng.random() < 0.3 else rng.choice(words)) for c in columns}
            for _ in range(rng.randint(1, 60))]
    for frame in FRAMES:
        assert natural_width(build_table(columns, widest_rows(columns, rows), frame)) == \
            natural_width(build_table(columns, rows, frame))
    for width in (20, 40, 60, 80, 120):
        got = fit(columns, rows, width)
        with monkeypatch.context() as patched:  # the reference: fit's own search, measuring every row
            patched.setattr(fit_module, "widest_rows", lambda cols, rs: rs)
            full = fit(columns, rows, width)
        assert (got is None) == (full is None)
        if got is not None:
            assert [c.header for c in got.columns] == [c.header for c in full.columns]
            assert [c.width for c in got.columns] == [c.width for c in full.columns]


@pytest.mark.parametrize("seed", range(12))
def test_the_plain_summary_table_is_exactly_what_rich_prints(seed):
    """render/plain_table.py writes a long summary without rich's layout: wherever it does
    (not None), its text must be rich's to the character; the summary itself takes that path."""
    import random

    from rich.console import Console
    from rich.text import Text

    from gradcheck_cli.render.console import make_console
    from gradcheck_cli.render.fit import fit
    from gradcheck_cli.render.plain_table import table_text

    rng = random.Random(seed)
    words = ["expr-001", "tab\there", "trail ", "sigmoid(w*x+b)", "d/dx[3, 4]", "1.2e-07", "—", "naïve", "界面", "worst of 20 points; "
             "masked_nan", "", "PASS", "FAIL", "a rather long check name that needs room", "x"]
    short = [w for w in words if len(w) <= 10 and w == w.strip() and "\t" not in w]
    used = 0
    for attempt in range(20):
        pool = short if attempt % 2 else words  # short words: nothing wraps, the plain path applies
        rows = [{c.key: (Text(rng.choice(pool), style="bold red") if rng.random() < 0.3 else rng.choice(pool))
                 for c in summary.COLUMNS} for _ in range(rng.randint(1, 30))]
        width = rng.choice([40, 60, 80, 100, 120, 160])
        table = fit(summary.COLUMNS, rows, width)
        if table is None:
            continue
        buf = io.StringIO()
        console = make_console(buf, force_plain=True, width=width)
        console.print(table)
        fast = table_text(table, make_console(io.StringIO(), force_plain=True, width=width))
        if fast is not None:
            used += 1
            assert fast == buf.getvalue()
        coloured = Console(file=io.StringIO(), color_system="standard", force_terminal=True, width=width)
        assert table_text(table, coloured) is None  # colour: always rich's
    assert used > 0, "the plain path never applied"
    checks = [check_expression("x**2", {"x": 3.0}, name=f"c{i}").checks[0] for i in range(3)]
    (table_of_three,) = summary.summary_table(Report(tuple(checks)), 100)
    fast = table_text(table_of_three, make_console(io.StringIO(), force_plain=True, width=100))
    assert fast is not None and fast in summary.render_text(Report(tuple(checks)), width=100)
