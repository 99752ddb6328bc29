"""Mergeable per-region statistics: measure blocks apart, reduce by label, never in pieces.

Each block contributes a :class:`Partial` — per label: pixel count, mean and centred
second moments of the coordinates, bounding box, per-channel intensity mean / centred
sum of squares / min / max, a perimeter share and a class histogram. Partials of any
set of blocks merge exactly (Chan et al.'s pairwise update for the centred moments, so
a slide-sized object loses no precision), associatively and commutatively; the merged
partial of all blocks is :func:`finalize`\\ d into typed columns that match
``skimage.measure.regionprops_table`` on the whole label image.

Perimeter is skimage's 4-neighbourhood ``perimeter`` split into per-pixel shares: the
share of a border pixel depends only on the labels in its 5×5 neighbourhood, so a block
measured with at least 2 pixels of label context around its core (``core=``) gives the
exact contribution of its core pixels, and shares add up across blocks. In the
distributed path the context is the block's *window* labels: the sum is exact for every
object whose pixels within 2 px of each other are connected inside one window (always,
for objects smaller than the halo); a large object that comes back within 2 px of itself
only through pixels outside the window is counted as if the two parts were distinct
(an over-estimate of at most a few pixels there).

Examples
--------
>>> import numpy as np
>>> labels = np.array([[1, 1, 0], [0, 2, 2]])
>>> image = np.arange(6, dtype=float).reshape(1, 2, 3)
>>> cols = regions_table(labels, image)
>>> cols["label"].tolist(), cols["area_px"].tolist(), cols["mean_intensity"][:, 0].tolist()
([1, 2], [2, 2], [0.5, 4.5])
"""

from __future__ import annotations

from segpipe.regions._partial import Partial, merge_partials, partial_stats
from segpipe.regions._table import COLUMNS, finalize, regions_table

__all__ = ["Partial", "partial_stats", "merge_partials", "finalize", "regions_table", "COLUMNS"]
