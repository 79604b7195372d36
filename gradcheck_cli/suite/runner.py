"""One check of a suite, run in this process (a worker's): Runner validates and runs a
CheckSpec, caching what checks can share (parsed expressions, SymPy models).  run.py
schedules the suite's checks on workers."""

from __future__ import annotations

from dataclasses import replace

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.suite.spec import CheckSpec


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
            raise in_check(err, spec) from None
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
            raise in_check(err, spec) from None
        if prep.model is not None or prep.symbolic_error is not None:
            self._models.setdefault(key, (prep.model, prep.symbolic_error))
        return result

    def _run_op(self, spec: CheckSpec):
        from gradcheck_cli.op.api import check_op_target

        o = spec.options
        try:
            report = check_op_target(
                spec.source, list(o.get("at", {}).items()), _kw_items(o.get("kw", {})), wrt=o.get("wrt"),
                reference=o.get("reference"), mode=o["mode"], dtype=o["dtype"], fd=o["fd"], eps=o["eps"],
                atol=o["atol"], rtol=o["rtol"], points=o["points"], seed=o["seed"], order=o["order"],
                device=o["device"], base_dir=o["base_dir"], name=spec.name,
                init=None if "init" not in o else _kw_items(o["init"]))
        except UserInputError as err:
            raise in_check(err, spec) from None
        (result,) = report.checks
        return result


def _kw_items(kw: dict) -> list:
    """Spec `kw` (and `init`) entries for the op.  A TOML string is a string: it is quoted so
    that `kw = { mode = "1" }` passes "1", not the number 1 (unquoted text is read the way
    --kw reads it) -- except a tensor in the value language (`kw = { weight = "randn(4)" }`)."""
    from gradcheck_cli.values import is_tensor_text

    return [(k, f'"{v}"' if isinstance(v, str) and not is_tensor_text(v) else v) for k, v in kw.items()]


def in_check(err: UserInputError, spec: CheckSpec) -> UserInputError:
    """The same error, prefixed with the spec file and check it comes from."""
    return type(err)(f"{spec.where}: {err.message}", source=err.source, column=err.column)
