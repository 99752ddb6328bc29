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

from collections.abc import Sequence
from dataclasses import dataclass, fields
from math import sqrt

import numpy as np

from segpipe.errors import ConfigError

__all__ = ["Partial", "partial_stats", "merge_partials", "finalize", "regions_table", "COLUMNS"]

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

# skimage.measure.perimeter (neighbourhood 4): weights of the 3×3 code of a border pixel.
_PERIMETER_WEIGHTS = np.zeros(50, np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + sqrt(2)) / 2


@dataclass(frozen=True)
class Partial:
    """Mergeable statistics of the labels seen by one or more blocks (rows sorted by label).

    Coordinates are level-0 pixels; ``m2_*`` are centred sums of squares / products
    (``Σ (y - mean_y)²`` …), ``m2_v`` the centred sum of squares of each channel.
    """

    label: np.ndarray  # uint32 (n,)
    count: np.ndarray  # int64 (n,)
    mean_y: np.ndarray  # float64 (n,)
    mean_x: np.ndarray
    m2_yy: np.ndarray
    m2_xx: np.ndarray
    m2_xy: np.ndarray
    bbox: np.ndarray  # int64 (n, 4): y0, x0, y1, x1 half-open
    mean_v: np.ndarray  # float64 (n, C)
    m2_v: np.ndarray
    min_v: np.ndarray
    max_v: np.ndarray
    perimeter: np.ndarray  # float64 (n,)
    class_counts: np.ndarray  # int64 (n, K); K = 0 without a class map

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def n_channels(self) -> int:
        """Number of intensity channels."""
        return int(self.mean_v.shape[1])

    def relabel(self, new_labels: np.ndarray) -> Partial:
        """The same rows under new labels (rows sharing a label are merged)."""
        moved = Partial(**{**self._asdict(), "label": np.asarray(new_labels, np.uint32)})
        return merge_partials([moved])

    def _asdict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def empty(n_channels: int = 1, n_classes: int = 0) -> Partial:
        """A partial with no labels."""
        z1 = np.zeros(0, np.float64)
        z2 = np.zeros((0, n_channels), np.float64)
        return Partial(
            label=np.zeros(0, np.uint32), count=np.zeros(0, np.int64), mean_y=z1, mean_x=z1,
            m2_yy=z1, m2_xx=z1, m2_xy=z1, bbox=np.zeros((0, 4), np.int64), mean_v=z2,
            m2_v=z2, min_v=z2, max_v=z2, perimeter=z1,
            class_counts=np.zeros((0, n_classes), np.int64),
        )  # fmt: skip


def _group_sum(values: np.ndarray, inv: np.ndarray, n: int) -> np.ndarray:
    """Sum rows of ``values`` (1-D or 2-D) by group ``inv``."""
    if values.ndim == 1:
        return np.bincount(inv, weights=values, minlength=n)
    out = np.zeros((n, values.shape[1]), np.float64)
    for c in range(values.shape[1]):
        out[:, c] = np.bincount(inv, weights=values[:, c], minlength=n)
    return out


def _with_context(
    labels: np.ndarray, cy: tuple[int, int], cx: tuple[int, int], margin: int
) -> np.ndarray:
    """``labels[cy0 - margin : cy1 + margin, cx0 - margin : cx1 + margin]`` with zeros
    outside the array, as one C-contiguous copy (uint16 when unsigned ids allow: half the
    memory to scan)."""
    h, w = labels.shape
    y0, y1 = max(cy[0] - margin, 0), min(cy[1] + margin, h)
    x0, x1 = max(cx[0] - margin, 0), min(cx[1] + margin, w)
    window = labels[y0:y1, x0:x1]
    dtype = labels.dtype
    if dtype.kind == "u" and dtype.itemsize > 2 and int(np.max(window, initial=0)) < 2**16:
        dtype = np.dtype(np.uint16)
    out = np.zeros((cy[1] - cy[0] + 2 * margin, cx[1] - cx[0] + 2 * margin), dtype)
    oy, ox = y0 - (cy[0] - margin), x0 - (cx[0] - margin)
    out[oy : oy + y1 - y0, ox : ox + x1 - x0] = window
    return out


