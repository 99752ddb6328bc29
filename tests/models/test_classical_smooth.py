"""The classical model's in-place smoothing gives the same bits as the plain formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segpipe.models.classical import ClassicalModule


def _reference_smooth(m: ClassicalModule, x: torch.Tensor, dim: int) -> torch.Tensor:
    """The formula as first written (one temporary per term), kept to compare against."""
    r, size = m.radius, x.shape[dim]
    pad = [0, 0, 0, 0]
    pad[0 if dim == 3 else 2] = pad[1 if dim == 3 else 3] = r
    xp = F.pad(x, pad, mode="reflect" if size > r else "replicate")
    out = xp.narrow(dim, 0, size) * m.weights[0]
    for i in range(1, 2 * r + 1):
        out = out + xp.narrow(dim, i, size) * m.weights[i]
    return out


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5])
@pytest.mark.parametrize("shape", [(1, 1, 97, 131), (2, 1, 3, 40), (1, 1, 256, 256)])
def test_smooth_is_bit_identical_to_the_plain_formula(sigma: float, shape: tuple[int, ...]) -> None:
    m = ClassicalModule(sigma=sigma)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(7)) * 3 - 1
    with torch.inference_mode():
        for dim in (2, 3):
            assert torch.equal(m._smooth(x, dim), _reference_smooth(m, x, dim))
        want = (_reference_smooth(m, _reference_smooth(m, x, 2), 3) - m.threshold) * m.steepness
        assert torch.equal(m(x), want)


def test_smooth_keeps_gradients() -> None:
    m = ClassicalModule(sigma=1.0)
    x = torch.rand(1, 1, 20, 20, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.allclose(y.detach(), m(x.detach()), atol=1e-6)
