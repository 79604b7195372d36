"""`gradcheck steps`: the finite-difference error against step size.

Truths: hand derivatives (exp' = exp, sigmoid' = s(1-s), ...), difference quotients
recomputed here with numpy from the steps the JSON reports, and the classic theory of
the curve's shape: truncation error of slope 2 (central) or 1 (forward) on a log-log
chart, rounding error of slope -1, and the minimum near cbrt(eps) for central, sqrt(eps)
for forward.
"""

from __future__ import annotations

import math
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from gradcheck_cli.engines import fd_steps
from gradcheck_cli.steps import relative_grid, step_curves

EPS = float(np.finfo(np.float64).eps)
SVG = "{http://www.w3.org/2000/svg}"

# smooth functions at generic points (not powers of two, whose differences can be exact by luck)
SMOOTH = [("exp(x)", "1"), ("sin(x)", "0.7"), ("sigmoid(x)", "0.5"), ("x*tanh(x)", "1.3"),
          ("(x**3-2*x+1)/(x**2+3)", "-1.7"), ("exp(sin(x))", "-0.4"), ("sqrt(1+x**2)", "2.2")]
SMOOTH_IDS = [e for e, _ in SMOOTH]


def curve(expr: str, x: str, fd: str):
    (c,) = step_curves(expr, [("x", x)], fd=fd).curves
    return c


def slope(c, lo: float, hi: float) -> float:
    """Least-squares slope of log10(error) against log10(step) over [lo, hi]."""
    H = c.relative_steps
    keep = (H >= lo) & (H <= hi) & np.isfinite(c.error) & (c.error > 0)
    return float(np.polyfit(np.log10(H[keep]), np.log10(c.error[keep]), 1)[0])


# ---- the curve's shape ---------------------------------------------------------------------------------

@pytest.mark.parametrize("expr,x", SMOOTH, ids=SMOOTH_IDS)
def test_central_minimum_is_near_cbrt_eps(expr, x):
    c = curve(expr, x, "central")
    best = c.relative_steps[c.best]
    assert EPS ** (1 / 3) / 30 <= best <= EPS ** (1 / 3) * 30, best
    assert c.error[c.best] <= 1e-9 * max(1.0, abs(c.exact))


@pytest.mark.parametrize("expr,x", SMOOTH, ids=SMOOTH_IDS)
def test_forward_minimum_is_near_sqrt_eps(expr, x):
    c = curve(expr, x, "forward")
    best = c.relative_steps[c.best]
    assert EPS**0.5 / 30 <= best <= EPS**0.5 * 30, best


@pytest.mark.parametrize("expr,x", SMOOTH, ids=SMOOTH_IDS)
def test_richardson_minimum_is_at_long_steps(expr, x):
    """Sixth-order truncation lets the step grow to about eps**(1/7) = 6e-3."""
    c = curve(expr, x, "richardson")
    best = c.relative_steps[c.best]
    assert EPS ** (1 / 7) / 30 <= best <= EPS ** (1 / 7) * 30, best
    assert c.error[c.best] <= 1e-12 * max(1.0, abs(c.exact))


@pytest.mark.parametrize("expr,x", SMOOTH, ids=SMOOTH_IDS)
@pytest.mark.parametrize("scheme,right", [("central", 2.0), ("forward", 1.0)])
def test_the_v_truncation_on_the_right_rounding_on_the_left(expr, x, scheme, right):
    c = curve(expr, x, scheme)
    assert slope(c, 1e-4, 1e-1) == pytest.approx(right, abs=0.15)
    assert -1.35 <= slope(c, 1e-14, 1e-9) <= -0.65


@pytest.mark.parametrize("expr,x", SMOOTH, ids=SMOOTH_IDS)
def test_complex_step_has_no_rounding_side(expr, x):
    """Im f(x + ih)/h never subtracts: every step up to 1e-8 is accurate to a few ulps (beyond,
    its h**2 truncation shows)."""
    c = curve(expr, x, "complex")
    short = c.relative_steps <= 1e-8
    assert np.all(c.error[short] <= 8 * EPS * abs(c.exact))


# ---- the numbers on the curve -------------------------------------------------------------------------------

