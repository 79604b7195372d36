"""The step-size chart as a file: SVG by a small writer of our own (no dependency), or
PNG through matplotlib when it is installed (the optional `plot` extra).

Both draw the same thing: log-log axes with a tick per decade, one line per variable
(broken where a step gave no number), a filled circle at each curve's best step and a
hollow square at the step `check` would choose, and a legend.
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from gradcheck_cli.errors import UserInputError

FORMATS = (".svg", ".png")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 820, 500
LEFT, RIGHT, TOP, BOTTOM = 78, 250, 48, 62  # margins around the plotting area


def write_plot(result, path: Path) -> None:
    """Write the chart to `path`; the extension picks the format.  Raises UserInputError
    for an unknown extension, a PNG without matplotlib, or a path that cannot be written."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserInputError(f"--plot {path}: the file name must end in .svg or .png (got "
                             f"{suffix or 'no extension'})")
    if suffix == ".png":
        _write_png(result, path)
        return
    _write_text(path, svg(result))


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserInputError(f"--plot {path}: cannot write the file ({exc.strerror or exc})") from None


def _finite_positive(c) -> np.ndarray:
    return c.error[np.isfinite(c.error) & (c.error > 0)]


def _y_range(curves) -> tuple[int, int]:
    errs = np.concatenate([_finite_positive(c) for c in curves]) if curves else np.array([])
    if errs.size == 0:
        return -16, 0
    lo, hi = math.floor(math.log10(errs.min())), math.ceil(math.log10(errs.max()))
    return lo, max(hi, lo + 1)


def svg(result) -> str:
    """The chart as an SVG document (a string)."""
    x_lo, x_hi = result.decades
    y_lo, y_hi = _y_range(result.curves)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(H: float) -> float:
        return LEFT + (math.log10(H) - x_lo) / (x_hi - x_lo) * pw

    def py(err: float) -> float:
        ly = math.log10(err) if err > 0 else y_lo  # exact zeros sit on the bottom edge
        return TOP + (y_hi - min(max(ly, y_lo), y_hi)) / (y_hi - y_lo) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
           f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{LEFT}" y="20" font-size="13">{escape(_title(result))}</text>']
    # grid and ticks: one per decade, labelled every other decade on x when crowded
    x_every = 1 if (x_hi - x_lo) <= 10 else 2
    for d in range(x_lo, x_hi + 1):
        x = px(10.0**d)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#e5e5e5"/>')
        out.append(f'<line x1="{x:.1f}" y1="{TOP + ph}" x2="{x:.1f}" y2="{TOP + ph + 5}" stroke="black"/>')
        if (d - x_lo) % x_every == 0:
            out.append(f'<text class="xtick" x="{x:.1f}" y="{TOP + ph + 18}" text-anchor="middle">1e{d:+03d}</text>')
    y_every = max(1, math.ceil((y_hi - y_lo) / 12))
    for d in range(y_lo, y_hi + 1):
        y = py(10.0**d)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<line x1="{LEFT - 5}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" stroke="black"/>')
        if (d - y_lo) % y_every == 0:
            out.append(f'<text class="ytick" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">1e{d:+03d}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{HEIGHT - 16}" text-anchor="middle">relative step H '
               f'(an element x moves by H·max(1, |x|), as --eps)</text>')
    out.append(f'<text x="18" y="{TOP + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 18 {TOP + ph / 2:.1f})">|finite difference − exact|</text>')
    for i, c in enumerate(result.curves):
        color = COLORS[i % len(COLORS)]
        for seg in _segments(c):
            pts = " ".join(f"{px(H):.1f},{py(e):.1f}" for H, e in seg)
            out.append(f'<polyline class="curve" data-wrt="{escape(c.wrt)}" points="{pts}" fill="none" '
                       f'stroke="{color}" stroke-width="1.6"/>')
        best = c.best
        if best is not None:
            out.append(f'<circle class="best" data-wrt="{escape(c.wrt)}" cx="{px(c.relative_steps[best]):.1f}" '
                       f'cy="{py(c.error[best]):.1f}" r="4.5" fill="{color}"/>')
        dx = c.default_relative
        if math.isfinite(dx) and dx > 0 and math.isfinite(c.default_error):
            x, y = px(min(max(dx, 10.0**x_lo), 10.0**x_hi)), py(c.default_error)
            out.append(f'<rect class="default" data-wrt="{escape(c.wrt)}" x="{x - 4.5:.1f}" y="{y - 4.5:.1f}" '
                       f'width="9" height="9" fill="none" stroke="{color}" stroke-width="1.6"/>')
    out += _legend(result, LEFT + pw + 16, TOP)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _title(result) -> str:
    text = f"{result.scheme} finite differences of {result.expression}"
    return text if len(text) <= 90 else text[:87] + "..."


