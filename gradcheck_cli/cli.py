"""The command line: thin typer commands that parse options, call the core, render.

Nothing here computes a gradient.  Imports of torch and sympy happen inside the
commands, so `gradcheck --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from gradcheck_cli.cli_io import (TYPER_SETTINGS, JsonErrorGroup, check_detail, emit, exit_now, fail, prefetch_renderer,
                                  prepare_junit, progress, quiet_broken_pipe, stdout_to_stderr)
from gradcheck_cli.cli_server import server_app
from gradcheck_cli.errors import UserInputError
from gradcheck_cli.output import write_stdout
from gradcheck_cli.tolerances import describe as describe_tolerances
from gradcheck_cli.tolerances import describe_op as describe_op_tolerances

app = typer.Typer(
    name="gradcheck",
    help="Tells you whether gradients are right: autograd vs exact SymPy vs finite differences.\n\n"
         "Exit codes: 0 every check passed; 1 a check failed; 2 the input could not be used.",
    cls=JsonErrorGroup,
    **TYPER_SETTINGS,
)


def _show_version(value: bool) -> None:
    if value:
        from gradcheck_cli.versions import version_text

        typer.echo(version_text())
        raise typer.Exit(0)


app.add_typer(server_app, name="server")


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                       help="print the versions of gradcheck, torch, SymPy and Python, and exit")
          ) -> None:
    pass

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
                             "linspace(a,b,n); int([..]), randint(lo,hi,d,...), bool([..]) for class indices "
                             "and masks (never differentiated); repeatable")


DEVICE_HELP = ("cpu, cuda or cuda:N (the N-th GPU): where autograd / the op runs. A device torch does not have "
               "is exit 2")
JSON_DETAIL_HELP = ("with --json: full (every number; Jacobians past 262,144 entries as their nonzero entries, inputs "
                    "and outputs past 65,536 elements summarized) or summary (verdicts, worst entries, errors and "
                    "diagnostics; no arrays)")
EXPR_HELP = ("the expression, e.g. \"sigmoid(w*x+b)\". One that starts with '-' goes after '--', behind every "
             "option: gradcheck {command} --at x=1 -- \"-x**2\"")


def _json_detail_option():
    return typer.Option("full", "--json-detail", metavar="full|summary", help=JSON_DETAIL_HELP)


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


def _check_timeout(timeout: Optional[float]) -> None:
    import math

    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise UserInputError(f"--timeout must be a number of seconds >= 0 (0: no limit), got {timeout!r}")


@app.command()
def check(
    expr: str = typer.Argument(..., metavar="EXPR", help=EXPR_HELP.format(command="check")),
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
    formula: bool = typer.Option(False, "--formula", help="print the symbolic derivative formulas (with matmul, "
                                 "softmax, indexing, ...: the chain rule step by step, in index notation)"),
    as_json: bool = typer.Option(False, "--json", help="the JSON report on stdout, and nothing else"),
    json_detail: str = _json_detail_option(),
    junit: Optional[Path] = typer.Option(None, "--junit", help="also write a JUnit XML report"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
) -> None:
    """Gradients of an expression by autograd, symbolic and finite differences, compared.

    Tensor expressions: A @ B (torch.matmul's rules), x.T or transpose(x[, d0, d1]), outer(a, b);
    sum/mean/prod/logsumexp/norm/max/min/var/std(x[, dim]) (with a dim the reduced dimension is kept,
    so x - mean(x, 1) broadcasts; var and std are unbiased, n - 1, as torch's default; max/min split
    ties evenly); softmax/log_softmax(x[, dim]) (default -1); cross_entropy(logits, target) and
    nll(logp, target) (mean over samples; class indices from --at y=int([...]), or probabilities);
    gelu silu elu hardtanh leaky_relu(x[, slope]); x[0], X[:, 1], x[1:3]; reshape(x, 2, -1);
    cat(a, b[, dim]); stack(a, b[, dim]). Dims, sizes and indices are integer literals."""
    try:
        from gradcheck_cli.checker import check_expression

        check_detail(json_detail)
        prepare_junit(junit)
        with stdout_to_stderr():
            report = check_expression(expr, _assignments(at), wrt=_split_wrt(wrt), loss=loss, target=target,
                                      dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points,
                                      seed=seed, order=order, formula=formula, device=device,
                                      progress=progress("checking points", points > 0),
                                      on_ready=_load_engines)  # after parsing: a typo stays instant
    except UserInputError as err:
        raise fail(err, as_json) from None
    emit(report, as_json, junit, detail=json_detail)


@app.command()
def op(
    target: str = typer.Argument(..., metavar="TARGET", help="FILE.py:ATTR or package.module:ATTR (a torch.autograd.Function "
                                           "subclass is called through .apply; an nn.Module instance, class or "
                                           "factory is checked with its parameters), or a torch.library operator: "
                                           "torch.ops.NS.NAME or NS::NAME, after FILE.py: or package.module: when "
                                           "that registers it"),
    at: Optional[List[str]] = _at_option(),
    kw: Optional[List[str]] = typer.Option(None, "--kw", metavar="NAME=VALUE",
                                           help="a keyword argument: a number, true/false, a string or a list of "
                                                "numbers, passed as is; or a tensor in the value language "
                                                "(randn(4), tensor([1,2]), int([0,2])), differentiated when --wrt "
                                                "names it; repeatable"),
    init: Optional[List[str]] = typer.Option(None, "--init", metavar="NAME=VALUE",
                                             help="build an nn.Module class or factory with this keyword argument "
                                                  "(values as --kw reads them); repeatable. A module's parameters "
                                                  "are checked with its inputs"),
    wrt: Optional[str] = _common_options()["wrt"],
    reference: Optional[str] = typer.Option(None, "--reference", help="the expected forward, an expression in "
                                                                      "the inputs' names"),
    mode: str = typer.Option("auto", "--mode", help="full (every Jacobian entry), fast (random projections), "
                                                    "auto (by size)"),
    dtype: str = typer.Option("float64", "--dtype", help="dtype the op runs in: float64, float32, float16, "
                              "bfloat16, or complex128 / complex64 (every input complex: randn draws real and "
                              "imaginary parts, complex(RE, IM) gives both; checked as real and imaginary parts, "
                              "as torch.autograd.gradcheck checks complex ops). References are always float64"),
    fd: str = typer.Option("auto", "--fd", help=FD_HELP),
    eps: Optional[float] = typer.Option(None, "--eps", help=EPS_HELP),
    atol: Optional[float] = typer.Option(None, "--atol", help=OP_TOL_HELP),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="see --atol"),
    points: int = typer.Option(0, "--points", help="also check N random points (seeded); report the worst"),
    seed: int = typer.Option(0, "--seed", help="seed of the value generators and random projections"),
    order: int = typer.Option(1, "--order", help="2 also checks double backward"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    timeout: float = typer.Option(300.0, "--timeout", metavar="SECONDS", help="stop the check after this long "
                                  "(it fails as timeout); 0: no limit"),
    as_json: bool = typer.Option(False, "--json", help="the JSON report on stdout, and nothing else"),
    json_detail: str = _json_detail_option(),
    junit: Optional[Path] = typer.Option(None, "--junit", help="also write a JUnit XML report"),
) -> None:
    """The CI gate for a custom op: its backward (and forward) against references.

    The op runs in a worker process: an op that exits, crashes, hangs past --timeout or
    changes global state fails its check (exit 1) and the report still comes out."""
    try:
        from gradcheck_cli.suite import workers

        workers.warm_up(symbolic=reference is not None)  # torch loads in the workers' server while we validate
        from gradcheck_cli.op.api import OpOptions
        from gradcheck_cli.suite.failures import failed_check, message_for, op_inputs

        OpOptions(dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points, seed=seed, order=order,
                  mode=mode, device=device).validate(probe_device=False)
        _check_timeout(timeout)
        check_detail(json_detail)
        at_items, kw_items, wrt_names = _assignments(at), _assignments(kw), _split_wrt(wrt)
        init_items = None if init is None else _assignments(init)
        inputs = op_inputs(at_items, wrt_names)  # the values' syntax, checked before torch loads
        prepare_junit(junit)
        job = ("op", dict(target=target, at=at_items, kw=kw_items, wrt=wrt_names, reference=reference, mode=mode,
                          dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points, seed=seed, order=order,
                          device=device, init=init_items))
        prefetch_renderer(as_json, junit)
        with stdout_to_stderr():
            outcome, interrupted = workers.run_one(job, timeout or None)
        if outcome is not None and outcome.kind == "user_error":
            raise workers.rebuild_user_error(outcome.payload)
    except UserInputError as err:
        raise fail(err, as_json) from None
    from gradcheck_cli.report import Report

    if interrupted is not None:
        import signal

        report = Report((), {"command": "op", "interrupted": signal.Signals(interrupted).name, "checks_not_run": 1},
                        interrupted=interrupted)
    elif outcome.kind == "result":
        report = Report((outcome.payload,))
    else:
        code, message = message_for(outcome)
        report = Report((failed_check(target, "op", dtype, inputs, code, message,
                                      {"op": target, "duration_s": outcome.seconds}),))
    emit(report, as_json, junit, detail=json_detail)


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
    device: Optional[str] = typer.Option(None, "--device", help="default device (cpu, cuda or cuda:N)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="default time limit per "
                                            "check (300; spec key timeout; 0: no limit): a check past it is "
                                            "stopped and fails as timeout"),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="exit 0 when the selection holds no check "
                                     "(an empty shard); without it that is exit 2"),
    as_json: bool = typer.Option(False, "--json", help="the JSON report on stdout, and nothing else"),
    json_detail: str = _json_detail_option(),
    junit: Optional[Path] = typer.Option(None, "--junit", help="also write a JUnit XML report (updated as "
                                         "checks finish)"),
) -> None:
    """Every check in TOML spec files (folders are searched for *.toml).

    Each check runs in a worker process: one that exits, crashes or hangs past its timeout
    fails (worker_crashed, timeout) and the others go on.  SIGINT / SIGTERM stop the run,
    write the partial report (marked interrupted) and exit 130 / 143."""
    defaults = {k: v for k, v in dict(dtype=dtype, fd=fd, eps=eps, atol=atol, rtol=rtol, points=points,
                                      seed=seed, order=order, mode=mode, device=device,
                                      timeout=timeout).items() if v is not None}
    try:
        from gradcheck_cli.suite import workers
        from gradcheck_cli.suite.run import run_paths
        from gradcheck_cli.suite.stream import ReportStream

        workers.warm_up()  # torch and SymPy load in the worker's server while the specs are read
        _check_timeout(timeout)
        check_detail(json_detail)
        if device is not None:
            from gradcheck_cli.devices import check_syntax

            check_syntax(device)
        prepare_junit(junit)
        stream = ReportStream(junit) if junit is not None else None
        with stdout_to_stderr():
            report = run_paths([str(p) for p in paths], defaults, shard=shard, jobs=jobs, fail_fast=fail_fast,
                               progress=progress("running checks", True), allow_empty=allow_empty,
                               on_result=stream.update if stream else None)
    except UserInputError as err:
        raise fail(err, as_json) from None
    emit(report, as_json, junit, summary=True, detail=json_detail)


@app.command()
def steps(
    expr: str = typer.Argument(..., metavar="EXPR", help=EXPR_HELP.format(command="steps")),
    at: Optional[List[str]] = _at_option(),
    wrt: Optional[str] = _common_options()["wrt"],
    loss: str = typer.Option("none", "--loss", help="none, bce, bce_logits, mse"),
    target: Optional[str] = typer.Option(None, "--target", help="the loss target"),
    fd: str = typer.Option("central", "--fd", help="central, forward, richardson or complex"),
    seed: int = typer.Option(0, "--seed", help="seed of the value generators"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write the chart to FILE (.svg, or .png with "
                                                             "matplotlib installed)"),
    as_json: bool = typer.Option(False, "--json", help="the curves as JSON on stdout, and nothing else"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N, checked as check checks it (a device "
                               "torch does not have is exit 2); the curves are float64 finite differences against "
                               "the exact derivative, computed on the CPU whatever the device"),
) -> None:
    """Finite-difference error against step size, as a chart (the V-shaped curve)."""
    try:
        from gradcheck_cli.devices import check_syntax, require
        from gradcheck_cli.render.steps import render_steps
        from gradcheck_cli.steps import step_curves

        check_syntax(device)

        def ready() -> None:  # after parsing: a typo stays instant
            _load_engines()
            require(device)

        with stdout_to_stderr():
            result = step_curves(expr, _assignments(at), wrt=_split_wrt(wrt), loss=loss, target=target, fd=fd,
                                 seed=seed, on_ready=ready)
        render_steps(result, as_json=as_json, plot=plot)
    except UserInputError as err:
        raise fail(err, as_json) from None


@app.command()
def schema() -> None:
    """Print the JSON Schema of the report (every diagnostic code listed, from gradcheck_cli/codes.py)."""
    from gradcheck_cli.report_schema import text

    write_stdout(text())


def start_server_early(args: list) -> None:
    """`op` and `run` spend most of their start-up in the workers' server importing torch:
    start it before typer parses the command line (~0.1 s), with what the command will ask
    for (SymPy for `run`, and for `op --reference`).  The command's own warm_up then finds
    it running; after a usage error it is never used, and exits with this process."""
    if not args or args[0] not in ("op", "run") or any(a in ("--help", "-h") for a in args[1:]):
        return
    from gradcheck_cli.suite import workers

    symbolic = args[0] == "run" or any(a == "--reference" or a.startswith("--reference=") for a in args[1:])
    workers.warm_up(symbolic=symbolic)


def main() -> None:
    """Console entry point: typer, plus a quiet exit when the reader closes the pipe."""
    from gradcheck_cli.output import ensure_std_streams

    ensure_std_streams()
    start_server_early(sys.argv[1:])
    try:
        try:
            app()
        except SystemExit as done:
            exit_now(done.code)  # returns only when the normal exit must handle something
            raise
    except BrokenPipeError:
        quiet_broken_pipe()
    except KeyboardInterrupt:
        sys.stderr.write("gradcheck: interrupted\n")
        sys.exit(130)
