"""The expression language: tokenizer, precedence parser, IR, and the function table."""

from gradcheck_cli.expr.parser import parse

__all__ = ["parse"]
