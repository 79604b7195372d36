"""Numbers and arrays as strict JSON values (RFC 8259): floats, nested lists, and the
strings "nan", "inf", "-inf" for non-finite numbers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(x: Any, computed: Any = None) -> Any:
    """Numbers and arrays as JSON values: floats, nested lists, and strings for non-finite
    numbers.  Where `computed` (a bool array like x) is False the entry is null."""
    if x is None:
        return None
    if isinstance(x, np.ndarray) or isinstance(x, np.generic):
        arr = np.asarray(x)
        if arr.dtype == bool:
            return arr.tolist()
        mask = None if computed is None else np.asarray(computed, dtype=bool)
        if arr.ndim == 0:
            return None if mask is not None and not mask else json_number(float(arr))
        return _numbers(arr, mask)
    if isinstance(x, float):
        return json_number(x)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def _numbers(arr: np.ndarray, mask: np.ndarray | None) -> list:
    """json_number over a whole array at once (Jacobians reach millions of entries), as nested
    lists; None where mask is False."""
    flt = arr.astype(np.float64, copy=False)
    if mask is None and np.isfinite(flt).all():
        return flt.tolist()  # Python floats straight from C (an object array's tolist is ~10x slower)
    out = flt.astype(object)  # Python floats
    out[np.isnan(flt)] = "nan"
    out[flt == np.inf] = "inf"
    out[flt == -np.inf] = "-inf"
    if mask is not None:
        out[~mask] = None
    return out.tolist()


def json_number(v: float) -> Any:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v
