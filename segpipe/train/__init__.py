"""Train segpipe's U-Nets and evaluate runs against ground truth.

>>> from segpipe.train import preset_config, train            # doctest: +SKIP
>>> result = train(preset_config("nuclei", out="my/nuclei.safetensors", steps=200))  # doctest: +SKIP
>>> result.best_metrics["ap50"]                                # doctest: +SKIP

``python -m segpipe.train --preset nuclei --out my/nuclei`` trains the built-in recipe; the
exact commands behind the shipped weights are in docs/models.md and in each card's
``training`` field.
"""

from segpipe.train._augment import instance_target, stain_jitter
from segpipe.train._config import PRESETS, TrainConfig, TrainResult, preset_config
from segpipe.train._evaluate import evaluate_labels, evaluate_run
from segpipe.train._loop import make_card, soft_dice_loss, train

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "evaluate_labels",
    "evaluate_run",
    "instance_target",
    "make_card",
    "preset_config",
    "soft_dice_loss",
    "stain_jitter",
    "train",
]
