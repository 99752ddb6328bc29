"""Pixel work of :func:`~segpipe.regions.partial_stats`: label runs, border pixels and their
perimeter shares, per-group sums (private)."""

from __future__ import annotations

from math import sqrt

import numpy as np

# skimage.measure.perimeter (neighbourhood 4): weights of the 3×3 code of a border pixel.
_PERIMETER_WEIGHTS = np.zeros(50, np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + sqrt(2)) / 2


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
