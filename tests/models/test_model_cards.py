"""Model card validation and the built-in registry."""

from __future__ import annotations

import json

import pytest

from segpipe.errors import ModelError
from segpipe.models import (
    BUILTIN_CARDS,
    ModelCard,
    build_module,
    builtin_card,
    is_installed,
    list_models,
    receptive_field,
    suggested_halo,
)
from segpipe.models.testing import tiny_card


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"channel_mode": "rgb"}, "in_channels=3"),
        ({"in_channels": 3}, "in_channels=1"),
        ({"tile": 120}, "multiple of 16"),
        ({"halo": 64}, r"tile - 2\*halo"),
        ({"halo": -1}, "halo"),
        ({"outputs": ["background", "boundary", "interior"]}, "outputs"),
        ({"outputs": ["a", "b"]}, "outputs"),
        ({"sha256": "abc"}, "sha256"),
        ({"mpp": 0.0}, "mpp"),
        ({"task": "panoptic"}, "task"),
        ({"architecture": {"preset": "tiny"}}, "type"),
        ({"normalisation": {"low": 50, "high": 10}}, "below high"),
        ({"colour": "blue"}, "colour"),
        ({"classes": ["background"]}, "classes"),
    ],
)
def test_invalid_cards_raise_one_line_model_error(changes: dict, field: str) -> None:
    data = {**tiny_card("instance").model_dump(), **changes}
    with pytest.raises(ModelError, match=field) as info:
        ModelCard(**data)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    assert "tiny-instance" in str(info.value)


def test_binary_card_needs_one_output_and_two_classes() -> None:
    assert tiny_card("binary").n_outputs == 1
    with pytest.raises(ModelError, match="2 classes"):
        tiny_card("binary", classes=["background", "a", "b"])


def test_card_properties() -> None:
    card = tiny_card("semantic")
    assert card.n_outputs == 4
    assert card.stride == card.tile - 2 * card.halo == 64


def test_card_is_frozen() -> None:
    card = tiny_card()
    with pytest.raises(ValueError, match="frozen"):
        card.halo = 0  # type: ignore[misc]


def test_json_file_round_trip(tmp_path) -> None:
    card = tiny_card("semantic", mpp=0.5, sha256="0" * 64, postprocess={"min_size": 3})
    path = tmp_path / "card.json"
    card.to_json(path)
    assert json.loads(path.read_text())["mpp"] == 0.5
    assert ModelCard.from_json(path) == card


def test_from_json_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="bad.json: not valid JSON"):
        ModelCard.from_json(bad)
    bad.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelError, match="bad.json: invalid model card 'x'"):
        ModelCard.from_json(bad)
    with pytest.raises(ModelError, match="missing.json"):
        ModelCard.from_json(tmp_path / "missing.json")


def test_list_models_lists_the_builtins() -> None:
    cards = list_models()
    assert [c.name for c in cards] == ["classical", "classical-watershed", "defects", "nuclei"]
    tasks = {c.name: c.task for c in cards}
    assert tasks == {
        "classical": "binary",
        "classical-watershed": "binary",
        "defects": "semantic",
        "nuclei": "instance",
    }
    defects = builtin_card("defects")
    assert defects.classes == ["background", "scratch", "pit", "stain"]
    nuclei = builtin_card("nuclei")
    assert nuclei.channel_mode == "nuclear" and nuclei.in_channels == 1
    assert nuclei.outputs == ["background", "interior", "boundary"]
    assert is_installed("classical") and is_installed("classical-watershed")


def test_builtin_cards_halo_covers_half_the_receptive_field() -> None:
    for card in BUILTIN_CARDS.values():
        assert 1024 % card.stride == 0, card.name  # tile cores align with 1024-px chunks
        module = build_module(card)
        if card.architecture["type"] == "unet":
            rf = receptive_field(module.depth)
            assert card.halo == suggested_halo(rf)
            assert card.halo >= min(rf // 2, 96)
            assert card.tile % module.size_multiple == 0
        else:
            assert card.halo >= module.radius


def test_postprocess_min_size_is_stitch_safe() -> None:
    for card in BUILTIN_CARDS.values():
        assert card.postprocess.get("min_size", 0) <= card.halo


def test_build_module_errors() -> None:
    with pytest.raises(ModelError, match="valid types: classical, unet"):
        build_module(tiny_card(architecture={"type": "resnet"}))
    with pytest.raises(ModelError, match="valid presets: classic, light, tiny"):
        build_module(tiny_card(architecture={"type": "unet", "preset": "huge"}))
    with pytest.raises(ModelError, match="unknown U-Net architecture keys"):
        build_module(tiny_card(architecture={"type": "unet", "dropout": 0.1}))
    with pytest.raises(ModelError, match="not a multiple of 32"):
        build_module(tiny_card(architecture={"type": "unet", "widths": [2] * 6}, tile=144, halo=32))
    with pytest.raises(ModelError, match="classical model is binary"):
        build_module(tiny_card("semantic", architecture={"type": "classical"}))


def test_unknown_builtin_name_lists_valid_names() -> None:
    with pytest.raises(ModelError, match="classical, classical-watershed, defects, nuclei"):
        builtin_card("nucleus")
