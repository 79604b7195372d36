"""The worker server's own setup, imported first in its preload (workers.py), before torch
and SymPy, and only there (anywhere else importing it does nothing).

The server (multiprocessing's forkserver) inherits the parent's stdout and stderr, and
when the parent is gone it would run the interpreter's full shutdown with torch and SymPy
loaded (~0.3 s).  A reader of the parent's output -- `gradcheck run --json | jq`, a CI
step capturing output, subprocess.run(capture_output=True) -- waits for end-of-file on
those pipes, so it would wait for that shutdown too.  So in the server:

* stdout and stderr point at /dev/null before the preload's imports (workers write to
  their own pipes to the parent, set up in child.py; the server itself prints nothing, and
  a parent that ends early -- a usage error -- is not kept waiting for the imports);
* its exit skips the interpreter's shutdown (os._exit in an atexit handler: module
  teardown and garbage collection come after every handler; the server holds no state
  worth a teardown, and multiprocessing's temporary directory is the parent's to remove).

Workers forked from it end with os._exit themselves (child.py), so neither reaches them.
"""

from __future__ import annotations

import atexit
import os
import sys


def in_server() -> bool:
    """True while multiprocessing's forkserver main loop is running this import."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.endswith(os.path.join("multiprocessing", "forkserver.py")):
            return True
        frame = frame.f_back
    return False


def detach() -> None:
    """The server's stdout and stderr to /dev/null (whether the parent's were open, closed
    or full); its exit immediate.  Nothing here may fail: the server would be gone."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        null = None
    if null is not None:
        try:
            for fd in (1, 2):
                if null != fd:
                    os.dup2(null, fd)
        except OSError:
            pass
        if null > 2:
            os.close(null)
    atexit.register(os._exit, 0)


if in_server():
    detach()
