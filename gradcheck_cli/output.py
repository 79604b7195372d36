"""Getting the report out: stdout written in full or not at all silently, files written
atomically (a temporary file beside the target, then a rename: a full disk or a kill
mid-write leaves the previous report whole), and a target checked before a run so an
unwritable --junit path fails at once instead of after every check ran."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gradcheck_cli.errors import OutputError, UserInputError


def write_stdout(text: str) -> None:
    """Write all of `text` to stdout, or raise BrokenPipeError / OSError.

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


def _cannot(what: str, path: Path, exc: OSError) -> UserInputError:
    return OutputError(f"cannot write {what} file {str(path)!r}: {exc.strerror or exc}")


def prepare_file(path: Path, what: str) -> None:
    """Make sure `path` can be written: its folder is created, and a file can be made in
    it.  Raises UserInputError (exit 2) before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {what} file {str(path)!r}: it is a folder")
    if path.exists() and not path.is_file():  # a device or a pipe: a rename would replace it
        raise OutputError(f"cannot write {what} file {str(path)!r}: it is not a regular file")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{path.name}.{os.getpid()}.probe"
        with open(probe, "w", encoding="utf-8"):
            pass
        probe.unlink()
    except OSError as exc:
        raise _cannot(what, path, exc) from None
    if path.exists() and not os.access(path, os.W_OK) and not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write {what} file {str(path)!r}: permission denied")


def write_atomically(path: Path, text: str, what: str) -> None:
    """Write `text` to `path` through a temporary file and a rename; on failure the old
    file (if any) is untouched and UserInputError says why."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise OutputError(f"cannot write {what} file {str(path)!r}: it is not a regular file")
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise _cannot(what, path, exc) from None


def ensure_std_streams() -> None:
    """File descriptors 0-2 open (on /dev/null where the caller closed them), so nothing we
    open later lands on them and receives what an op prints; sys.stdout / sys.stderr
    usable.  Returns nothing: a closed stdout simply receives the report nowhere."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)


def exit_status(code) -> int:
    """A SystemExit's code as the interpreter turns it into an exit status: None is 0, a
    message is written to stderr and is 1."""
    if code is None:
        return 0
    if not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        return 1
    return code


def flush_std() -> bool:
    """Flush sys.stdout and sys.stderr (each, whatever the other does); False when one of
    them cannot be."""
    flushed = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, OSError, ValueError):
            flushed = False
    return flushed
