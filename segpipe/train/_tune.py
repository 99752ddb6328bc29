"""Calibrate an instance model's post-processing thresholds on the validation set.

The network is fixed; only ``card.postprocess`` (``seed_threshold``, ``mask_threshold``,
``min_seed_size``) is chosen, by AP@0.5 pooled over the validation images — never on the
held-out test images.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segpipe.metrics import instance_metrics

__all__ = ["tune_postprocess", "retune_saved"]

GRID = {
    "seed_threshold": (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97),
    "mask_threshold": (0.4, 0.5, 0.6),
    "min_seed_size": (4, 8, 16),
}


@torch.no_grad()
def tune_postprocess(module: torch.nn.Module, card: Any, val: list[tuple[np.ndarray, np.ndarray]],
                     device: torch.device | str = "cpu") -> tuple[dict[str, Any], float, float]:
    """Best post-processing parameters on ``val`` → ``(postprocess, ap50_best, ap50_card)``."""
    from segpipe.models import ModelCard
    from segpipe.postprocess import to_labels

    module.eval()
    probs = []
    for x, _ in val:
        h, w = x.shape[1:]
        xt = torch.from_numpy(np.pad(x, ((0, 0), (0, (-h) % 16), (0, (-w) % 16)), mode="reflect"))[None]
        probs.append(module(xt.to(device))[..., :h, :w].float().softmax(1)[0].cpu().numpy())

    def score(params: dict[str, Any]) -> float:
        c = ModelCard(**{**card.model_dump(), "postprocess": params})
        tp = fp = fn = 0
        for p, (_, truth) in zip(probs, val, strict=True):
            m = instance_metrics(truth, to_labels(p, c).labels, thresholds=(0.5,))
            tp, fp, fn = tp + m["tp"]["0.5"], fp + m["fp"]["0.5"], fn + m["fn"]["0.5"]
        return tp / max(1, tp + fp + fn)

    from segpipe.postprocess import DEFAULTS

    base = {**{k: DEFAULTS["instance"][k] for k in GRID}, **card.postprocess}
    base_score = score(base)
    best, best_score = base, base_score
    for values in itertools.product(*GRID.values()):
        params = {**base, **dict(zip(GRID, values, strict=True))}
        s = score(params)
        if s > best_score + 1e-9:
            best, best_score = params, s
    return best, best_score, base_score


def retune_saved(cfg: Any) -> dict[str, Any]:
    """Tune the post-processing of the model saved at ``cfg.out`` and rewrite its card
    (the weights and their sha256 stay as they are)."""
    from segpipe.models import ModelCard, load_model
    from segpipe.train._loop import validation_set
    from segpipe.train._sources import train_val_items

    torch.set_num_threads(cfg.threads)
    weights = Path(str(cfg.out)).with_suffix(".safetensors")
    model = load_model(weights, device="cpu")
    _, val_items = train_val_items(cfg)
    val = validation_set(cfg, model.card, val_items)
    best, s_best, s_card = tune_postprocess(model.module, model.card, val)
    card_path = weights.with_suffix(".json")
    data = json.loads(card_path.read_text(encoding="utf-8"))
    data["postprocess"] = best
    info = {"postprocess": best, "val_ap50_tuned": s_best, "val_ap50_before": s_card}
    if isinstance(data.get("training"), dict):
        data["training"]["postprocess_tuning"] = info
    ModelCard(**data)  # still valid
    card_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return info
