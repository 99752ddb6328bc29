"""Probabilities → labels: connected components, watershed, semantic components.

Connectivity
------------
Every labelling here uses **4-connectivity** (``skimage.measure.label(connectivity=1)``,
watershed with ``connectivity=1``): two pixels belong to one object only when they share an
edge. Objects touching at a corner stay apart, and a chunk border is crossed only between
the two pixels facing each other, which is what :mod:`segpipe.stitch` compares. The
stitching code must use the same connectivity (:data:`CONNECTIVITY`).

Minimum sizes
-------------
Fragments smaller than ``min_size`` pixels are removed *per window*. This is stitch-safe as
long as ``min_size`` does not exceed the model's halo: a component of fewer than ``halo``
pixels spans fewer than ``halo`` pixels, so when it touches a chunk's core it lies wholly
inside that chunk's window and every window sees it whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import label as sk_label
from skimage.segmentation import relabel_sequential, watershed

from segpipe.errors import ModelError

if TYPE_CHECKING:
    from segpipe.models import ModelCard

__all__ = ["CONNECTIVITY", "DEFAULTS", "Segmentation", "remove_small", "sequential_table", "to_labels"]

#: skimage connectivity used for every labelling (1 = 4-connectivity in 2-D).
CONNECTIVITY = 1

#: Default ``card.postprocess`` parameters per task; a card's values override them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "binary": {"mode": "cc", "threshold": 0.5, "min_size": 0, "min_distance": 4},
    "semantic": {"min_size": 0},
    "instance": {"seed_threshold": 0.5, "mask_threshold": 0.5, "min_size": 0, "min_seed_size": 4},
}


@dataclass
class Segmentation:
    """Result of :func:`to_labels` for one window.

    Attributes
    ----------
    labels : (H, W) uint32
        0 = background, objects ``1..n`` (window-local ids).
    classes : (H, W) uint8 or None
        Semantic class per pixel (semantic models), 1 inside objects (instance models),
        None for binary models. 0 wherever ``labels`` is 0.
    boundary : (H, W) float32 or None
        Boundary probability (instance models).
    """

    labels: np.ndarray
    classes: np.ndarray | None = None
    boundary: np.ndarray | None = None

    @property
    def n_objects(self) -> int:
        """Number of objects (the largest label, as ids are sequential)."""
        return int(self.labels.max()) if self.labels.size else 0


def _params(card: ModelCard) -> dict[str, Any]:
    defaults = DEFAULTS[card.task]
    unknown = set(card.postprocess) - set(defaults)
    if unknown:
        raise ModelError(
            f"model card {card.name!r}: unknown postprocess keys {sorted(unknown)}; "
            f"valid for {card.task} models: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **card.postprocess}


def sequential_table(labels: np.ndarray, min_size: int = 1) -> np.ndarray | None:
    """Lookup table renumbering the objects of ``labels`` with at least ``min_size`` pixels
    ``1..n`` in id order (``table[labels]``; every other id → 0), or None when the ids are
    not integers or too sparse for a table (max id > 4 × the pixel count).

    Examples
    --------
    >>> sequential_table(np.array([[0, 5, 5, 2]]))[np.array([[0, 5, 5, 2]])]
    array([[0, 2, 2, 1]], dtype=uint32)
    """
    if labels.dtype.kind not in "ui" or labels.size == 0 or int(labels.max()) > 4 * labels.size:
        return None
    keep = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1) >= max(min_size, 1)
    keep[0] = False
    return (np.cumsum(keep) * keep).astype(np.uint32)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the objects of fewer than ``min_size`` pixels and renumber the rest ``1..n``.

    Examples
    --------
    >>> remove_small(np.array([[1, 1, 0, 2]], np.uint32), 2)
    array([[1, 1, 0, 0]], dtype=uint32)
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.uint32)
    lut = sequential_table(labels, min_size)
    if lut is not None:  # one pass, ~9× faster than relabel_sequential
        return np.take(lut, labels)  # = lut[labels], 1.5x faster on images
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels = np.where(small[labels], 0, labels)
    out, _, _ = relabel_sequential(labels)
    return out.astype(np.uint32, copy=False)


def _seeded_watershed(elevation: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Watershed from ``seeds`` within ``mask``; mask components without a seed get their own id."""
    labels = watershed(elevation, seeds, mask=mask, connectivity=CONNECTIVITY)
    orphans = mask & (labels == 0)
    if orphans.any():
        extra = sk_label(orphans, connectivity=CONNECTIVITY)
        labels = np.where(extra > 0, extra + labels.max(), labels)
    return labels


