"""The package's shape (issue 17): no import cycles, no module past ~450 lines, no module
reaching into another's _private names, renderers that import nothing from the commands
they render.  Imports are read from the source (every `import` statement, including the
ones inside functions), so a cycle hidden behind a lazy import is found too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gradcheck_cli"
MAX_LINES = 450
COMMANDS = {"gradcheck_cli.cli", "gradcheck_cli.checker", "gradcheck_cli.steps", "gradcheck_cli.shared"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import statement in `name`,
    resolved to modules of the package (`from pkg import mod` counts as importing pkg.mod)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("gradcheck_cli")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("gradcheck_cli"):
                continue
            plain = []
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:
                    found.append((sub, [], node.lineno))
                else:
                    plain.append(a.name)
            if plain:
                found.append((base, plain, node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports_of(m) if t in MODULES and t != m} for m in MODULES}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_the_package():
    assert cycles(graph()) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines (limit {MAX_LINES}): split it by stage"


def test_no_private_names_imported_across_modules():
    bad = []
    for m in MODULES:
        for target, names, line in imports_of(m):
            bad += [f"{m}:{line} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert bad == []


def test_no_private_attributes_of_other_modules():
    """`module._name` on a module of the package imported under some name."""
    bad = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradcheck_cli"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{m}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert bad == []


def test_renderers_import_nothing_from_commands():
    bad = []
    for m in MODULES:
        if not m.startswith("gradcheck_cli.render"):
            continue
        for target, _, line in imports_of(m):
            if target in COMMANDS or target.startswith(("gradcheck_cli.op", "gradcheck_cli.suite")):
                bad.append(f"{m}:{line} imports {target}")
    assert bad == []


def test_the_op_gate_and_the_suite_are_packages():
    for pkg in ("gradcheck_cli.op", "gradcheck_cli.suite"):
        assert pkg in MODULES
    flat = [p.name for p in PACKAGE.glob("ops*.py")] + [p.name for p in PACKAGE.glob("spec.py")]
    assert flat == []
