"""The U-Net family: presets, sizes, receptive field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segpipe.errors import ModelError
from segpipe.models import PRESETS, UNet, receptive_field, suggested_halo


def test_classic_preset_is_the_original_unet() -> None:
    net = UNet(1, 2, PRESETS["classic"], batch_norm=False)
    assert PRESETS["classic"] == (64, 128, 256, 512, 1024) and net.depth == 4
    # the paper's layers: two 3x3 convs per level, 2x2 up-convs halving the width, 1x1 head
    w, expected, c = PRESETS["classic"], 0, 1
    for width in w:
        expected += 9 * c * width + width + 9 * width * width + width
        c = width
    for hi, lo in zip(w[:0:-1], w[-2::-1], strict=True):
        expected += 4 * hi * lo + lo + 9 * 2 * lo * lo + lo + 9 * lo * lo + lo
    expected += w[0] * 2 + 2
    assert sum(p.numel() for p in net.parameters()) == expected  # ~31.0 M


@pytest.mark.parametrize("preset", ["light", "tiny"])
@pytest.mark.parametrize(("batch_norm", "separable"), [(True, False), (False, False), (True, True)])
def test_same_size_output(preset: str, batch_norm: bool, separable: bool) -> None:
    net = UNet(3, 4, PRESETS[preset], batch_norm=batch_norm, separable=separable).eval()
    m = net.size_multiple
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 4 * m, 6 * m))
    assert out.shape == (2, 4, 4 * m, 6 * m)


def test_bad_widths() -> None:
    with pytest.raises(ModelError, match="at least two"):
        UNet(1, 1, (8,))


def test_receptive_field_formula_matches_the_network() -> None:
    """Perturb single input pixels along a row: only those within the receptive field
    change the centre output, and the extent of influence is close to the formula."""
    torch.manual_seed(0)
    net = UNet(1, 1, PRESETS["tiny"], batch_norm=False).eval()
    rf = receptive_field(net.depth)
    size, centre = 128, 64
    offsets = np.arange(-rf, rf + 1)
    x = torch.zeros(len(offsets) + 1, 1, size, size)
    for i, d in enumerate(offsets):
        x[i + 1, 0, centre, centre + d] = 100.0
    with torch.no_grad():
        out = net(x)[:, 0, centre, centre]
    changed = offsets[(out[1:] - out[0]).abs().numpy() > 1e-6]
    extent = changed.max() - changed.min() + 1
    assert extent <= rf
    assert extent >= rf - 2**net.depth


def test_suggested_halo() -> None:
    assert [receptive_field(d) for d in (2, 3, 4)] == [44, 96, 200]
    assert [suggested_halo(receptive_field(d)) for d in (2, 3, 4)] == [32, 48, 96]
    assert suggested_halo(500) == 96 and suggested_halo(1) == 16
