"""Built-in model cards and ``build_module(card)``: the network a card describes."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from segpipe.errors import ModelError
from segpipe.models._card import INSTANCE_OUTPUTS, ModelCard
from segpipe.models.classical import classical_from_architecture
from segpipe.models.unet import unet_from_architecture

__all__ = [
    "BUILTIN_CARDS",
    "WEIGHTS_DIR",
    "build_module",
    "builtin_card",
    "builtin_paths",
    "is_installed",
]

#: Where the built-in learned models' ``<name>.safetensors`` + ``<name>.json`` live.
WEIGHTS_DIR = Path(__file__).parent / "weights"

# U-Net "light" (16-32-64-128): receptive field 96 px -> halo 48; tile core 512 (divides the
# default 1024-px chunks, so chunk cores coincide with tile cores) -> tile 512 + 2*48 = 608.
_LIGHT = {"type": "unet", "preset": "light", "batch_norm": True}

BUILTIN_CARDS: dict[str, ModelCard] = {
    card.name: card
    for card in (
        ModelCard(
            name="nuclei",
            task="instance",
            classes=["background", "nucleus"],
            in_channels=1,
            channel_mode="nuclear",
            mpp=0.5,
            halo=48,
            tile=608,
            outputs=INSTANCE_OUTPUTS,
            postprocess={"seed_threshold": 0.5, "mask_threshold": 0.5, "min_size": 16},
            architecture=_LIGHT,
            description="nuclei in fluorescence (nuclear channel) and H&E (hematoxylin), 0.5 µm/px",
        ),
        ModelCard(
            name="defects",
            task="semantic",
            classes=["background", "scratch", "pit", "stain"],
            in_channels=1,
            channel_mode="grey",
            mpp=None,
            halo=48,
            tile=608,
            outputs=["background", "scratch", "pit", "stain"],
            postprocess={"min_size": 16},
            architecture=_LIGHT,
            description="surface defects (scratch, pit, stain) in grey industrial images",
        ),
        ModelCard(
            name="classical",
            task="binary",
            classes=["background", "object"],
            in_channels=1,
            channel_mode="grey",
            mpp=None,
            halo=16,
            tile=544,
            outputs=["object"],
            normalisation={"kind": "otsu"},  # its threshold 0.5 = the image's Otsu threshold
            postprocess={"mode": "cc", "threshold": 0.5, "min_size": 4},
            architecture={"type": "classical", "sigma": 1.0, "threshold": 0.5, "steepness": 20.0},
            description="bright objects: smoothed image above its Otsu threshold + connected components (no weights)",
        ),
        ModelCard(
            name="classical-watershed",
            task="binary",
            classes=["background", "object"],
            in_channels=1,
            channel_mode="grey",
            mpp=None,
            halo=16,
            tile=544,
            outputs=["object"],
            normalisation={"kind": "otsu"},
            postprocess={"mode": "watershed", "threshold": 0.5, "min_distance": 4, "min_size": 4},
            architecture={"type": "classical", "sigma": 1.0, "threshold": 0.5, "steepness": 20.0},
            description="bright objects: smoothed image above its Otsu threshold + distance-transform watershed "
            "(no weights)",
        ),
    )
}

_NEEDS_WEIGHTS = {"unet"}


def build_module(card: ModelCard) -> nn.Module:
    """The untrained ``torch.nn.Module`` that ``card.architecture`` describes.

    The training code builds its network with this function and saves it with
    :func:`segpipe.models.save_model`, so what is trained is exactly what is loaded.

    Parameters
    ----------
    card : ModelCard
        ``architecture["type"]`` is ``"unet"`` (keys ``preset`` or ``widths``,
        ``batch_norm``) or ``"classical"`` (``sigma``, ``threshold``, ``steepness``).

    Returns
    -------
    torch.nn.Module
        Maps ``(N, card.in_channels, H, W)`` to logits ``(N, K, H, W)``; its
        ``size_multiple`` attribute is what H and W must be divisible by.
    """
    arch = card.architecture
    kind = arch["type"]
    if kind == "unet":
        module: nn.Module = unet_from_architecture(arch, card.in_channels, card.n_outputs)
        if card.tile % module.size_multiple:  # type: ignore[operator]
            raise ModelError(
                f"model card {card.name!r}: tile {card.tile} is not a multiple of "
                f"{module.size_multiple} (2**depth of its U-Net)"
            )
        return module
    if kind == "classical":
        if card.task != "binary":
            raise ModelError(
                f"model card {card.name!r}: a classical model is binary, not {card.task}"
            )
        return classical_from_architecture(arch)
    raise ModelError(
        f"model card {card.name!r}: unknown architecture type {kind!r}; valid types: classical, unet"
    )


def needs_weights(card: ModelCard) -> bool:
    """Whether a card's network has learned weights (the classical model has none)."""
    return card.architecture["type"] in _NEEDS_WEIGHTS


def builtin_card(name: str) -> ModelCard:
    """The card of built-in model ``name``: the installed ``weights/<name>.json`` if present,
    else the default card (for training a built-in from scratch)."""
    if name not in BUILTIN_CARDS:
        raise unknown_model_error(name)
    _, card_path = builtin_paths(name)
    if card_path.exists():
        return ModelCard.from_json(card_path)
    return BUILTIN_CARDS[name]


def builtin_paths(name: str) -> tuple[Path, Path]:
    """``(weights, card)`` paths of built-in model ``name`` under :data:`WEIGHTS_DIR`."""
    return WEIGHTS_DIR / f"{name}.safetensors", WEIGHTS_DIR / f"{name}.json"


def is_installed(name: str) -> bool:
    """Whether built-in model ``name`` can be loaded (its weights exist, or it needs none)."""
    if name not in BUILTIN_CARDS:
        raise unknown_model_error(name)
    if not needs_weights(BUILTIN_CARDS[name]):
        return True
    weights, card = builtin_paths(name)
    return weights.exists() and card.exists()


def unknown_model_error(name: object) -> ModelError:
    """The error for a name that is neither a built-in model nor a weights file."""
    valid = ", ".join(sorted(BUILTIN_CARDS))
    return ModelError(
        f"unknown model {name!r}: use a built-in name ({valid}) or the path of a "
        ".safetensors / .pt / .pth weights file with its .json card beside it"
    )
