"""torch's side of the dtype names (float64, float32, float16, bfloat16), shared by the
expression engines and the op checks.  torch is imported inside each function, never
at import time."""

from __future__ import annotations


def torch_dtype(name: str):
    """The torch dtype of a dtype name (float64, float32, float16, bfloat16)."""
    import torch

    return {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
            "bfloat16": torch.bfloat16}[name]


def rounded(arrays: dict, dtype: str) -> dict:
    """The point as the dtype represents it, in float64: what autograd, or the op, sees
    (the same dict in float64)."""
    if dtype == "float64":
        return arrays
    import torch

    td = torch_dtype(dtype)
    return {k: torch.tensor(v, dtype=td).double().numpy() for k, v in arrays.items()}


def torch_version() -> str:
    """torch's version as a plain str (torch's own TorchVersion would make every report
    that records it import torch when unpickled, in the process that renders it)."""
    import torch

    return str(torch.__version__)
