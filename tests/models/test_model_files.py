"""Saving and loading models: round trips, integrity, refused pickles, helpful errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from segpipe.errors import ModelError, WeightsIntegrityError
from segpipe.models import (
    BUILTIN_CARDS,
    ModelCard,
    _registry,
    build_module,
    builtin_card,
    is_installed,
    list_models,
    load_model,
    save_model,
    sha256_file,
)
from segpipe.models.testing import tiny_model


def _input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (2, 1, 40, 56)).astype(np.float32)


@pytest.fixture
def saved(tmp_path: Path):
    model = tiny_model("instance", seed=3)
    return model, save_model(model.module, model.card, tmp_path / "my.model")


def test_save_writes_weights_and_card_with_sha(saved) -> None:
    model, weights = saved
    assert weights.name == "my.model.safetensors" and weights.exists()
    card_path = weights.with_suffix(".json")
    assert card_path.name == "my.model.json"
    card = ModelCard.from_json(card_path)
    assert card.sha256 == sha256_file(weights)
    assert card.model_dump(exclude={"sha256"}) == model.card.model_dump(exclude={"sha256"})
    assert not list(weights.parent.glob(".*tmp"))  # no temporary files left


def test_round_trip_gives_identical_outputs(saved) -> None:
    model, weights = saved
    x = _input()
    expected = model.predict(x)
    for source in (weights, str(weights), weights.with_suffix(".json")):
        loaded = load_model(source, device="cpu")
        np.testing.assert_array_equal(loaded.predict(x), expected)
    assert load_model(weights, device="cpu") is load_model(str(weights), device="cpu")  # cached


def test_save_accepts_a_suffixed_path(tmp_path: Path) -> None:
    model = tiny_model("binary")
    weights = save_model(model.module, model.card, tmp_path / "sub" / "b.safetensors")
    assert weights == tmp_path / "sub" / "b.safetensors" and (tmp_path / "sub" / "b.json").exists()


def test_save_refuses_a_module_that_does_not_match_the_card(tmp_path: Path) -> None:
    model = tiny_model("instance")
    other = tiny_model("semantic")
    with pytest.raises(ModelError, match="does not match the architecture"):
        save_model(other.module, model.card, tmp_path / "x")


def test_sha_mismatch_is_refused_and_names_the_file(saved) -> None:
    _, weights = saved
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor's data
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="my.model.safetensors: sha256") as info:
        load_model(weights, device="cpu")
    assert "\n" not in str(info.value)


def test_weights_that_do_not_fit_the_architecture(saved) -> None:
    _, weights = saved
    card_path = weights.with_suffix(".json")
    data = json.loads(card_path.read_text())
    data["architecture"] = {"type": "unet", "widths": [4, 8, 16, 32]}
    card_path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="do not fit the architecture"):
        load_model(weights, device="cpu")


def test_missing_card_is_explained(tmp_path: Path) -> None:
    model = tiny_model("binary")
    weights = save_model(model.module, model.card, tmp_path / "m")
    weights.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="m.json is missing"):
        load_model(weights, device="cpu")
    with pytest.raises(ModelError, match="no weights beside this card"):
        load_model(tmp_path / "other.json", device="cpu")
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "absent.safetensors", device="cpu")


def test_pt_state_dict_loads_with_weights_only(tmp_path: Path) -> None:
    model = tiny_model("semantic", seed=5)
    path = tmp_path / "net.pt"
    torch.save(model.module.state_dict(), path)
    card = ModelCard(**{**model.card.model_dump(), "sha256": sha256_file(path)})
    card.to_json(tmp_path / "net.json")
    loaded = load_model(path, device="cpu")
    np.testing.assert_array_equal(loaded.predict(_input()), model.predict(_input()))


class _Payload:
    """Pickling this object calls ``Path.touch`` on load: code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"weight": _Payload(marker)}, fh, protocol=2)
    card = ModelCard(**{**tiny_model("binary").card.model_dump(), "sha256": sha256_file(path)})
    card.to_json(tmp_path / "evil.json")
    with pytest.raises(WeightsIntegrityError, match="evil.pth: refused") as info:
        load_model(path, device="cpu")
    assert "\n" not in str(info.value)
    assert not marker.exists()
    torch_path = tmp_path / "evil2.pt"  # the same through torch.save's zip format
    torch.save({"weight": _Payload(marker)}, torch_path)
    card = ModelCard(**{**card.model_dump(), "sha256": sha256_file(torch_path)})
    card.to_json(tmp_path / "evil2.json")
    with pytest.raises(WeightsIntegrityError, match="evil2.pt: refused"):
        load_model(torch_path, device="cpu")
    assert not marker.exists()


