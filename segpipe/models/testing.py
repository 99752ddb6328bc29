"""Small models for tests (here and in other modules' tests): tiny U-Nets with random weights.

>>> import numpy as np
>>> model = tiny_model("semantic")
>>> model.predict(np.zeros((1, 1, 40, 40), np.float32)).shape
(1, 4, 40, 40)
"""

from __future__ import annotations

from typing import Any

import torch

from segpipe.models._card import INSTANCE_OUTPUTS, ModelCard
from segpipe.models._model import Model
from segpipe.models._registry import build_module

__all__ = ["tiny_card", "tiny_model"]

_CLASSES = {
    "binary": ["background", "object"],
    "semantic": ["background", "scratch", "pit", "stain"],
    "instance": ["background", "nucleus"],
}


def tiny_card(task: str = "instance", **changes: Any) -> ModelCard:
    """A valid card for a tiny U-Net (4-8-16, receptive field 44 px, halo 32, tile 128)."""
    classes = _CLASSES[task]
    outputs = {"binary": ["object"], "semantic": classes, "instance": INSTANCE_OUTPUTS}[task]
    data: dict[str, Any] = {
        "name": f"tiny-{task}",
        "task": task,
        "classes": classes,
        "in_channels": 1,
        "channel_mode": "grey",
        "halo": 32,
        "tile": 128,
        "outputs": outputs,
        "architecture": {"type": "unet", "preset": "tiny", "batch_norm": True},
    }
    data.update(changes)
    return ModelCard(**data)


def tiny_model(task: str = "instance", seed: int = 0, device: str = "cpu", **changes: Any) -> Model:
    """A :class:`Model` around a seeded, randomly initialised tiny U-Net.

    BatchNorm running statistics are randomised too, so that saving and loading them is
    tested, and the outputs are not trivially uniform.
    """
    card = tiny_card(task, **changes)
    torch.manual_seed(seed)
    module = build_module(card)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return Model(module, card, device)
