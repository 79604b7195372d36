"""The command line: thin typer commands that parse options, call the core, render.

Nothing here computes a gradient.  Imports of torch and sympy happen inside the
commands, so `gradcheck --help` stays instant.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.tolerances import describe as describe_tolerances
from gradcheck_cli.tolerances import describe_op as describe_op_tolerances

app = typer.Typer(
    name="gradcheck",
    help="Tells you whether gradients are right: autograd vs exact SymPy vs finite differences.\n\n"
         "Exit codes: 0 every check passed; 1 a check failed; 2 the input could not be used.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

FD_HELP = ("finite-difference scheme: auto (complex step where the expression is real-analytic, else "
           "richardson), central, forward, richardson, complex")
EPS_HELP = ("finite-difference step, RELATIVE: with --eps H each element x is stepped by exactly H*max(1,|x|) "
            "(so H is absolute for |x| <= 1). Default: chosen per point among H*|x|^p (p = 0, 1/2, 1) with "
            "H = cbrt(eps)=6.1e-6 central, sqrt(eps)=1.5e-8 forward, 1e-3 richardson, 1e-20 complex")
OP_TOL_HELP = ("elementwise: |autograd - reference| <= atol + rtol*|reference| + scale*S (S: the largest reference "
               "entry in the row or column; +3x the finite-difference error estimate). --atol replaces atol and "
               f"drops the scale term. Defaults: {describe_op_tolerances()}")
TOL_HELP = ("elementwise: |autograd - reference| <= atol + rtol*|reference| (+3x the finite-difference error "
            f"estimate against finite differences). Defaults: {describe_tolerances()}")


def _at_option():
    return typer.Option(None, "--at", metavar="NAME=VALUE",
                        help="a value: number, [nested,list], randn(d,...), rand(..), zeros(..), ones(..), "
                             "linspace(a,b,n); repeatable")


def _common_options():
    return {
        "wrt": typer.Option(None, "--wrt", metavar="a,b", help="differentiate only these (default: every "
                            "variable with a value, except a loss target)"),
        "dtype": typer.Option("float64", "--dtype", help="dtype autograd / the op runs in: float64, float32, "
                              "float16, bfloat16. References are always float64 or exact"),
    }


def _load_engines() -> None:
    """Import torch and SymPy now (every checking command needs them), then freeze the
    garbage collector's view of them: a full collection would otherwise walk their hundreds
    of thousands of objects in the middle of a check (~0.1 s), and a CLI process is short."""
    import gc

    import sympy  # noqa: F401
    import torch  # noqa: F401

    gc.freeze()


def _split_wrt(wrt: Optional[str]) -> Optional[list]:
    if wrt is None:
        return None
    names = [w.strip() for w in wrt.split(",")]
    if not all(names):
        raise UserInputError(f"--wrt {wrt!r}: empty name in the list")
    return names


def _assignments(items: Optional[List[str]]) -> list:
    from gradcheck_cli.values import split_assignment

    return [split_assignment(item) for item in (items or [])]


def _fail(err: UserInputError) -> "typer.Exit":
    typer.echo(f"gradcheck: error: {err.render()}", err=True)
    return typer.Exit(2)


@contextlib.contextmanager
def _stdout_to_stderr():
    """While checks run, anything printed to stdout (an op's own print(), a C extension's
    printf, a --jobs worker) goes to stderr: stdout carries the report and nothing else.

    Both levels are redirected: sys.stdout for Python code, and file descriptor 1 for C
    code and the worker processes, which inherit it."""
    sys.stdout.flush()
    saved = None
    try:
        fd = sys.stdout.fileno()
        sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError):  # no real stdout (a test runner's buffer): Python level only
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            try:
                sys.__stdout__.flush()
            except (AttributeError, OSError, ValueError):
                pass
            os.dup2(saved, fd)
            os.close(saved)


def write_stdout(text: str) -> None:
    """Write all of `text` to stdout, or raise BrokenPipeError.

    Under PYTHONUNBUFFERED=1 (or `python -u`, common in CI images) sys.stdout sits on the
    raw file, whose write() may be partial (the reader went away, a signal arrived), and
    TextIOWrapper drops the rest silently: a truncated JSON report and exit 0.  Writing the
    bytes in a loop finishes a partial write, and a closed pipe raises on the next one.
    """
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a stdout replaced by a text-only object: it has no partial writes to undo
        sys.stdout.write(text)
        return
    data = memoryview(text.encode(sys.stdout.encoding or "utf-8", errors=sys.stdout.errors or "strict"))
    while data:
        written = buffer.write(data)
        if written is None:  # a non-blocking stdout that is full: wait for the reader
            import time

            time.sleep(0.001)
            continue
        data = data[written:]
    buffer.flush()


def _emit(report, as_json: bool, junit: Optional[Path], summary: bool = False) -> None:
    """Write the report (table or JSON) to stdout and JUnit to a file; exit with its code.
    `summary`: one row per check plus the failed checks' tables (for `run`)."""
    if junit is not None:
        from gradcheck_cli.render import junit as junit_render

        try:
            junit_render.write(report, junit)
        except UserInputError as err:  # an unwritable --junit path: exit 2 with one message
            raise _fail(err) from None
    if as_json:
        from gradcheck_cli.render import json_out

        write_stdout(json_out.render(report) + "\n")
    elif summary:
        from gradcheck_cli.render import summary as summary_render

        summary_render.render(report)
    else:
        from gradcheck_cli.render import table

        table.render(report)
    sys.stdout.flush()
    raise typer.Exit(report.exit_code)