def test_json_points_are_the_difference_quotients(run_cli, strict_json):
    code, out, err = run_cli("steps", "exp(x)", "--at", "x=1.3", "--json")
    assert code == 0 and err == ""
    doc = strict_json(out)
    assert doc["command"] == "steps" and doc["fd_scheme"] == "central" and doc["reference"] == "symbolic"
    (c,) = doc["curves"]
    assert c["wrt"] == "x" and c["element"] == [] and c["output"] == []
    assert c["exact_derivative"] == pytest.approx(math.exp(1.3), rel=1e-15)
    steps = [p["step"] for p in c["points"]]
    assert len(steps) >= 12 * 4 and steps == sorted(steps)
    assert steps[0] == pytest.approx(1e-16) and steps[-1] == pytest.approx(1.0)
    checked = 0
    for p in c["points"]:
        if p["h"] == "nan":  # 1.3 + h rounds back to 1.3: no step was taken
            assert p["finite_difference"] == "nan" and p["error"] == "nan"
            assert p["step"] * 1.3 < np.spacing(1.3)
            continue
        h = p["h"]
        assert h == pytest.approx(p["step"] * 1.3, rel=max(1e-12, np.spacing(1.3) / h))
        quotient = (math.exp(1.3 + h) - math.exp(1.3 - h)) / (2 * h)
        # numpy's and torch's exp may differ by an ulp at each end
        assert p["finite_difference"] == pytest.approx(quotient, abs=4 * EPS * math.exp(1.5) / h)
        assert p["error"] == pytest.approx(abs(p["finite_difference"] - math.exp(1.3)), rel=1e-12, abs=1e-300)
        checked += 1
    assert checked >= 60


def test_best_and_default_steps_in_json(run_cli, strict_json):
    code, out, _ = run_cli("steps", "sin(x)", "--at", "x=0.7", "--json")
    (c,) = strict_json(out)["curves"]
    best = c["best"]
    assert best["step"] in [p["step"] for p in c["points"]]
    assert best["error"] <= 1e-10
    # a V: every step more than a decade away from the best one does worse
    far = [p["error"] for p in c["points"]
           if p["error"] != "nan" and abs(math.log10(p["step"] / best["step"])) > 1]
    assert min(far) > best["error"]
    # the default step is what `check --fd central` uses here: cbrt(eps) * max(1, |x|)
    assert c["default"]["step"] == pytest.approx(EPS ** (1 / 3), rel=1e-9)
    assert c["default"]["error"] <= c["default"]["error_estimate"]
    assert c["default"]["finite_difference"] == pytest.approx(math.cos(0.7), rel=1e-9)


def test_one_curve_per_variable_with_hand_derivatives(run_cli, strict_json):
    code, out, _ = run_cli("steps", "sigmoid(w*x+b)", "--at", "w=2", "--at", "b=1", "--at", "x=0.3", "--json")
    assert code == 0
    curves = strict_json(out)["curves"]
    assert [c["wrt"] for c in curves] == ["w", "x", "b"]  # as check: in order of appearance
    s = 1 / (1 + math.exp(-(2 * 0.3 + 1)))
    ds = s * (1 - s)
    expected = {"w": ds * 0.3, "b": ds, "x": ds * 2}
    for c in curves:
        assert c["exact_derivative"] == pytest.approx(expected[c["wrt"]], rel=1e-14)


def test_wrt_and_loss_as_in_check(run_cli, strict_json):
    """d/dz of bce(sigmoid(z), 0) = -log(1 - sigmoid(z)) is sigmoid(z); the target is no variable."""
    code, out, _ = run_cli("steps", "sigmoid(z)", "--loss", "bce", "--target", "0", "--at", "z=0.4", "--json")
    assert code == 0
    doc = strict_json(out)
    assert doc["expression"] == "bce(sigmoid(z), target)"
    (c,) = doc["curves"]
    assert c["wrt"] == "z" and c["exact_derivative"] == pytest.approx(1 / (1 + math.exp(-0.4)), rel=1e-14)


def test_tensor_variable_uses_its_largest_derivative():
    """sum(x**3) at [1, -3, 2]: the gradient 3x^2 is largest at x[1] = -3 (27)."""
    (c,) = step_curves("sum(x**3)", [("x", "[1, -3, 2]")]).curves
    assert c.element == (1,) and c.output == () and c.x == -3.0
    assert c.exact == pytest.approx(27.0, rel=1e-15)
    assert c.relative_steps[c.best] == pytest.approx(EPS ** (1 / 3), rel=30)


def test_tensor_result_uses_its_largest_jacobian_entry():
    """x*y with x = [1, 4], y = 3: d(x*y)[1]/dy = 4 is the largest entry for y."""
    x_curve, y_curve = step_curves("x*y", [("x", "[1, 4]"), ("y", "3")]).curves
    assert (y_curve.output, y_curve.element, y_curve.exact) == ((1,), (), 4.0)
    assert x_curve.exact == 3.0 and x_curve.output == x_curve.element


# ---- the terminal chart ----------------------------------------------------------------------------------

