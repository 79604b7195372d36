"""--formula for expressions with structured functions: the chain rule, step by step.

A per-element formula of `mean(bce(sigmoid(X @ w + b), y))` w.r.t. w would spell out
every row of X; instead each structured result gets a name (u1 = X @ w, with its index
form), the elementwise parts between them get their exact per-element derivatives from
SymPy (symbolic.py's formulas, with the u's as variables), and each structured function
passes the gradient G it receives on to its operands by its rule in the function table
(`vjp`: matmul sends G @ B^T to A).  The lines read top to bottom: definitions, then the
gradients from the result back to the variable.
"""

from __future__ import annotations

import dataclasses

from gradcheck_cli.engines import symbolic
from gradcheck_cli.expr import ir
from gradcheck_cli.expr.functions import spec_of, structured

MAX_FORMULA = 300  # characters of one per-element formula before it is elided


def formulas(root: ir.Node, node_shapes: dict, var_shapes: dict, wrt: list[str]) -> dict:
    """{name: the derivation of d(result)/d(name), as lines of text}."""
    nodes = [n for n in ir.postorder(root) if structured(n)]
    taken = set(var_shapes)
    names: dict[int, str] = {}
    for node in nodes:
        k = len(names) + 1
        while f"u{k}" in taken:
            k += 1
        names[id(node)] = f"u{k}"
        taken.add(f"u{k}")
    shapes = {**var_shapes, **{names[id(n)]: node_shapes[id(n)] for n in nodes}}
    return {w: "\n".join(_derivation(root, nodes, names, shapes, node_shapes, w)) for w in wrt}


def _derivation(root, nodes, names, shapes, node_shapes, w) -> list[str]:
    relevant = [n for n in nodes if w in ir.names_in(n)]
    lines = ["(chain rule; G_u: the gradient reaching u, element by element)"]
    for node in nodes:
        lines.append(f"  {names[id(node)]} = {_text(node, names, outer=node)}    "
                     f"[{_index_form(node)}]")
    targets = [w] + [names[id(n)] for n in relevant]
    top = _segment(root, names)
    for name, f in _segment_formulas(top, shapes, node_shapes, root, targets).items():
        lines.append(f"  {_lhs(name, w)} = {f}    (from {ir.to_source(top)})")
    for node in reversed(relevant):
        g = f"G_{names[id(node)]}"
        for k, operand in enumerate(ir.children(node)):
            if w not in ir.names_in(operand):
                continue
            passed = _vjp(node, k, g, names)
            seg = _segment(operand, names)
            if isinstance(seg, ir.Name) and seg.name in targets:
                lines.append(f"  {_lhs(seg.name, w)} += {passed}    (through {names[id(node)]})")
                continue
            lines.append(f"  G[{ir.to_source(seg)}] = {passed}    (through {names[id(node)]})")
            inner = [t for t in targets if t in ir.names_in(seg)]
            for name, f in _segment_formulas(seg, shapes, node_shapes, operand, inner).items():
                lines.append(f"  {_lhs(name, w)} += ({f}) * G[{ir.to_source(seg)}]"
                             + _summed(shapes[name], node_shapes[id(operand)]))
    return lines


def _summed(target_shape: tuple, seg_shape: tuple) -> str:
    """Broadcasting's adjoint, said in words: a bias added to every row gets every row's sum."""
    if tuple(target_shape) == tuple(seg_shape):
        return ""
    return f", summed over the broadcast dimensions to shape {list(target_shape)}"


def _lhs(name: str, w: str) -> str:
    return f"d/d{w}" if name == w else f"G_{name}"


def _segment(node: ir.Node, names: dict) -> ir.Node:
    """The sub-expression with every structured result inside it replaced by its name."""
    out: dict[int, ir.Node] = {}
    for n in ir.postorder(node):
        if id(n) in names:
            out[id(n)] = ir.Name(names[id(n)], n.pos)
            continue
        kids = [out[id(c)] for c in ir.children(n)]
        if isinstance(n, ir.Unary):
            out[id(n)] = dataclasses.replace(n, operand=kids[0])
        elif isinstance(n, (ir.Binary, ir.Compare)):
            out[id(n)] = dataclasses.replace(n, left=kids[0], right=kids[1])
        elif isinstance(n, ir.Call):
            out[id(n)] = dataclasses.replace(n, args=tuple(kids))
        elif isinstance(n, ir.Index):
            out[id(n)] = dataclasses.replace(n, operand=kids[0])
        else:
            out[id(n)] = n
    return out[id(node)]


def _segment_formulas(seg, shapes, node_shapes, original, targets) -> dict:
    """Per-element formulas of an elementwise segment w.r.t. the targets it uses (exact, by
    SymPy through symbolic.py), leaving out zeros."""
    from gradcheck_cli.expr.shapes import infer

    used = [t for t in targets if t in ir.names_in(seg)]
    if not used:
        return {}
    seg_vars = {n: shapes[n] for n in ir.names_in(seg)}
    model = symbolic.build(seg, infer(seg, seg_vars, ir.to_source(seg)), seg_vars)
    found = symbolic.formulas(model, used)
    return {t: _short(f) for t, f in found.items() if f != "0"}


def _short(text: str) -> str:
    return text if len(text) <= MAX_FORMULA else text[:MAX_FORMULA] + " ... (elided)"


def _text(node, names, outer) -> str:
    """The node's own source, with the structured results inside it named."""
    if node is outer:
        kids = ir.children(node)
        seg = _segment(node, {k: v for k, v in names.items() if k != id(node)})
        return ir.to_source(seg) if kids else ir.to_source(node)
    return ir.to_source(_segment(node, names))


def _index_form(node) -> str:
    if isinstance(node, ir.Index):
        return "an element selection: the same elements, renumbered"
    return spec_of(node).index_form


def _vjp(node, k: int, g: str, names: dict) -> str:
    """The gradient operand k receives from G (the node's), by the table's rule."""
    operands = [ir.to_source(_segment(c, names)) for c in ir.children(node)]
    if isinstance(node, ir.Index):
        return f"{g} placed at [{ir.to_source(node).rsplit('[', 1)[1]} of a zero tensor shaped like {operands[0]}"
    spec = spec_of(node)
    params = spec.bound(node) if isinstance(node, ir.Call) else {}
    dim = params.get("dim", -1 if node.func in ("softmax", "log_softmax") else "(all)") \
        if isinstance(node, ir.Call) else ""
    rule = spec.vjp[min(k, len(spec.vjp) - 1)] if spec.vjp else f"{g} (see {spec.name}'s row)"
    ops = [o if o.isidentifier() else f"({o})" if len(o) < 40 else f"(operand {i + 1})"
           for i, o in enumerate(operands)]
    return rule.format(*ops, G=g, dim=dim)