def _progress(label: str, enabled: bool):
    """A progress callback drawing on stderr, only when stderr is a terminal."""
    if not enabled or not sys.stderr.isatty() or os.environ.get("NO_COLOR"):
        return None
    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(console=Console(file=sys.stderr), transient=True)
    task = progress.add_task(label, total=None)
    progress.start()

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)
        if done >= total:
            progress.stop()

    return update


@app.command()
def check(
    expr: str = typer.Argument(..., metavar="EXPR", help="the expression, e.g. \"sigmoid(w*x+b)\""),
    at: Optional[List[str]] = _at_option(),
    wrt: Optional[str] = _common_options()["wrt"],
    loss: str = typer.Option("none", "--loss", help="none, bce, bce_logits, mse: check loss(EXPR, target)"),
    target: Optional[str] = typer.Option(None, "--target", help="the loss target (a value, like --at's)"),
    dtype: str = _common_options()["dtype"],
    fd: str = typer.Option("auto", "--fd", help=FD_HELP),
    eps: Optional[float] = typer.Option(None, "--eps", help=EPS_HELP),
    atol: Optional[float] = typer.Option(None, "--atol", help=TOL_HELP),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="see --atol"),
    points: int = typer.Option(0, "--points", help="also check N random points (seeded); report the worst"),
    seed: int = typer.Option(0, "--seed", help="seed of the value generators and random points"),
    order: int = typer.Option(1, "--order", help="2 also checks the Hessian (double backward)"),
    formula: bool = typer.Option(False, "--formula", help="print the symbolic derivative formulas"),
    as_json: bool = typer.Option(False, "--json", help="the JSON report on stdout, and nothing else"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="also write a JUnit XML report"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda, for autograd"),
) -> None:
    """Gradients of an expression by autograd, symbolic and finite differences, compared."""
    try:
        from gradcheck_cli.checker import check_expression

        with _stdout_to_stderr():
            report = check_expression(expr, _assignments(at), wrt=_split_wrt(wrt), loss=loss, target=target,
                                      dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points,
                                      seed=seed, order=order, formula=formula, device=device,
                                      progress=_progress("checking points", points > 0),
                                      on_ready=_load_engines)  # after parsing: a typo stays instant
    except UserInputError as err:
        raise _fail(err) from None
    _emit(report, as_json, junit)


@app.command()
def op(
    target: str = typer.Argument(..., metavar="TARGET", help="FILE.py:ATTR or package.module:ATTR (a torch.autograd.Function "
                                           "subclass is called through .apply)"),
    at: Optional[List[str]] = _at_option(),
    kw: Optional[List[str]] = typer.Option(None, "--kw", metavar="NAME=VALUE",
                                           help="a keyword argument passed as is: number, true/false, string, "
                                                "or a list of numbers; repeatable"),
    wrt: Optional[str] = _common_options()["wrt"],
    reference: Optional[str] = typer.Option(None, "--reference", help="the expected forward, an expression in "
                                                                      "the inputs' names"),
    mode: str = typer.Option("auto", "--mode", help="full (every Jacobian entry), fast (random projections), "
                                                    "auto (by size)"),
    dtype: str = _common_options()["dtype"],
    fd: str = typer.Option("auto", "--fd", help=FD_HELP),
    eps: Optional[float] = typer.Option(None, "--eps", help=EPS_HELP),
    atol: Optional[float] = typer.Option(None, "--atol", help=OP_TOL_HELP),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="see --atol"),
    points: int = typer.Option(0, "--points", help="also check N random points (seeded); report the worst"),
    seed: int = typer.Option(0, "--seed", help="seed of the value generators and random projections"),
    order: int = typer.Option(1, "--order", help="2 also checks double backward"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    as_json: bool = typer.Option(False, "--json", help="the JSON report on stdout, and nothing else"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="also write a JUnit XML report"),
) -> None:
    """The CI gate for a custom op: its backward (and forward) against references."""
    _load_engines()
    try:
        from gradcheck_cli.op.api import check_op_target

        with _stdout_to_stderr():
            report = check_op_target(target, _assignments(at), _assignments(kw), wrt=_split_wrt(wrt),
                                     reference=reference, mode=mode, dtype=dtype, fd=fd, eps=eps, atol=atol,
                                     rtol=rtol, points=points, seed=seed, order=order, device=device)
    except UserInputError as err:
        raise _fail(err) from None
    _emit(report, as_json, junit)