def test_garbage_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 100)
    card = ModelCard(**{**tiny_model("binary").card.model_dump(), "sha256": sha256_file(path)})
    card.to_json(tmp_path / "junk.json")
    with pytest.raises(WeightsIntegrityError, match="junk.safetensors: not a readable safetensors"):
        load_model(path, device="cpu")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ModelError) as info:
        load_model("nucleus")
    msg = str(info.value)
    assert "unknown model 'nucleus'" in msg
    for name in BUILTIN_CARDS:
        assert name in msg


def test_not_a_model_argument() -> None:
    with pytest.raises(ModelError, match="got int"):
        load_model(3)  # type: ignore[arg-type]


def test_builtin_weights_not_installed_then_installed(tmp_path: Path, monkeypatch) -> None:
    """The train owner's workflow: build_module(card) → train → save_model into weights/."""
    monkeypatch.setattr(_registry, "WEIGHTS_DIR", tmp_path)
    assert not is_installed("nuclei")
    with pytest.raises(ModelError, match="built-in weights for 'nuclei' are not installed"):
        load_model("nuclei", device="cpu")
    card = builtin_card("nuclei")
    assert card.sha256 is None and card == BUILTIN_CARDS["nuclei"]
    torch.manual_seed(0)
    module = build_module(card)
    save_model(module, card, tmp_path / "nuclei")
    assert is_installed("nuclei")
    model = load_model("nuclei", device="cpu")
    assert model.card.sha256 == sha256_file(tmp_path / "nuclei.safetensors")
    assert {c.name: c for c in list_models()}["nuclei"].sha256 == model.card.sha256
    out = model.predict(np.zeros((2, 1, 64, 64), np.float32))
    assert out.shape == (2, 3, 64, 64)


def test_device_argument() -> None:
    assert load_model("classical", device="cpu").device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_model("classical", device="cuda")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"widths": "abc"}, "cannot build the model it describes"),  # ValueError inside the U-Net
        ({"preset": ["x"]}, "cannot build the model it describes"),  # TypeError
        ({"type": "resnet"}, "unknown architecture type 'resnet'"),
    ],
)
def test_a_card_that_cannot_build_its_model_names_the_card(tmp_path: Path, change: dict, error: str) -> None:
    """Every such card is one ModelError naming the card file (some were bare Python errors)."""
    model = tiny_model("instance", seed=3)
    weights = save_model(model.module, model.card, tmp_path / "m")
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["architecture"] = {**card["architecture"], **change}
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=rf"m\.json: .*{error}") as info:
        load_model(weights, device="cpu")
    assert "\n" not in str(info.value)


def test_unreadable_card_and_non_torch_file(tmp_path: Path) -> None:
    model = tiny_model("binary")
    weights = save_model(model.module, model.card, tmp_path / "m")
    weights.with_suffix(".json").write_bytes(b'{"name": "\xe9"}')  # Latin-1, not UTF-8
    with pytest.raises(ModelError, match="m.json: the model card is not UTF-8"):
        load_model(weights, device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")  # not a pickle: not "refused", just unreadable
    ModelCard(**{**model.card.model_dump(), "sha256": None}).to_json(tmp_path / "junk.json")
    with pytest.raises(WeightsIntegrityError, match="junk.pt: not a readable PyTorch state dict"):
        load_model(junk, device="cpu")
