"""One error hierarchy: what the user gave could not be used (exit 2).

A check that runs and finds a wrong gradient is not an exception: it is a verdict in
the report (exit 1).  Only input that cannot be used at all raises, and it raises one
of these, which the CLI turns into one message on stderr and exit code 2.
"""

from __future__ import annotations


class UserInputError(Exception):
    """Input that cannot be used: bad option, expression, value, spec file or op target."""

    exit_code = 2
    kind = "input"  # the error JSON's error.kind (--json on exit 2)

    def __init__(self, message: str, *, source: str | None = None, column: int | None = None):
        super().__init__(message)
        self.message = message
        self.source = source
        self.column = column  # 1-based column in `source`, for a caret line

    def render(self) -> str:
        """The message, followed by the source line and a caret when a position is known."""
        if self.source is None or self.column is None:
            return self.message
        shown = self.source if len(self.source) <= 200 else self.source[: 200] + "..."
        if self.column > len(shown) + 1:
            return self.message
        # Echo only printable ASCII: a control character (ESC), a bidi override (U+202E) or
        # a double-width lookalike in the source line would rewrite or reorder the user's
        # terminal and misplace the caret.  One '?' per character keeps the caret's column.
        shown = "".join(ch if " " <= ch <= "~" else "?" for ch in shown)
        return f"{self.message}\n  {shown}\n  {' ' * (self.column - 1)}^"


class ParseError(UserInputError):
    """The expression text does not follow the grammar or breaks one of its limits."""

    kind = "parse"


class SpecError(UserInputError):
    """A spec file (TOML) is unreadable or has a bad key or value."""

    kind = "spec"


class DeviceError(UserInputError):
    """--device names a device torch does not have (no CUDA, or no device N)."""

    kind = "device"


class OutputError(UserInputError):
    """A report file (--junit, --plot) cannot be written."""

    kind = "output"
