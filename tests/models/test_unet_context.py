"""U-Net ``context``: fixed difference-of-Gaussians input bands, card round trip, halo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segpipe.errors import ModelError
from segpipe.models import ModelCard, build_module, load_model, save_model
from segpipe.models.unet import PRESETS, ContextBands, UNet, context_radius, halo_for


def _card(context: list[float] | None) -> ModelCard:
    arch: dict[str, object] = {"type": "unet", "preset": "tiny", "batch_norm": True}
    if context is not None:
        arch["context"] = context
    return ModelCard(name="ctx", task="semantic", classes=["bg", "a", "b"], in_channels=1,
                     channel_mode="grey", halo=halo_for(2, context), tile=512 + 2 * halo_for(2, context),
                     outputs=["bg", "a", "b"], architecture=arch)


def test_bands_are_zero_on_a_flat_image_and_see_a_faint_blob() -> None:
    bands = ContextBands((3.0, 8.0, 24.0))
    flat = torch.full((1, 1, 40, 56), 0.7)  # normalised borders: no edge response, any size
    out = bands(flat)
    assert out.shape == (1, 3, 40, 56)
    assert torch.equal(out[:, :1], flat) and out[:, 1:].abs().max() < 1e-5
    yy, xx = torch.meshgrid(torch.arange(160.0), torch.arange(160.0), indexing="ij")
    blob = 0.5 + 0.05 * (((yy - 80) ** 2 + (xx - 80) ** 2) < 25**2).float()  # faint 50-px disc
    coarse = ContextBands((3.0, 8.0, 24.0))(blob[None, None])[0, 2]
    assert coarse[80, 80] > 0.01 and coarse[80, 80] > 5 * coarse[5, 5].abs()


def test_bad_context_is_refused() -> None:
    with pytest.raises(ModelError, match="increasing"):
        UNet(1, 2, PRESETS["tiny"], context=(8.0, 3.0))
    with pytest.raises(ModelError, match="increasing"):
        UNet(1, 2, PRESETS["tiny"], context=(4.0,))


def test_halo_covers_the_bands() -> None:
    assert context_radius([3, 8, 24]) == 72 and context_radius(None) == 0
    assert halo_for(3) == 48  # the plain presets keep their halo
    assert halo_for(3, [3, 8, 24]) == 128 and halo_for(2, [2, 4]) == 48
    assert halo_for(3, [4, 60]) == 128  # capped
    assert context_radius([4, 16, 40], truncate=2.0) == 80 and halo_for(3, [4, 16, 40], truncate=2.0) == 128
    with pytest.raises(ModelError, match="truncate"):
        UNet(1, 2, PRESETS["tiny"], context=(2.0, 4.0), context_truncate=0.5)


def test_context_unet_round_trips_through_card_and_load_model(tmp_path: Path) -> None:
    card = _card([2.0, 4.0, 8.0])
    torch.manual_seed(0)
    module = build_module(card).eval()
    assert module.down[0][0].in_channels == 3  # the input and two bands
    assert not any("context" in k for k in module.state_dict())  # kernels are not weights
    path = save_model(module, card, tmp_path / "ctx")
    model = load_model(path, device="cpu")
    assert model.card.architecture["context"] == [2.0, 4.0, 8.0]
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(module(x), model.module(x), atol=1e-6)


def test_plain_preset_is_unchanged_by_the_option() -> None:
    torch.manual_seed(0)
    a = UNet(1, 3, PRESETS["tiny"]).eval()
    torch.manual_seed(0)
    b = UNet(1, 3, PRESETS["tiny"], context=None).eval()
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
