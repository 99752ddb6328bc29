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
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from segpipe.errors import ModelError

__all__ = ["PRESETS", "UNet", "receptive_field", "suggested_halo"]

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
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ModelError(f"U-Net widths {widths} need at least two positive levels")
        self.widths = widths
        self.depth = len(widths) - 1
        self.size_multiple = 2**self.depth
        self.down = nn.ModuleList()
        c = in_channels
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
    default True), ``separable`` (bool, default False).
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
    unknown = set(arch) - {"type", "preset", "widths", "batch_norm", "separable"}
    if unknown:
        raise ModelError(
            f"unknown U-Net architecture keys {sorted(unknown)}; "
            "use preset, widths, batch_norm, separable"
        )
    return UNet(
        in_channels,
        out_channels,
        widths,
        batch_norm=bool(arch.get("batch_norm", True)),
        separable=bool(arch.get("separable", False)),
    )
