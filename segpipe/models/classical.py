"""The classical model: Gaussian smoothing and a steep sigmoid around a fixed threshold.

It needs no weights, so segpipe works before any network is trained, and it is a
``torch.nn.Module`` like the learned models, so it runs through the same tiling, batching
and Dask code. Its "probabilities" are meaningful: ``sigmoid(steepness * (x_s - threshold))``
of the smoothed, normalised first input channel ``x_s`` (0.5 exactly at the threshold).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segpipe.errors import ModelError

__all__ = ["ClassicalModule"]


class ClassicalModule(nn.Module):
    """Threshold model: logits ``steepness * (gaussian(x[:, :1], sigma) - threshold)``.

    The separable Gaussian is a sequence of shifted, weighted sums (no convolution
    kernel), so every output pixel is computed by the same floating-point operations
    wherever it lies in a tile: tiled and whole-image predictions agree bit for bit.

    Parameters
    ----------
    sigma : float
        Gaussian standard deviation in pixels (0 disables smoothing).
    threshold : float
        Threshold on the normalised input (0 = low percentile, 1 = high percentile).
    steepness : float
        Slope of the sigmoid; 20 maps ``threshold ± 0.1`` to probabilities 0.12 / 0.88.
    """

    size_multiple = 1

    def __init__(self, sigma: float = 1.0, threshold: float = 0.5, steepness: float = 20.0) -> None:
        super().__init__()
        if sigma < 0 or steepness <= 0:
            raise ModelError(
                f"classical model needs sigma >= 0 and steepness > 0, got {sigma}, {steepness}"
            )
        self.sigma = float(sigma)
        self.threshold = float(threshold)
        self.steepness = float(steepness)
        self.radius = math.ceil(3 * sigma) if sigma > 0 else 0
        if self.radius:
            t = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
            w = torch.exp(-0.5 * (t / sigma) ** 2)
            self.weights: list[float] = (w / w.sum()).tolist()
        else:
            self.weights = [1.0]

    def _smooth(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        r = self.radius
        size = x.shape[dim]
        pad = [0, 0, 0, 0]
        pad[0 if dim == 3 else 2] = pad[1 if dim == 3 else 3] = r
        mode = "reflect" if size > r else "replicate"
        xp = F.pad(x, pad, mode=mode)
        # out = Σ xp_i · w_i, term by term in order; in place into two buffers: the same
        # rounding as `out = out + xp_i * w_i`, without an image-sized temporary per term
        if xp.requires_grad and torch.is_grad_enabled():  # out= has no autograd
            return sum((xp.narrow(dim, i, size) * w for i, w in enumerate(self.weights)), xp.new_zeros(()))
        out = torch.mul(xp.narrow(dim, 0, size), self.weights[0])
        term = torch.empty_like(out)
        for i in range(1, 2 * r + 1):
            out.add_(torch.mul(xp.narrow(dim, i, size), self.weights[i], out=term))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1, H, W)`` for input ``(N, C, H, W)`` (only channel 0 is used)."""
        x = x[:, :1].float()
        if self.radius:
            x = self._smooth(self._smooth(x, 2), 3)
        return (x - self.threshold) * self.steepness

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, threshold={self.threshold}, steepness={self.steepness}"


def classical_from_architecture(arch: dict[str, Any]) -> ClassicalModule:
    """Build a :class:`ClassicalModule` from a card's ``architecture`` dict."""
    unknown = set(arch) - {"type", "sigma", "threshold", "steepness"}
    if unknown:
        raise ModelError(
            f"unknown classical architecture keys {sorted(unknown)}; use sigma, threshold, steepness"
        )
    return ClassicalModule(
        sigma=float(arch.get("sigma", 1.0)),
        threshold=float(arch.get("threshold", 0.5)),
        steepness=float(arch.get("steepness", 20.0)),
    )