def test_terminal_chart_draws_the_v(run_cli):
    code, out, err = run_cli("steps", "exp(x)", "--at", "x=1.3")
    assert code == 0 and err == ""
    assert "\x1b[" not in out  # plain characters when piped
    rows = [line.split("|", 1)[1] for line in out.splitlines() if line.startswith(" " * 2) and " |" in line[:10]]
    assert len(rows) >= 10
    heights = {}  # column -> lowest row (largest error) the curve reaches there
    for r, line in enumerate(rows):
        for col, ch in enumerate(line):
            if ch == "*":
                heights.setdefault(col, r)
    cols = sorted(heights)
    bottom = max(heights.values())
    bottom_cols = [col for col in cols if heights[col] == bottom]
    # the lowest error is in the middle, higher on both sides: a V
    assert cols[0] < min(bottom_cols) and max(bottom_cols) < cols[-1]
    assert heights[cols[-1]] < bottom - 5 and heights[cols[0]] < bottom - 3
    for label in ("1e-16", "1e-08", "1e+00", "|error|", "best step", "d result / d x"):
        assert label in out
    assert "check's central step here" in out


# ---- plot files ------------------------------------------------------------------------------------------

def test_svg_plot(run_cli, strict_json, tmp_path):
    path = tmp_path / "steps.svg"
    code, out, err = run_cli("steps", "sigmoid(w*x+b)", "--at", "w=2", "--at", "b=1", "--at", "x=0.3",
                             "--plot", str(path), "--json")
    assert code == 0 and err == ""
    doc = strict_json(out)  # stdout is the JSON and nothing else
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    lines = root.findall(f"{SVG}polyline")
    assert {p.get("data-wrt") for p in lines} == {"w", "b", "x"}
    best = {c.get("data-wrt"): c for c in root.findall(f"{SVG}circle") if c.get("class") == "best"}
    defaults = [r for r in root.findall(f"{SVG}rect") if r.get("class") == "default"]
    assert set(best) == {"w", "b", "x"} and len(defaults) == 3
    ticks = [t.text for t in root.findall(f"{SVG}text") if t.get("class") == "xtick"]
    assert ticks[0] == "1e-16" and ticks[-1] == "1e+00"
    assert any(t.get("class") == "ytick" for t in root.findall(f"{SVG}text"))
    legend = [t.text for t in root.findall(f"{SVG}text") if t.get("class") == "legend"]
    assert any("d w" in t for t in legend)
    # the best marker sits at its step on the log axis
    from gradcheck_cli.render import plot

    width = plot.WIDTH - plot.LEFT - plot.RIGHT
    for c in doc["curves"]:
        expected_x = plot.LEFT + (math.log10(c["best"]["step"]) + 16) / 16 * width
        assert float(best[c["wrt"]].get("cx")) == pytest.approx(expected_x, abs=0.1)
    for p in lines:  # every vertex inside the plotting area
        xs = [float(v.split(",")[0]) for v in p.get("points").split()]
        ys = [float(v.split(",")[1]) for v in p.get("points").split()]
        assert plot.LEFT - 0.1 <= min(xs) and max(xs) <= plot.LEFT + width + 0.1
        assert plot.TOP - 0.1 <= min(ys) and max(ys) <= plot.HEIGHT - plot.BOTTOM + 0.1


def test_svg_escapes_the_expression(run_cli, tmp_path):
    path = tmp_path / "s.svg"
    code, _, _ = run_cli("steps", "x<1", "--at", "x=0.5", "--plot", str(path))
    assert code == 2  # a bare comparison is not an expression; nothing written
    assert not path.exists()
    code, _, _ = run_cli("steps", "where(x < 1, x**2, x)", "--at", "x=0.5", "--plot", str(path))
    assert code == 0
    ET.parse(path)  # '<' in the title must not break the XML
    assert "where(x &lt; 1" in path.read_text()