# the 8 neighbours of a pixel with their weight in skimage's perimeter code (4-neighbours 2,
# diagonals 10; the pixel itself adds 1)
_NEIGHBOURS = tuple(
    (dy, dx, 2 if dy == 0 or dx == 0 else 10)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dy, dx) != (0, 0)
)


def _scan(
    padded: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label runs and perimeter shares of the centre ``padded[2:-2, 2:-2]`` of a
    C-contiguous label window (overwritten: its border pixels keep their labels, the other
    pixels become 0).

    Returns ``(starts, lengths, ids, border_ids, shares)``: the flat index into ``padded``
    of the first pixel, the length and the label of every run of one nonzero label along a
    centre row (row-major); and the label and skimage 4-neighbourhood perimeter share of
    every border pixel of the centre (a label differing from a 4-neighbour, row-major);
    every other pixel's share is 0. Only the border pixels are visited pixel by pixel: a
    run starts and ends at one (or at the centre's edge).
    """
    hp, wp = padded.shape
    flat = padded.ravel()
    size, inner = flat.size, flat.size - 2 * wp
    # border pixels of rows 1 .. hp - 2 (index j = i - wp; exact on columns 1 .. wp - 2, the
    # centre and its 1-px ring): nonzero, and a 4-neighbour differs
    centre = flat[wp : wp + inner]
    scratch = np.empty(size, bool)
    right = scratch[:-1]  # right[i]: pixel i differs from pixel i + 1
    np.not_equal(flat[1:], flat[:-1], out=right)
    border = right[wp - 1 : wp - 1 + inner] | right[wp : wp + inner]
    scratch = scratch[:inner]
    border |= np.not_equal(centre, flat[:inner], out=scratch)  # the pixel above differs
    border |= np.not_equal(centre, flat[2 * wp :], out=scratch)  # the pixel below differs
    border &= np.not_equal(centre, 0, out=scratch)
    del scratch, right
    # the border pixels of the centre, row-major (the 1-px ring is kept as context)
    grid = border.reshape(hp - 2, wp)
    ring = grid[[0, -1]], grid[:, 1].copy(), grid[:, -2].copy()
    grid[[0, -1]] = False
    grid[:, :2] = False
    grid[:, -2:] = False
    at = np.flatnonzero(border)
    grid[[0, -1]], grid[:, 1], grid[:, -2] = ring
    at += wp  # index into padded
    label = flat[at]
    # runs of one label along a centre row: they start at a border pixel whose left
    # neighbour differs, or at the centre's first column, and end likewise on the right
    starts = at[flat[at - 1] != label]
    ends = at[flat[at + 1] != label]
    rows = padded[2:-2]
    first = np.flatnonzero((rows[:, 2] != 0) & (rows[:, 1] == rows[:, 2])) * wp + 2 * wp + 2
    last = np.flatnonzero((rows[:, -3] != 0) & (rows[:, -2] == rows[:, -3])) * wp + 3 * wp - 3
    if first.size:
        starts = np.sort(np.concatenate([starts, first]))
    if last.size:
        ends = np.sort(np.concatenate([ends, last]))
    ids = flat[starts]
    # labels of border pixels, 0 elsewhere (in place): a neighbour counts when it is a
    # border pixel of the same label
    border_labels = centre
    border_labels *= border
    base = at - (2 * wp + 1)  # index into border_labels of the upper-left neighbour
    edge = np.zeros(at.size, np.uint8)
    corner = np.zeros(at.size, np.uint8)
    for dy, dx, weight in _NEIGHBOURS:
        same = border_labels[(1 + dy) * wp + 1 + dx :].take(base) == label
        np.add(edge if weight == 2 else corner, same, out=edge if weight == 2 else corner)
    code = edge * np.uint8(2)
    code += corner * np.uint8(10)
    code += np.uint8(1)
    return starts, ends - starts + 1, ids, label, _PERIMETER_WEIGHTS[code]


def _index(ids: np.ndarray, more: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct ``ids`` and the index among them of each of ``ids`` and of ``more``
    (ids too): a lookup table when the ids span a small range, else a binary search."""
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo <= max(4 * ids.size, 2**16):
        present = np.zeros(hi - lo + 1, bool)
        present[ids - lo] = True
        table = np.cumsum(present, dtype=np.intp) - 1
        uniq = np.flatnonzero(present) + lo
        return uniq.astype(ids.dtype), table[ids - lo], table[more - lo]
    uniq = np.unique(ids)
    return uniq, np.searchsorted(uniq, ids), np.searchsorted(uniq, more)


def _sum_min_max(
    values: np.ndarray, inv: np.ndarray, run_inv: np.ndarray, offsets: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: the float64 sum (in row-major order), minimum and maximum of the pixel
    ``values`` (row-major, runs of one group at ``offsets``; ``inv`` and ``run_inv`` the
    group of each pixel and run)."""
    if values.dtype.kind in "ub" and values.dtype.itemsize == 1 and 64 * n <= values.size:
        # a histogram per group: float64 sums of small integers are exact in any order
        hist = np.bincount(inv * 256 + values, minlength=256 * n).reshape(n, 256)
        seen = hist != 0
        low = np.argmax(seen, axis=1)
        high = 255 - np.argmax(seen[:, ::-1], axis=1)
        return hist @ np.arange(256.0), low.astype(np.float64), high.astype(np.float64)
    v = values.astype(np.float64)
    if values.dtype.kind in "uib" and values.dtype.itemsize <= 2:
        # exact sums of integers below 2**16 (up to 2**37 pixels): by run
        total = np.bincount(run_inv, weights=np.add.reduceat(v, offsets), minlength=n)
    else:
        total = np.bincount(inv, weights=v, minlength=n)
    low, high = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(low, run_inv, np.minimum.reduceat(v, offsets))
    np.maximum.at(high, run_inv, np.maximum.reduceat(v, offsets))
    return total, low, high


def partial_stats(
    labels: np.ndarray,
    image: np.ndarray,
    origin: tuple[int, int] = (0, 0),
    classes: np.ndarray | None = None,
    *,
    core: tuple[slice, slice] | None = None,
) -> Partial:
    """Mergeable statistics of the labels of one block.

    Sums run over each label's pixels in row-major order (so that any two ways of
    measuring the same pixels give the same floats); the pixels are visited as runs of one
    label along a row, and coordinate sums, bounding boxes and extrema are taken per run.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        Label image (0 = background) of a window; ids must fit uint32.
    image : (C, H, W) or (H, W) ndarray
        Intensities of the same pixels.
    origin : (int, int)
        Level-0 ``(y, x)`` of ``labels[0, 0]``.
    classes : (H, W) integer ndarray, optional
        Class per pixel; the region's class is its most frequent one.
    core : (slice, slice), optional
        Measure only the pixels ``labels[core]``; the rest of ``labels`` is context for
        the perimeter (at least 2 px needed for exact shares). Default: everything, with
        the outside of the array treated as background.

    Returns
    -------
    Partial
    """
    labels = np.asarray(labels)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if labels.ndim != 2 or image.shape[1:] != labels.shape:
        raise ConfigError(
            f"partial_stats: labels {labels.shape} and image {image.shape} must be (H, W) and "
            "(C, H, W) over the same pixels"
        )
    if classes is not None and np.shape(classes) != labels.shape:
        raise ConfigError(f"partial_stats: classes {np.shape(classes)} must match labels {labels.shape}")
    if core is None:
        core = (slice(0, labels.shape[0]), slice(0, labels.shape[1]))
    cy, cx = (s.indices(n)[:2] for s, n in zip(core, labels.shape, strict=True))
    n_classes = 0 if classes is None else int(np.max(classes, initial=0)) + 1
    h, w = cy[1] - cy[0], cx[1] - cx[0]
    if h <= 0 or w <= 0:
        return Partial.empty(image.shape[0], n_classes)
    # the core and 2 px of context around it (perimeter shares need the 5×5 neighbourhood)
    padded = _with_context(labels.view(np.uint8) if labels.dtype == bool else labels, cy, cx, 2)
    starts, lengths, ids, border_ids, shares = _scan(padded)
    del padded
    if starts.size == 0:
        return Partial.empty(image.shape[0], n_classes)
    uniq, run_inv, border_inv = _index(ids, border_ids)
    n, wp = len(uniq), w + 4
    row = starts // wp - 2  # core coordinates of each run's first pixel
    col = starts - (row + 2) * wp - 2
    # sums of integer coordinates are exact in float64, whatever their order: by run
    count = np.bincount(run_inv, weights=lengths, minlength=n)
    my = np.bincount(run_inv, weights=row * lengths, minlength=n) / count
    sum_x = col * lengths + lengths * (lengths - 1) // 2  # x0 + (x0 + 1) + … along a run
    mx = np.bincount(run_inv, weights=sum_x, minlength=n) / count
    oy, ox = origin[0] + cy[0], origin[1] + cx[0]
    bbox = np.empty((n, 4), np.int64)
    bbox[:, :2] = np.iinfo(np.int64).max
    bbox[:, 2:] = np.iinfo(np.int64).min
    np.minimum.at(bbox[:, 0], run_inv, row)
    np.minimum.at(bbox[:, 1], run_inv, col)
    np.maximum.at(bbox[:, 2], run_inv, row)
    np.maximum.at(bbox[:, 3], run_inv, col + lengths - 1)
    bbox += np.array([oy, ox, oy + 1, ox + 1], np.int64)
    # per pixel, row-major (a run's pixels are consecutive), as the centred sums need; at
    # most three pixel-sized arrays at a time (fresh memory costs a page fault per 4 KiB,
    # as much as the arithmetic)
    offsets = np.cumsum(lengths) - lengths
    inv = np.repeat(run_inv, lengths)

    def group_sum(weights: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=weights, minlength=n)

    def along(first: np.ndarray) -> np.ndarray:
        """``first[k] + i`` at the i-th pixel of run k."""
        step = np.ones(inv.size, np.intp)
        step[offsets[1:]] = first[1:] - (first[:-1] + lengths[:-1] - 1)
        step[0] = first[0]
        return np.cumsum(step, out=step)

    dy = row - my[run_inv]  # constant along a run
    m2_yy = group_sum(np.repeat(dy * dy, lengths))
    dx = along(col).astype(np.float64)
    dx -= mx.take(inv)
    m2_xx = group_sum(dx * dx)
    dxy = np.repeat(dy, lengths)
    dxy *= dx
    m2_xy = group_sum(dxy)
    del dx, dxy
    # intensities (and classes) of every pixel, by flat index into the core
    pixel = along(row * w + col)

    def core_flat(a2d: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a2d[cy[0] : cy[1], cx[0] : cx[1]]).reshape(h * w)

    if classes is None:
        class_counts = np.zeros((n, 0), np.int64)
    else:
        key = inv * n_classes
        np.add(key, core_flat(np.asarray(classes)).take(pixel), out=key, casting="unsafe")
        class_counts = np.bincount(key, minlength=n * n_classes)
        class_counts = class_counts.reshape(n, n_classes).astype(np.int64)
        del key
    channels = [core_flat(plane).take(pixel) for plane in image]
    del pixel
    n_channels = len(channels)
    mean_v = np.empty((n, n_channels), np.float64)
    m2_v = np.empty((n, n_channels), np.float64)
    min_v = np.empty((n, n_channels), np.float64)
    max_v = np.empty((n, n_channels), np.float64)
    for c in range(n_channels):
        raw, channels[c] = channels[c], None
        mean_v[:, c], min_v[:, c], max_v[:, c] = _sum_min_max(raw, inv, run_inv, offsets, n)
        mean_v[:, c] /= count
        dv = mean_v[:, c].take(inv)
        np.subtract(raw, dv, out=dv)
        del raw
        dv *= dv
        m2_v[:, c] = group_sum(dv)
        del dv
    return Partial(
        label=uniq.astype(np.uint32),
        count=count.astype(np.int64),
        mean_y=my + oy,
        mean_x=mx + ox,
        m2_yy=m2_yy,
        m2_xx=m2_xx,
        m2_xy=m2_xy,
        bbox=bbox,
        mean_v=mean_v,
        m2_v=m2_v,
        min_v=min_v,
        max_v=max_v,
        # the core's border pixels only, summed in row-major order as the other columns
        perimeter=np.bincount(border_inv, weights=shares, minlength=n),
        class_counts=class_counts,
    )


def merge_partials(parts: Sequence[Partial]) -> Partial:
    """Reduce partials by label (associative and commutative).

    Parameters
    ----------
    parts : sequence of Partial
        Partials with the same number of channels.

    Returns
    -------
    Partial
        One row per distinct label, sorted by label.
    """
    parts = [p for p in parts if len(p)] or list(parts[:1])
    if not parts:
        return Partial.empty()
    if len({p.n_channels for p in parts}) > 1:
        raise ConfigError("merge_partials: partials have different channel counts; measure one image")
    k = max(p.class_counts.shape[1] for p in parts)
    cat = {
        f.name: np.concatenate([getattr(p, f.name) for p in parts])
        for f in fields(Partial)
        if f.name != "class_counts"
    }
    class_counts = np.concatenate(
        [np.pad(p.class_counts, ((0, 0), (0, k - p.class_counts.shape[1]))) for p in parts]
    )
    uniq, inv = np.unique(cat["label"], return_inverse=True)
    n = len(uniq)
    if n == 0:
        return Partial.empty(parts[0].n_channels, k)
    cnt = cat["count"].astype(np.float64)
    total = np.bincount(inv, weights=cnt, minlength=n)
    my = np.bincount(inv, weights=cnt * cat["mean_y"], minlength=n) / total
    mx = np.bincount(inv, weights=cnt * cat["mean_x"], minlength=n) / total
    ddy, ddx = cat["mean_y"] - my[inv], cat["mean_x"] - mx[inv]
    mv = _group_sum(cnt[:, None] * cat["mean_v"], inv, n) / total[:, None]
    ddv = cat["mean_v"] - mv[inv]
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])

    def reduce(ufunc: np.ufunc, a: np.ndarray) -> np.ndarray:
        return ufunc.reduceat(a[order], starts, axis=0)

    bbox = cat["bbox"]
    return Partial(
        label=uniq.astype(np.uint32),
        count=np.bincount(inv, weights=cnt, minlength=n).round().astype(np.int64),
        mean_y=my,
        mean_x=mx,
        m2_yy=np.bincount(inv, weights=cat["m2_yy"] + cnt * ddy * ddy, minlength=n),
        m2_xx=np.bincount(inv, weights=cat["m2_xx"] + cnt * ddx * ddx, minlength=n),
        m2_xy=np.bincount(inv, weights=cat["m2_xy"] + cnt * ddy * ddx, minlength=n),
        bbox=np.concatenate(
            [reduce(np.minimum, bbox[:, :2]), reduce(np.maximum, bbox[:, 2:])], axis=1
        ),
        mean_v=mv,
        m2_v=_group_sum(cat["m2_v"] + cnt[:, None] * ddv * ddv, inv, n),
        min_v=reduce(np.minimum, cat["min_v"]),
        max_v=reduce(np.maximum, cat["max_v"]),
        perimeter=np.bincount(inv, weights=cat["perimeter"], minlength=n),
        class_counts=reduce(np.add, class_counts),
    )


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
        µm per level-0 pixel; ``area_um2`` is NaN without it.
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
