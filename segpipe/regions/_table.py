"""Merged partials as typed region columns (private; see :mod:`segpipe.regions`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segpipe.regions._partial import Partial, partial_stats

COLUMNS: dict[str, str] = {
    "image_id": "str",
    "label": "uint32",
    "class": "str",
    "area_px": "int64",
    "area_um2": "float64",
    "centroid_y": "float64",
    "centroid_x": "float64",
    "bbox_y0": "int64",
    "bbox_x0": "int64",
    "bbox_y1": "int64",
    "bbox_x1": "int64",
    "mean_intensity": "float64 (n, C)",
    "std_intensity": "float64 (n, C)",
    "min_intensity": "float64 (n, C)",
    "max_intensity": "float64 (n, C)",
    "orientation": "float64",
    "eccentricity": "float64",
    "major_axis_px": "float64",
    "minor_axis_px": "float64",
    "perimeter_px": "float64",
}
"""Column names and dtypes of :func:`finalize`; per-channel columns are 2-D ``(n, C)``."""


def finalize(
    partial: Partial,
    mpp: float | None = None,
    class_names: Sequence[str] | None = None,
    image_id: str = "",
) -> dict[str, np.ndarray]:
    """Typed region columns (see :data:`COLUMNS`) from a fully merged partial.

    Parameters
    ----------
    partial : Partial
        Statistics of every block, merged.
    mpp : float, optional
        µm per level-0 pixel; ``area_um2`` is NaN without it (null in the regions table).
    class_names : sequence of str, optional
        Names by class index (index 0 = background). Without a class map every region is
        class 1 (``class_names[1]``, or ``"object"``).
    image_id : str
        Value of the ``image_id`` column.

    Returns
    -------
    dict of str to ndarray
        One entry per :data:`COLUMNS` name; empty but typed when there are no regions.
    """
    p = partial
    n = len(p)
    cnt = p.count.astype(np.float64)
    safe = np.maximum(cnt, 1.0)
    var_y, var_x, cov = p.m2_yy / safe, p.m2_xx / safe, p.m2_xy / safe
    # skimage's inertia tensor [[a, b], [b, c]] in (row, col) order: a = var_x, c = var_y.
    a, b, c = var_x, -cov, var_y
    half_trace, root = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
    l1, l2 = np.maximum(half_trace + root, 0), np.maximum(half_trace - root, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = np.where(l1 == 0, 0.0, np.sqrt(np.clip(1 - l2 / np.where(l1 == 0, 1, l1), 0, 1)))
    orient = np.where(a - c == 0, np.where(b < 0, np.pi / 4, -np.pi / 4), 0.5 * np.arctan2(-2 * b, c - a))
    if p.class_counts.shape[1]:
        class_idx = np.argmax(p.class_counts, axis=1)
    else:
        class_idx = np.ones(n, np.int64)
    names = list(class_names) if class_names else []

    def name(i: int) -> str:
        if i < len(names):
            return str(names[i])
        return "object" if not names and i == 1 else str(i)

    std = np.sqrt(np.maximum(p.m2_v, 0) / safe[:, None])
    return {
        "image_id": np.array([image_id] * n, dtype=object),
        "label": p.label.astype(np.uint32),
        "class": np.array([name(int(i)) for i in class_idx], dtype=object),
        "area_px": p.count.astype(np.int64),
        "area_um2": p.count * (float(mpp) ** 2) if mpp else np.full(n, np.nan),
        "centroid_y": p.mean_y.astype(np.float64),
        "centroid_x": p.mean_x.astype(np.float64),
        "bbox_y0": p.bbox[:, 0].astype(np.int64),
        "bbox_x0": p.bbox[:, 1].astype(np.int64),
        "bbox_y1": p.bbox[:, 2].astype(np.int64),
        "bbox_x1": p.bbox[:, 3].astype(np.int64),
        "mean_intensity": p.mean_v.astype(np.float64),
        "std_intensity": std,
        "min_intensity": p.min_v.astype(np.float64),
        "max_intensity": p.max_v.astype(np.float64),
        "orientation": orient.astype(np.float64),
        "eccentricity": ecc.astype(np.float64),
        "major_axis_px": 4 * np.sqrt(l1),
        "minor_axis_px": 4 * np.sqrt(l2),
        "perimeter_px": p.perimeter.astype(np.float64),
    }


def regions_table(
    labels: np.ndarray,
    image: np.ndarray,
    mpp: float | None = None,
    classes: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    image_id: str = "",
) -> dict[str, np.ndarray]:
    """Region columns of one in-memory label image (the whole-image reference).

    Parameters
    ----------
    labels : (H, W) integer ndarray
    image : (C, H, W) or (H, W) ndarray
    mpp, classes, class_names, image_id
        As in :func:`partial_stats` and :func:`finalize`.

    Returns
    -------
    dict of str to ndarray, see :data:`COLUMNS`.
    """
    return finalize(partial_stats(labels, image, (0, 0), classes), mpp, class_names, image_id)
