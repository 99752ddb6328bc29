"""The U-Net family (Ronneberger et al., 2015) with "same" padding.

Presets (feature widths per level, the last one is the bottleneck):

``classic``  64-128-256-512-1024, the original paper's network (4 poolings).
``light``    16-32-64-128, a CPU-friendly network (3 poolings), the built-in models' choice.
``tiny``     4-8-16, for tests (2 poolings).

Every level is two 3×3 convolutions (optionally with BatchNorm) and ReLU; max-pooling goes
down, a 2×2 transposed convolution goes up and the skip connection is concatenated. With
padding the output has the input's size, provided ``H`` and ``W`` are multiples of
``2 ** depth`` (:attr:`UNet.size_multiple`; :meth:`segpipe.models.Model.predict` pads and
crops other sizes). The final 1×1 convolution gives logits; the activation (sigmoid or
softmax) is applied by :class:`segpipe.models.Model`.

Halo versus receptive field
---------------------------
A tile's central pixels see ``receptive_field(depth) // 2`` pixels of context on each side
(``light``: 96 px receptive field, ``classic``: 200 px). :func:`suggested_halo` takes half of
it rounded up to 16, capped at 96 px: the *effective* receptive field of a trained U-Net is
much smaller than the theoretical one (the weights fall off quickly away from the centre),
so beyond ~100 px more halo only costs compute ((tile / core)² more pixels predicted) for
differences far below the probability thresholds.

Coarse context (option ``context``)
-----------------------------------
``UNet(..., context=(s0, s1, ..., sn))`` adds fixed, weight-free input channels computed
inside the module: for every input channel the difference-of-Gaussians bands
``G(s0) - G(s1), ..., G(s(n-1)) - G(sn)`` (separable Gaussian blurs, truncated at
``context_truncate`` σ (default 3), normalised convolution at the borders so any input
size works). They give the first convolution low-frequency features (faint blobs tens of
pixels wide) that a 96-px receptive field cannot see. The blur kernels are non-persistent buffers, so the
weights file holds only the learnt tensors; :func:`context_radius` is what a pixel's
context grows by (the halo must cover it, :func:`halo_for`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from segpipe.errors import ModelError

__all__ = ["PRESETS", "UNet", "context_radius", "halo_for", "receptive_field", "suggested_halo"]

#: Feature widths per level (last = bottleneck) of each named preset.
PRESETS: dict[str, tuple[int, ...]] = {
    "classic": (64, 128, 256, 512, 1024),
    "light": (16, 32, 64, 128),
    "tiny": (4, 8, 16),
}


def _block(c_in: int, c_out: int, batch_norm: bool, separable: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (c_in, c_out):
        if separable:  # depthwise 3x3 then pointwise 1x1 (MobileNet style)
            layers.append(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False))
            layers.append(nn.Conv2d(c, c_out, 1, bias=not batch_norm))
        else:
            layers.append(nn.Conv2d(c, c_out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _gauss_kernel(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    r = int(math.ceil(truncate * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


class ContextBands(nn.Module):
    """Appends difference-of-Gaussians bands of every input channel (no learnt weights).

    ``(N, C, H, W)`` -> ``(N, C * len(sigmas), H, W)``: the input, then for each channel
    ``G(s_i) - G(s_(i+1))``. Borders: normalised convolution (blur of the zero-padded
    input divided by the blur of ones), so no reflection artefacts and no minimum size.
    """

    def __init__(self, sigmas: tuple[float, ...], truncate: float = 3.0) -> None:
        super().__init__()
        self.sigmas = tuple(float(s) for s in sigmas)
        self.truncate = float(truncate)
        if not 1.0 <= self.truncate <= 4.0:
            raise ModelError(f"U-Net context_truncate {truncate} must be between 1 and 4 (sigmas)")
        if len(self.sigmas) < 2 or min(self.sigmas) <= 0 or list(self.sigmas) != sorted(set(self.sigmas)):
            raise ModelError(f"U-Net context {self.sigmas} needs at least two increasing positive sigmas")
        for i, s in enumerate(self.sigmas):
            self.register_buffer(f"k{i}", _gauss_kernel(s, self.truncate), persistent=False)

    def _blur(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        c, r = x.shape[1], (k.numel() - 1) // 2
        kh = k.to(x.dtype).view(1, 1, -1, 1).expand(c, 1, -1, 1)
        kw = k.to(x.dtype).view(1, 1, 1, -1).expand(c, 1, 1, -1)
        x = nn.functional.conv2d(nn.functional.pad(x, (0, 0, r, r)), kh, groups=c)
        return nn.functional.conv2d(nn.functional.pad(x, (r, r, 0, 0)), kw, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(x[:1, :1])
        blurred = []
        for i in range(len(self.sigmas)):
            k = getattr(self, f"k{i}")
            blurred.append(self._blur(x, k) / self._blur(ones, k))
        bands = [blurred[i] - blurred[i + 1] for i in range(len(blurred) - 1)]
        return torch.cat([x, *bands], dim=1)


def context_radius(context: tuple[float, ...] | list[float] | None, truncate: float = 3.0) -> int:
    """Pixels the ``context`` bands reach beyond a pixel (the largest kernel's radius)."""
    return int(math.ceil(truncate * max(context))) if context else 0


def halo_for(depth: int, context: tuple[float, ...] | list[float] | None = None, cap: int = 128,
             truncate: float = 3.0) -> int:
    """The halo a card needs: :func:`suggested_halo` without context; with ``context``
    half the receptive field plus :func:`context_radius`, rounded up to 16, at most ``cap``.

    Examples
    --------
    >>> halo_for(3), halo_for(3, [3, 8, 24])
    (48, 128)
    """
    if not context:
        return suggested_halo(receptive_field(depth))
    return min(cap, 16 * math.ceil((receptive_field(depth) / 2 + context_radius(context, truncate)) / 16))


class UNet(nn.Module):
    """U-Net with "same" padding; returns logits ``(N, out_channels, H, W)``.

    Parameters
    ----------
    in_channels : int
        Input channels ``C``.
    out_channels : int
        Output channels ``K`` (1 binary, K semantic, 3 instance).
    widths : sequence of int
        Feature widths per level, the last one is the bottleneck; ``depth = len(widths) - 1``.
    batch_norm : bool
        BatchNorm after every convolution (the 2015 paper has none; it trains faster with).
    separable : bool
        Depthwise-separable 3×3 convolutions: ~5× fewer parameters; on this project's CPU
        (1 thread, ``light``, a 608² tile) 1.17 s instead of 1.56 s per tile, so off by default.
    context : sequence of float, optional
        Gaussian sigmas (px, increasing) of fixed difference-of-Gaussians input bands
        (:class:`ContextBands`); ``None`` (default) = the plain U-Net.
    context_truncate : float
        Kernel radius of the context blurs in sigmas (default 3).

    Examples
    --------
    >>> net = UNet(1, 3, PRESETS["tiny"]).eval()
    >>> net(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 3, 32, 32])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: tuple[int, ...] | list[int] = PRESETS["light"],
        batch_norm: bool = True,
        separable: bool = False,
        context: tuple[float, ...] | list[float] | None = None,
        context_truncate: float = 3.0,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ModelError(f"U-Net widths {widths} need at least two positive levels")
        self.widths = widths
        self.depth = len(widths) - 1
        self.size_multiple = 2**self.depth
        self.context = ContextBands(tuple(context), context_truncate) if context else None
        self.down = nn.ModuleList()
        c = in_channels * (len(context) if context else 1)
        for w in widths:
            self.down.append(_block(c, w, batch_norm, separable))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.dec.append(_block(2 * w, w, batch_norm, separable))
            c = w
        self.head = nn.Conv2d(c, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` of shape ``(N, C, H, W)``, H and W multiples of ``size_multiple``."""
        if self.context is not None:
            x = self.context(x)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


def receptive_field(depth: int, convs_per_level: int = 2, kernel: int = 3) -> int:
    """Theoretical receptive field (px) of a "same"-padded U-Net of ``depth`` poolings.

    Walks the layers: a ``kernel``-wide convolution at input stride ``j`` widens the field by
    ``(kernel - 1) * j``, a 2×2 pooling by ``j``; transposed 2×2 convolutions (stride 2) map
    every output pixel to one input pixel and add nothing.

    Examples
    --------
    >>> receptive_field(4), receptive_field(3), receptive_field(2)
    (200, 96, 44)
    """
    rf, jump = 1, 1
    for level in range(depth + 1):  # encoder levels and the bottleneck
        rf += convs_per_level * (kernel - 1) * jump
        if level < depth:
            rf += jump  # 2×2 max pool
            jump *= 2
    for _ in range(depth):  # decoder levels
        jump //= 2
        rf += convs_per_level * (kernel - 1) * jump
    return rf


def suggested_halo(rf: int, multiple: int = 16, cap: int = 96) -> int:
    """Halo for a receptive field: half of it rounded up to ``multiple``, at most ``cap``.

    Examples
    --------
    >>> suggested_halo(96), suggested_halo(200), suggested_halo(7)
    (48, 96, 16)
    """
    return min(cap, multiple * math.ceil(rf / 2 / multiple))


def unet_from_architecture(arch: dict[str, Any], in_channels: int, out_channels: int) -> UNet:
    """Build a :class:`UNet` from a card's ``architecture`` dict.

    Keys: ``preset`` (name in :data:`PRESETS`) or ``widths`` (list), ``batch_norm`` (bool,
    default True), ``separable`` (bool, default False), ``context`` (list of sigmas,
    default none; see :class:`ContextBands`), ``context_truncate`` (default 3).
    """
    widths = arch.get("widths")
    if widths is None:
        preset = arch.get("preset", "light")
        if preset not in PRESETS:
            raise ModelError(
                f"unknown U-Net preset {preset!r} in the card's architecture; "
                f"valid presets: {', '.join(sorted(PRESETS))}"
            )
        widths = PRESETS[preset]
    unknown = set(arch) - {"type", "preset", "widths", "batch_norm", "separable", "context",
                            "context_truncate"}
    if unknown:
        raise ModelError(
            f"unknown U-Net architecture keys {sorted(unknown)}; "
            "use preset, widths, batch_norm, separable, context, context_truncate"
        )
    return UNet(
        in_channels,
        out_channels,
        widths,
        batch_norm=bool(arch.get("batch_norm", True)),
        separable=bool(arch.get("separable", False)),
        context=arch.get("context"),
        context_truncate=float(arch.get("context_truncate", 3.0)),
    )