def test_png_plot_with_matplotlib(run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "steps.png"
    code, out, err = run_cli("steps", "exp(x)", "--at", "x=1.3", "--plot", str(path))
    assert code == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_is_a_user_error(run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    path = tmp_path / "steps.png"
    code, out, err = run_cli("steps", "exp(x)", "--at", "x=1.3", "--plot", str(path))
    assert code == 2 and out == ""
    assert "matplotlib" in err and "gradcheck-cli[plot]" in err and ".svg" in err
    assert "Traceback" not in err and not path.exists()


@pytest.mark.parametrize("name,fragment", [
    ("chart.pdf", "must end in .svg or .png"),
    ("chart", "must end in .svg or .png"),
    ("missing-folder/chart.svg", "cannot write"),
], ids=["pdf", "no-extension", "missing-folder"])
def test_bad_plot_paths_exit_2_before_any_output(run_cli, tmp_path, name, fragment):
    code, out, err = run_cli("steps", "exp(x)", "--at", "x=1", "--plot", str(tmp_path / name))
    assert code == 2 and out == ""
    assert fragment in err and err.startswith("gradcheck: error:")


# ---- user errors: the same as check's ----------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["sin(x", "--at", "x=1"],
    ["x*y", "--at", "x=1"],
    ["x", "--at", "x=1", "--at", "y=2"],
    ["x", "--at", "x=[1,2"],
    ["x", "--at", "x=1", "--wrt", "z"],
    ["sigmoid(x)", "--at", "x=1", "--loss", "bce"],
    ["sigmoid(x)", "--at", "x=1", "--loss", "hinge", "--target", "1"],
    ["dot(x, y)", "--at", "x=[1,2]", "--at", "y=[1,2,3]"],
], ids=["syntax", "missing-value", "unused-value", "bad-value", "bad-wrt", "loss-without-target", "bad-loss",
        "shapes"])
def test_input_errors_match_check(run_cli, args):
    steps = run_cli("steps", *args)
    check = run_cli("check", *args)
    assert steps.exit_code == check.exit_code == 2
    assert steps.stderr == check.stderr and steps.stderr.startswith("gradcheck: error:")
    assert steps.stdout == ""


@pytest.mark.parametrize("args,fragment", [
    (["exp(x)", "--at", "x=1", "--fd", "auto"], "one scheme per chart"),
    (["relu(x)", "--at", "x=1", "--fd", "complex"], "relu"),
    (["sqrt(x)", "--at", "x=0"], "not finite"),
], ids=["auto", "complex-through-relu", "no-derivative"])
def test_steps_own_errors(run_cli, args, fragment):
    code, out, err = run_cli("steps", *args)
    assert code == 2 and out == "" and fragment in err


def test_grid_spans_sixteen_decades():
    grid = relative_grid()
    assert grid[0] == pytest.approx(1e-16) and grid[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(np.log10(grid)), 0.25)


def test_default_marker_is_the_step_check_uses():
    """The 'd' marker comes from the engine's own choice, per point: log at 1e4 steps in
    proportion to x, sin at 1e4 does not."""
    (log_c,) = step_curves("log(x)", [("x", "1e4")]).curves
    (sin_c,) = step_curves("sin(x)", [("x", "1e4")]).curves
    rule = fd_steps.DEFAULT_STEPS["central"]
    assert log_c.default_relative == pytest.approx(rule, rel=1e-6)
    assert sin_c.default_relative < rule / 10
    assert sin_c.default_error <= sin_c.default_error_estimate


def test_without_sympy_the_reference_is_the_most_accurate_finite_difference(monkeypatch, run_cli, strict_json):
    """If SymPy cannot build the expression, errors are measured against complex steps
    (accurate to ulps here), and the output says so."""
    from gradcheck_cli.engines import symbolic

    def refuse(*args, **kwargs):
        raise ValueError("no SymPy today")

    monkeypatch.setattr(symbolic, "build", refuse)
    code, out, _ = run_cli("steps", "exp(x)", "--at", "x=1.3", "--json")
    assert code == 0
    doc = strict_json(out)
    assert doc["reference"] == "complex" and "no SymPy today" in doc["notes"][0]
    (c,) = doc["curves"]
    assert c["exact_derivative"] == pytest.approx(math.exp(1.3), rel=1e-15)
    code, out, _ = run_cli("steps", "exp(x)", "--at", "x=1.3")
    assert "reference: complex" in out and "note: SymPy could not" in out


@pytest.mark.parametrize("expr,x,fragment", [
    ("x*detach(x)", "3", "detach()"),
    ("relu(x)", "0", "relu may have a kink"),
], ids=["detach", "kink"])
def test_a_curve_without_a_v_is_explained(run_cli, strict_json, expr, x, fragment):
    code, out, _ = run_cli("steps", expr, "--at", f"x={x}", "--fd", "richardson", "--json")
    assert code == 0
    doc = strict_json(out)
    assert any(fragment in n for n in doc["notes"])
    (c,) = doc["curves"]
    assert c["best"]["error"] > 0.1  # the exact derivative is never reached: 3 (detach) or 1/2 (kink)


def test_a_smooth_curve_has_no_notes(run_cli, strict_json):
    code, out, _ = run_cli("steps", "relu(x)*x", "--at", "x=2", "--fd", "richardson", "--json")
    assert strict_json(out)["notes"] == []