@app.command()
def run(
    paths: List[Path] = typer.Argument(..., metavar="PATH", help="spec files, or folders searched for *.toml"),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N", help="run the K-th of N disjoint, "
                                        "stable slices (by check name); together they cover every check"),
    jobs: int = typer.Option(1, "--jobs", help="worker processes"),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="stop at the first failure"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="default dtype for checks that do not set one"),
    fd: Optional[str] = typer.Option(None, "--fd", help="default finite-difference scheme"),
    eps: Optional[float] = typer.Option(None, "--eps", help="default step (relative, see `check --help`)"),
    atol: Optional[float] = typer.Option(None, "--atol", help="default atol"),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="default rtol"),
    points: Optional[int] = typer.Option(None, "--points", help="default number of random points"),
    seed: Optional[int] = typer.Option(None, "--seed", help="default seed"),
    order: Optional[int] = typer.Option(None, "--order", help="default order"),
    mode: Optional[str] = typer.Option(None, "--mode", help="default op mode"),
    device: Optional[str] = typer.Option(None, "--device", help="default op device"),
    as_json: bool = typer.Option(False, "--json", help="the JSON report on stdout, and nothing else"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="also write a JUnit XML report"),
) -> None:
    """Every check in TOML spec files (folders are searched for *.toml)."""
    defaults = {k: v for k, v in dict(dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points,
                                      seed=seed, order=order, mode=mode, device=device).items() if v is not None}
    try:
        from gradcheck_cli.suite.runner import run_paths

        with _stdout_to_stderr():
            report = run_paths([str(p) for p in paths], defaults, shard=shard, jobs=jobs, fail_fast=fail_fast,
                               progress=_progress("running checks", True), on_ready=_load_engines)
    except UserInputError as err:
        raise _fail(err) from None
    _emit(report, as_json, junit, summary=True)


@app.command()
def steps(
    expr: str = typer.Argument(..., metavar="EXPR", help="the expression"),
    at: Optional[List[str]] = _at_option(),
    wrt: Optional[str] = _common_options()["wrt"],
    loss: str = typer.Option("none", "--loss", help="none, bce, bce_logits, mse"),
    target: Optional[str] = typer.Option(None, "--target", help="the loss target"),
    fd: str = typer.Option("central", "--fd", help="central, forward, richardson or complex"),
    seed: int = typer.Option(0, "--seed", help="seed of the value generators"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write the chart to FILE (.svg, or .png with "
                                                             "matplotlib installed)"),
    as_json: bool = typer.Option(False, "--json", help="the curves as JSON on stdout, and nothing else"),
) -> None:
    """Finite-difference error against step size, as a chart (the V-shaped curve)."""
    try:
        from gradcheck_cli.render.steps import render_steps
        from gradcheck_cli.steps import step_curves

        with _stdout_to_stderr():
            result = step_curves(expr, _assignments(at), wrt=_split_wrt(wrt), loss=loss, target=target, fd=fd,
                                 seed=seed, on_ready=_load_engines)  # after parsing: a typo stays instant
        render_steps(result, as_json=as_json, plot=plot)
    except UserInputError as err:
        raise _fail(err) from None


@app.command()
def schema() -> None:
    """Print the JSON Schema of the report."""
    from importlib import resources

    write_stdout(resources.files("gradcheck_cli").joinpath("schema/report.schema.json").read_text("utf-8"))


def main() -> None:
    """Console entry point: typer, plus a quiet exit when the reader closes the pipe."""
    try:
        app()
    except BrokenPipeError:
        _quiet_broken_pipe()
    except KeyboardInterrupt:
        sys.stderr.write("gradcheck: interrupted\n")
        sys.exit(130)


def _quiet_broken_pipe() -> None:
    # Python's signal docs, "Note on SIGPIPE": point stdout at devnull so the interpreter's
    # final flush does not raise again, then exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    sys.exit(1)
