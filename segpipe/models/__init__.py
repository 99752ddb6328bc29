"""Segmentation models: cards, the built-in registry, the U-Net family and the classical model.

>>> from segpipe.models import load_model, list_models
>>> [card.name for card in list_models()]
['classical', 'classical-watershed', 'defects', 'nuclei']
>>> model = load_model("classical", device="cpu")
>>> model.card.task
'binary'

Built-in learned weights live in ``segpipe/models/weights/<name>.safetensors`` with the card
``<name>.json`` beside them, written by :func:`save_model` from a network that
:func:`build_module` built from the card.
"""

from segpipe.models._card import INSTANCE_OUTPUTS, ModelCard, Normalisation
from segpipe.models._io import list_models, load_model, save_model, sha256_file
from segpipe.models._model import Model
from segpipe.models._registry import (
    BUILTIN_CARDS,
    WEIGHTS_DIR,
    build_module,
    builtin_card,
    is_installed,
)
from segpipe.models.classical import ClassicalModule
from segpipe.models.unet import PRESETS, UNet, receptive_field, suggested_halo

__all__ = [
    "BUILTIN_CARDS",
    "INSTANCE_OUTPUTS",
    "PRESETS",
    "WEIGHTS_DIR",
    "ClassicalModule",
    "Model",
    "ModelCard",
    "Normalisation",
    "UNet",
    "build_module",
    "builtin_card",
    "is_installed",
    "list_models",
    "load_model",
    "receptive_field",
    "save_model",
    "sha256_file",
    "suggested_halo",
]
