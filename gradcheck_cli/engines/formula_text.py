"""--formula for structured expressions: index notation (placeholder)."""

from __future__ import annotations


def formulas(root, node_shapes, var_shapes, wrt) -> dict:
    return {}
