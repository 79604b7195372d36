"""--device: `cpu`, `cuda` or `cuda:N`, on every command.  The syntax is checked at once
(no torch); whether torch has the device is asked where torch is loaded anyway (the
expression checker, an op's worker), and a missing one is exit 2 with a clear message,
never a traceback."""

from __future__ import annotations

import re

from gradcheck_cli.errors import DeviceError, UserInputError

DEVICE_SYNTAX = "cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(?::(\d{1,4}))?")


def check_syntax(device) -> str:
    """`device` if it is cpu, cuda or cuda:N; else UserInputError."""
    if isinstance(device, str) and (device == "cpu" or _CUDA.fullmatch(device)):
        return device
    raise UserInputError(f"--device must be {DEVICE_SYNTAX}, got {device!r}")


def syntax_problem(device) -> str | None:
    """For spec-file validation: None when fine, else why not."""
    try:
        check_syntax(device)
    except UserInputError:
        return f"must be {DEVICE_SYNTAX}, got {device!r}"
    return None


def kind(device: str) -> str:
    """'cpu' or 'cuda' (what torch.device(device).type says)."""
    return device.split(":", 1)[0]


def require(device: str) -> None:
    """DeviceError unless torch has `device` (imports torch: call it where torch is loaded)."""
    check_syntax(device)
    if device == "cpu":
        return
    import torch

    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if not torch.cuda.is_available():
        build = "a CPU-only build" if getattr(torch.version, "cuda", None) is None else \
            f"built for CUDA {torch.version.cuda}, but no GPU or driver is visible"
        raise DeviceError(f"--device {device}: no CUDA device is available to torch here (torch {torch.__version__} "
                          f"is {build}); use --device cpu")
    count = torch.cuda.device_count()
    if index >= count:
        seen = ", ".join(f"cuda:{i}" for i in range(count))
        raise DeviceError(f"--device {device}: torch sees {count} CUDA device{'s' if count != 1 else ''} ({seen})")
