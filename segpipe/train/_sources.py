"""Training and validation items from the synthetic generators or from files."""

from __future__ import annotations

from typing import Any

import numpy as np

from segpipe.errors import ConfigError
from segpipe.train._config import TrainConfig
from segpipe.train._data import Item, array_item, load_items

__all__ = ["synthetic_items", "train_val_items", "SYNTHETIC_KINDS"]

SYNTHETIC_KINDS = ("nuclei", "defects")


#: Share of training images drawn in the plain blob style (:func:`segpipe.synthetic.blob_sample`)
#: instead of the realistic renderer, so the model does not learn the renderer's look.
PLAIN_FRACTION = 0.35


def _nuclei_item(rng: np.random.Generator, shape: tuple[int, int], name: str, held_out: bool) -> Item:
    from segpipe.synthetic import blob_sample, nuclei_sample

    if not held_out and rng.random() < PLAIN_FRACTION:
        lo = float(np.exp(rng.uniform(np.log(7.0), np.log(36.0))))
        hi = min(56.0, lo * float(rng.uniform(1.1, 2.2)))
        image, labels = blob_sample(shape, rng, (lo, hi), float(rng.uniform(0.02, 0.5)))
        return array_item(name, image, labels, "instance", "grey")
    modality = "he" if rng.random() < 0.5 else "fluorescence"
    if held_out:  # other settings than training: fixed size bands, other densities
        lo, hi = [(10.0, 18.0), (16.0, 28.0), (24.0, 40.0), (10.0, 40.0)][int(rng.integers(4))]
        density: Any = float(rng.uniform(0.2, 0.5))
    else:
        lo = float(np.exp(rng.uniform(np.log(8.0), np.log(30.0))))
        hi = min(48.0, lo * float(rng.uniform(1.15, 2.0)))
        density = (0.1, 0.55)
    for _ in range(5):  # redraw if the generator fails on a degenerate scene (e.g. no nuclei)
        try:
            image, labels = nuclei_sample(shape, rng, modality=modality, diameter_px=(lo, hi), density=density)
            break
        except (IndexError, ValueError):
            continue
    else:
        raise ConfigError(f"{name}: the synthetic nuclei generator failed 5 times in a row")
    mod = "brightfield" if modality == "he" else "fluorescence"
    return array_item(name, image, labels, "instance", mod)


def _defects_item(rng: np.random.Generator, shape: tuple[int, int], name: str, held_out: bool) -> Item:
    from segpipe.synthetic import defects_sample

    dtype = np.uint16 if rng.random() < 0.5 else np.uint8
    if held_out:  # other settings than training: more defects per image
        image, classes = defects_sample(shape, rng, dtype=dtype, scratches=2.0, pits=5.0, stains=1.2,
                                        clean_probability=0.0)
    else:
        image, classes = defects_sample(shape, rng, dtype=dtype)
    return array_item(name, np.asarray(image), np.asarray(classes).astype(np.int64), "semantic", "grey")


def synthetic_items(kind: str, n: int, shape: int, seed: int, stream: int, held_out: bool = False) -> list[Item]:
    """``n`` synthetic items; ``(seed, stream)`` picks an independent random stream."""
    maker = {"nuclei": _nuclei_item, "defects": _defects_item}.get(kind)
    if maker is None:
        raise ConfigError(f"synthetic:{kind} is unknown; use synthetic:{' or synthetic:'.join(SYNTHETIC_KINDS)}")
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, stream, i])
        side = int(shape * (1.25 if held_out else 1.0)) // 16 * 16
        out.append(maker(rng, (side, side), f"synthetic:{kind}:{stream}:{i}", held_out))
    return out


def synthetic_kind(data: str) -> str | None:
    """``nuclei`` for ``synthetic:nuclei``; None for a path."""
    return data.split(":", 1)[1] if data.startswith("synthetic:") else None


def train_val_items(cfg: TrainConfig) -> tuple[list[Item], list[Item]]:
    """Training items (for synthetic data: epoch 0's pool) and validation items."""
    n_classes = len(cfg.classes) if cfg.task == "semantic" and cfg.classes else None
    kind = synthetic_kind(cfg.data)
    if kind is not None:
        train = synthetic_items(kind, cfg.pool, cfg.synthetic_shape, cfg.seed, 1000)
    else:
        train = load_items(cfg.data, cfg.task, n_classes, cfg.label_name, cfg.masks)
    if cfg.val_data is not None:
        vkind = synthetic_kind(cfg.val_data)
        if vkind is not None:
            val = synthetic_items(vkind, cfg.val_images, cfg.synthetic_shape, cfg.seed + 7919, 2000, held_out=True)
        else:
            val = load_items(cfg.val_data, cfg.task, n_classes, cfg.label_name, cfg.masks)
    elif kind is not None:
        val = synthetic_items(kind, cfg.val_images, cfg.synthetic_shape, cfg.seed + 7919, 2000, held_out=True)
    else:
        if len(train) < 2:
            # a single image cannot be split: it is validated on itself (say so in the card)
            return train, train
        order = np.random.default_rng(cfg.seed).permutation(len(train))
        n_val = max(1, int(round(cfg.val_fraction * len(train))))
        val = [train[i] for i in order[:n_val]]
        train = [train[i] for i in order[n_val:]]
    return train, val