def _binary(probs: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    fg = probs[0] > p["threshold"]
    if p["mode"] == "cc":
        labels = sk_label(fg, connectivity=CONNECTIVITY)
    elif p["mode"] == "watershed":
        distance = ndi.distance_transform_edt(fg)
        components = sk_label(fg, connectivity=CONNECTIVITY)
        peaks = peak_local_max(
            distance,
            min_distance=int(p["min_distance"]),
            labels=components,
            exclude_border=False,
        )
        marks = np.zeros(fg.shape, bool)
        marks[tuple(peaks.T)] = True
        seeds = sk_label(marks, connectivity=2)  # a plateau of maxima is one seed
        labels = _seeded_watershed(-distance, seeds, fg)
    else:
        raise ModelError(f"postprocess mode {p['mode']!r} is unknown; use 'cc' or 'watershed'")
    return remove_small(labels, int(p["min_size"]))


def _semantic(probs: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    classes = np.argmax(probs, axis=0).astype(np.uint8)
    # label() joins neighbours of equal value only: a component never mixes classes
    labels = remove_small(
        sk_label(classes, background=0, connectivity=CONNECTIVITY), int(p["min_size"])
    )
    classes[labels == 0] = 0
    return labels, classes


def _instance(probs: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    background, interior, boundary = probs[0], probs[1], probs[2]
    mask = background < p["mask_threshold"]
    seeds = sk_label((interior > p["seed_threshold"]) & mask, connectivity=CONNECTIVITY)
    seeds = remove_small(seeds, int(p["min_seed_size"]))
    labels = _seeded_watershed(boundary - interior, seeds, mask)
    labels = remove_small(labels, int(p["min_size"]))
    return labels, (labels > 0).astype(np.uint8)


def to_labels(probs: np.ndarray, card: ModelCard) -> Segmentation:
    """Turn a window's probabilities into labels, as ``card.task`` and ``card.postprocess`` say.

    Parameters
    ----------
    probs : (K, H, W) float ndarray
        Output of the model for one window (:func:`segpipe.predict.predict_window`).
    card : ModelCard
        ``task`` picks the method; ``postprocess`` overrides :data:`DEFAULTS`:

        * binary — ``threshold`` on channel 0, then ``mode="cc"`` (connected components) or
          ``mode="watershed"`` (distance-transform watershed from ``peak_local_max`` seeds
          at least ``min_distance`` px apart);
        * semantic — argmax class map; objects = connected components of each class;
        * instance (background / interior / boundary) — seeds = components of
          ``interior > seed_threshold`` (at least ``min_seed_size`` px), mask =
          ``background < mask_threshold``, watershed on ``boundary - interior`` within the mask.

        All remove objects under ``min_size`` px (keep it ≤ halo, see the module docstring).

    Returns
    -------
    Segmentation

    Examples
    --------
    >>> from segpipe.models import BUILTIN_CARDS
    >>> probs = np.zeros((1, 4, 6), np.float32); probs[0, 1:3, 1:3] = probs[0, 1:3, 4:] = 0.9
    >>> to_labels(probs, BUILTIN_CARDS["classical"]).labels.max()
    np.uint32(2)
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != card.n_outputs:
        raise ModelError(
            f"to_labels: model {card.name!r} gives ({card.n_outputs}, H, W) probabilities, "
            f"got shape {probs.shape}"
        )
    p = _params(card)
    if card.task == "binary":
        return Segmentation(labels=_binary(probs, p))
    if card.task == "semantic":
        labels, classes = _semantic(probs, p)
        return Segmentation(labels=labels, classes=classes)
    labels, classes = _instance(probs, p)
    return Segmentation(labels=labels, classes=classes, boundary=probs[2].astype(np.float32))
