"""The autograd engine's Jacobian: batched one-hot backward calls, and the per-row
fallback for ops vmap cannot batch, both against torch.autograd.functional.jacobian."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradcheck_cli.engines import autograd
from gradcheck_cli.expr import parse


def _truth(x, y):
    return torch.autograd.functional.jacobian(lambda a, b: a * torch.sigmoid(b) + a**2, (x, y))


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-row-fallback"])
def test_jacobian_matches_torch(monkeypatch, batched):
    if not batched:  # make the batched call fail the way an unbatchable op does
        real = torch.autograd.grad

        def no_batching(*args, **kwargs):
            if kwargs.get("is_grads_batched"):
                raise RuntimeError("batching rule not implemented")
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", no_batching)
    monkeypatch.setattr(autograd, "JACOBIAN_BATCH", 4)  # several chunks for 2x5 = 10 outputs
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 5)), rng.standard_normal(5)
    result = autograd.run(parse("x*sigmoid(y) + x**2"), {"x": x, "y": y}, ["x", "y"], "float64")
    jx, jy = _truth(torch.tensor(x), torch.tensor(y))
    np.testing.assert_allclose(result.gradients["x"], jx.numpy(), rtol=1e-15, atol=0)
    np.testing.assert_allclose(result.gradients["y"], jy.numpy(), rtol=1e-15, atol=0)
    assert result.gradients["x"].shape == (2, 5, 2, 5) and result.gradients["y"].shape == (2, 5, 5)


def test_detached_tensor_result_has_a_zero_jacobian():
    result = autograd.run(parse("detach(x)*2"), {"x": np.array([1.0, 2.0])}, ["x"], "float64")
    assert result.gradients["x"].shape == (2, 2) and not result.gradients["x"].any()
    assert result.unused == ("x",)
