"""Otsu thresholds, percentiles and small-component clean-up of tissue masks (private; see
:mod:`segpipe.tissue`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def otsu_separation(values: np.ndarray) -> tuple[float, float]:
    """Otsu threshold of ``values`` and its effectiveness η = σ²_between / σ²_total in [0, 1].

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> two = np.concatenate([rng.normal(0, 1, 1000), rng.normal(10, 1, 1000)])
    >>> round(otsu_separation(two)[1], 2) > 0.9
    True
    """
    threshold, separation, _, _ = _otsu_split(values)
    return threshold, separation


def _otsu_split(values: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """:func:`otsu_separation` and the two classes: the values ≤ / > the threshold, in
    order (with the mean as threshold when the values are constant)."""
    v = np.asarray(values, np.float64).ravel()
    total = float(v.var())
    if v.size < 2 or total <= 1e-12:
        t = float(v.mean()) if v.size else 0.0
        return t, 0.0, v[v <= t], v[v > t]
    t = float(_threshold_otsu(v))
    below = v <= t
    low = v[below]
    high = v[np.logical_not(below, out=below)]  # no NaN here: the histogram would have raised
    if low.size == 0 or high.size == 0:
        return t, 0.0, low, high
    w0, w1 = low.size / v.size, high.size / v.size
    between = w0 * w1 * (float(low.mean()) - float(high.mean())) ** 2
    return t, float(between / total), low, high


def _threshold_otsu(v: np.ndarray, nbins: int = 256) -> np.floating:
    """``skimage.filters.threshold_otsu`` of a 1-D float64 array that is not constant: the
    same arithmetic, without its input checks and copies.

    >>> from skimage.filters import threshold_otsu
    >>> v = np.random.default_rng(1).random(1000) ** 3
    >>> bool(_threshold_otsu(v) == threshold_otsu(v))
    True
    """
    counts, edges = np.histogram(v, bins=nbins)
    counts = counts.astype(np.float32)
    centers = (edges[:-1] + edges[1:]) / 2.0
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return centers[np.argmax(variance12)]


def _tight_ratio(low: np.ndarray, high: np.ndarray) -> float:
    """Gap between the two class means over the spread of the tighter class.

    Glass is a tight class next to a broad tissue class: Otsu's effectiveness can stay
    modest (the tissue class is wide) while the gap is many glass standard deviations.
    """
    if low.size < 2 or high.size < 2:
        return 0.0
    spread = min(float(low.std()), float(high.std()))
    return float(high.mean() - low.mean()) / max(spread, 1e-9)


def _remove_small_objects(mask: np.ndarray, size: int) -> np.ndarray:
    """``skimage.morphology.remove_small_objects(mask, max_size=size)`` (4-connected
    components of at most ``size`` pixels dropped), by one ``ndi.label`` and a bincount."""
    if size <= 0:
        return mask.copy()
    parts, n = ndi.label(mask, output=np.intp)
    if n == 1:  # one component (often the background of a tissue mask): no bincount
        return mask.copy() if np.count_nonzero(mask) > size else np.zeros_like(mask)
    small = np.bincount(parts.ravel(), minlength=n + 1) <= size
    small[0] = False
    if not small.any():
        return mask.copy()
    return mask & ~small[parts]


def _remove_small_holes(mask: np.ndarray, size: int) -> np.ndarray:
    """``skimage.morphology.remove_small_holes(mask, max_size=size)``: 4-connected
    background components of at most ``size`` pixels (at the border too) filled."""
    return ~_remove_small_objects(~mask, size)


def _percentiles(
    channel: np.ndarray, levels: np.ndarray | None, divisor: int
) -> tuple[float, float]:
    """``np.percentile(channel, (0.5, 99.5))``; with ``levels`` (unsigned integers such
    that ``channel == levels.astype(float32) / divisor``, divisor 1: no division) by a
    counting sort instead of a partition: the two order statistics around each percentile,
    interpolated by ``np.quantile`` itself (``np.quantile([a, b], g)`` is numpy's
    interpolation between ``a`` and ``b`` with weight ``g``)."""
    n = channel.size
    if levels is None or n < 3:
        lo, hi = np.percentile(channel, (0.5, 99.5))
        return lo, hi
    counts = np.bincount(levels.ravel())
    values = np.arange(counts.size).astype(np.float32)
    if divisor != 1:
        values = values / divisor
    ends = np.cumsum(counts)  # sorted positions [ends[k - 1], ends[k]) hold values[k]
    virtual = (n - 1) * np.true_divide(np.array([0.5, 99.5]), 100)
    below = np.floor(virtual)
    gamma = virtual - below
    at = np.searchsorted(ends, np.stack([below, below + 1]).astype(np.intp), side="right")
    lo, hi = (
        np.quantile(np.array([values[at[0, i]], values[at[1, i]]], np.float32), gamma[i])
        for i in range(2)
    )
    return lo, hi