def _segments(c) -> list[list[tuple[float, float]]]:
    """Runs of consecutive steps that gave a number (a NaN breaks the line)."""
    segs, cur = [], []
    for H, e in zip(c.relative_steps, c.error):
        if np.isfinite(e):
            cur.append((float(H), float(e)))
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    return segs


def _legend(result, x: float, y: float) -> list[str]:
    out = []
    for i, c in enumerate(result.curves):
        color = COLORS[i % len(COLORS)]
        yy = y + 10 + i * 34
        out.append(f'<line x1="{x}" y1="{yy}" x2="{x + 22}" y2="{yy}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text class="legend" x="{x + 28}" y="{yy + 4}">{escape(_short(c.label, 34))}</text>')
        best = c.best
        detail = "no finite step" if best is None else f"best {c.relative_steps[best]:.1e}"
        out.append(f'<text x="{x + 28}" y="{yy + 18}" fill="#555">{escape(detail)}, check '
                   f'{c.default_relative:.1e}</text>')
    yy = y + 10 + len(result.curves) * 34
    out.append(f'<circle cx="{x + 11}" cy="{yy}" r="4.5" fill="#555"/>')
    out.append(f'<text x="{x + 28}" y="{yy + 4}">best step</text>')
    out.append(f'<rect x="{x + 6.5}" y="{yy + 13.5}" width="9" height="9" fill="none" stroke="#555" '
               'stroke-width="1.6"/>')
    out.append(f'<text x="{x + 28}" y="{yy + 22}">step check chooses</text>')
    return out


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _write_png(result, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: write the file only
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserInputError(f"--plot {path}: writing PNG needs matplotlib; install it with "
                             "pip install 'gradcheck-cli[plot]', or write an .svg file instead") from None
    y_lo, y_hi = _y_range(result.curves)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    try:
        for i, c in enumerate(result.curves):
            color = COLORS[i % len(COLORS)]
            err = np.where(c.error == 0, 10.0**y_lo, c.error)  # NaN stays NaN: a gap in the line
            ax.loglog(c.relative_steps, err, color=color, label=c.label)
            best = c.best
            if best is not None:
                ax.plot([c.relative_steps[best]], [max(c.error[best], 10.0**y_lo)], "o", color=color)
            if math.isfinite(c.default_relative) and c.default_relative > 0 and math.isfinite(c.default_error):
                ax.plot([c.default_relative], [max(c.default_error, 10.0**y_lo)], "s", mfc="none", color=color)
        ax.plot([], [], "o", color="#555", label="best step")
        ax.plot([], [], "s", mfc="none", color="#555", label="step check chooses")
        ax.set_xlim(10.0 ** result.decades[0], 10.0 ** result.decades[1])
        ax.set_ylim(10.0**y_lo, 10.0**y_hi)
        ax.set_xlabel("relative step H (an element x moves by H·max(1, |x|), as --eps)")
        ax.set_ylabel("|finite difference − exact|")
        ax.set_title(_title(result))
        ax.grid(True, which="major", color="#e5e5e5")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        try:
            fig.savefig(path, dpi=120)
        except OSError as exc:
            raise UserInputError(f"--plot {path}: cannot write the file ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
