"""Foreground (tissue) masks from a low-resolution level, and the blocks worth processing.

The mask is computed once per image on a thumbnail (a low pyramid level, typically
≤ 1024 px a side); only full-resolution blocks that touch the mask are read and predicted
(``DESIGN.md``: chunks outside the foreground are never read at full resolution).

* brightfield (H&E, RGB): Otsu on the HSV saturation — stained tissue is coloured, glass
  is white or grey whatever the illumination;
* fluorescence: Otsu on the smoothed intensity (dark glass vs autofluorescent tissue and
  nuclei; smoothing turns dense nuclei into a continuous foreground);
* grey (industrial): Otsu on the smoothed intensity, foreground = the side the image
  border is *not* on.

The cut is moved halfway from the Otsu threshold towards the background class mean, so a
thumbnail pixel only partly covered by tissue still counts as foreground.

Industrial parts and fully covered slides usually fill the frame; Otsu then splits one
class in two. When the split is weak — Otsu's effectiveness (between-class variance over
total variance) below ``min_separation`` and, for brightfield / fluorescence, the class
means fewer than ``MIN_TIGHT_RATIO`` standard deviations of the tighter class (the glass)
apart — everything is foreground. Grey images use the effectiveness alone, so a stain on a
part that fills the frame never cuts the part.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hsv

from segpipe.errors import ConfigError

__all__ = [
    "MIN_SEPARATION",
    "WORK_SIZE",
    "tissue_mask",
    "otsu_separation",
    "select_blocks",
    "tissue_cells",
    "select_blocks_and_cells",
    "select_from_thumb",
    "block_fraction_skipped",
]

#: Otsu effectiveness below which a split is "weak" (one unimodal class): a Gaussian
#: histogram gives 2/π ≈ 0.64, a uniform one 0.75; a clear two-class image gives > 0.85.
MIN_SEPARATION = 0.78
#: Brightfield / fluorescence: a split is also strong when the class means are this many
#: standard deviations of the tighter class apart (a unimodal histogram gives ~3).
MIN_TIGHT_RATIO = 5.0
#: Long side (px) at which masks are computed; larger thumbnails are block-averaged first.
WORK_SIZE = 512
_MODALITIES = {
    "brightfield": "brightfield",
    "he": "brightfield",
    "rgb": "brightfield",
    "fluorescence": "fluorescence",
    "grey": "grey",
    "gray": "grey",
    "industrial": "grey",
}


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


def _score(
    thumb: np.ndarray, modality: str, levels: np.ndarray | None = None, divisor: int = 1
) -> np.ndarray:
    """Per-pixel foreground score (higher = more likely foreground, except grey).
    ``levels``: unsigned integers with ``thumb == levels.astype(float32) / divisor``
    (a quicker percentile)."""
    img = np.asarray(thumb, np.float32)
    if modality == "brightfield":
        if img.shape[0] >= 3:
            rgb = np.moveaxis(img[:3], 0, -1)
            rgb = rgb / max(float(rgb.max()), 1e-6)
            score = rgb2hsv(rgb)[..., 1]
        else:  # grey brightfield: dark objects on bright
            score = 1.0 - img[0] / max(float(img[0].max()), 1e-6)
        return ndi.gaussian_filter(score, 1.0)
    # fluorescence / grey: per-channel robust scaling, max over channels
    chans = []
    for i, c in enumerate(img):
        lo, hi = _percentiles(c, None if levels is None else levels[i], divisor)
        chans.append((c - lo) / max(float(hi - lo), 1e-6))
    score = chans[0] if len(chans) == 1 else np.max(chans, axis=0)
    sigma = 2.0 if modality == "fluorescence" else 1.0
    return ndi.gaussian_filter(score, sigma)


def tissue_mask(
    thumb: np.ndarray,
    modality: str,
    *,
    min_separation: float = MIN_SEPARATION,
    min_object_fraction: float = 0.001,
    max_hole_fraction: float = 0.01,
) -> np.ndarray:
    """Foreground mask of a low-resolution image.

    Parameters
    ----------
    thumb : (C, y, x) ndarray
        A low pyramid level (any dtype); C = 3 for RGB brightfield.
    modality : {"brightfield", "fluorescence", "grey"}
        As :attr:`segpipe.io.ImageSource.modality` (``"he"`` is taken as brightfield).
    min_separation : float
        Otsu effectiveness below which everything is foreground (see module docstring).
    min_object_fraction : float
        Objects smaller than this fraction of the thumbnail are removed.
    max_hole_fraction : float
        Holes smaller than this fraction of the thumbnail are filled.

    Returns
    -------
    (y, x) bool ndarray

    Examples
    --------
    >>> thumb = np.full((3, 64, 64), 240, np.uint8)
    >>> thumb[:, 16:48, 16:48] = np.array([200, 120, 180])[:, None, None]  # pink tissue
    >>> mask = tissue_mask(thumb, "brightfield")
    >>> bool(mask[32, 32]), bool(mask[2, 2])
    (True, False)
    """
    thumb = np.asarray(thumb)
    mask, f = _work_mask(thumb, modality, min_separation, min_object_fraction, max_hole_fraction)
    if f == 1:
        return mask
    y, x = thumb.shape[-2:]
    return mask.repeat(f, axis=0).repeat(f, axis=1)[:y, :x]


def _work_mask(
    thumb: np.ndarray,
    modality: str,
    min_separation: float = MIN_SEPARATION,
    min_object_fraction: float = 0.001,
    max_hole_fraction: float = 0.01,
) -> tuple[np.ndarray, int]:
    """:func:`tissue_mask` at its working resolution, and the factor ``f`` it was reduced by:
    mask pixel ``(i, j)`` covers thumbnail pixels ``[i f, (i + 1) f) × [j f, (j + 1) f)``
    (the last row / column may reach past the thumbnail's edge)."""
    if thumb.ndim == 2:
        thumb = thumb[None]
    if thumb.ndim != 3 or min(thumb.shape[1:]) < 1:
        raise ConfigError(f"thumb shape {thumb.shape}: give a (C, y, x) array")
    mode = _MODALITIES.get(modality)
    if mode is None:
        raise ConfigError(f"modality={modality!r}: use brightfield, fluorescence or grey")
    # Work at a fixed resolution (long side <= WORK_SIZE, block means): the result does not
    # depend on which pyramid level the caller passes, and dense nuclei blend into tissue.
    y, x = thumb.shape[1:]
    f = max(1, -(-max(y, x) // WORK_SIZE))
    # 8/16-bit unsigned levels (pixels, or exact block sums): quicker percentiles
    counted = thumb.dtype.kind == "u" and thumb.dtype.itemsize <= 2
    levels = thumb if counted else None
    if f > 1:
        sums = _block_sum(thumb, f)
        thumb = _block_mean(thumb, f, sums)
        levels = sums if counted else None
    mask = _mask(thumb, mode, min_separation, min_object_fraction, max_hole_fraction, levels, f * f)
    return mask, f


def _block_sum(thumb: np.ndarray, f: int) -> np.ndarray | None:
    """Exact ``f×f`` block sums of an 8/16-bit ``(C, y, x)`` thumbnail (edge-padded to a
    multiple of ``f``) as intp (unsigned input) / int32, rows first; None for other dtypes
    or when the float32 sums would not be exact."""
    if not (thumb.dtype.kind in "ui" and thumb.dtype.itemsize <= 2 and f * f * 65536 <= 2**24):
        return None
    y, x = thumb.shape[1:]
    small = np.asarray(thumb)
    if y % f or x % f:
        small = np.pad(small, ((0, 0), (0, -y % f), (0, -x % f)), mode="edge")
    signed = small.dtype.kind == "i"
    if small.dtype.itemsize == 1 and f <= 128:  # row sums of f bytes fit 16 bits
        rows = small[:, 0::f].astype(np.int16 if signed else np.uint16)
    else:
        rows = small[:, 0::f].astype(np.int32 if signed else np.uint32)
    for dy in range(1, f):
        rows += small[:, dy::f]
    c, h, px = rows.shape
    rows = rows.reshape(c, h, px // f, f)
    total = rows[..., 0].astype(np.int32 if signed else np.intp)  # intp: counted as is
    for dx in range(1, f):
        total += rows[..., dx]
    return total


def _block_mean(thumb: np.ndarray, f: int, sums: np.ndarray | None = None) -> np.ndarray:
    """``f×f`` block means of a ``(C, y, x)`` thumbnail as float32 (edge-padded to a multiple of ``f``).

    8/16-bit integers are summed exactly in integers (:func:`_block_sum`, or ``sums`` when
    given; the float32 sums of the same values are exact too, so the result is the same to
    the bit, ~5× faster); anything else is summed in float32, rows first, then columns.

    >>> _block_mean(np.arange(8, dtype=np.uint8).reshape(1, 2, 4), 2).tolist()
    [[[2.5, 4.5]]]
    """
    total = _block_sum(thumb, f) if sums is None else sums
    if total is not None:
        return total.astype(np.float32) / (f * f)
    y, x = thumb.shape[1:]
    small = np.asarray(thumb, np.float32)
    if y % f or x % f:
        small = np.pad(small, ((0, 0), (0, -y % f), (0, -x % f)), mode="edge")
    c, py, px = small.shape
    small = small.reshape(c, py // f, f, px).sum(axis=2)  # rows first, then columns
    return small.reshape(c, py // f, px // f, f).sum(axis=3) / (f * f)


def _mask(
    thumb: np.ndarray,
    mode: str,
    min_separation: float,
    min_object_fraction: float,
    max_hole_fraction: float,
    levels: np.ndarray | None = None,
    divisor: int = 1,
) -> np.ndarray:
    score = _score(thumb, mode, levels, divisor)
    threshold, separation, low, high = _otsu_split(score)
    if separation < min_separation and (
        mode == "grey" or _tight_ratio(low, high) < MIN_TIGHT_RATIO
    ):
        return np.ones(score.shape, bool)
    # Lean towards foreground: halfway between the background class mean and the Otsu
    # threshold, so thumbnail pixels only partly covered by tissue are kept.
    low_mean = float(low.mean())
    high_mean = float(high.mean())
    del low, high
    border = np.concatenate([score[0], score[-1], score[:, 0], score[:, -1]])
    bright_background = mode == "grey" and float(np.median(border)) > threshold
    if bright_background:  # grey: the background is the bright side
        mask = score < threshold + 0.5 * (high_mean - threshold)
    else:
        mask = score > threshold - 0.5 * (threshold - low_mean)
    area = mask.size
    mask = _close_disk2(mask) if min(mask.shape) > 8 else mask
    if mode == "brightfield":
        # Dust and debris on glass; in fluorescence and grey images a small bright (or, on
        # a bright part, dark) object is what we are looking for — sparse cells, pits —
        # and dropping it would skip its chunk, so only brightfield removes specks.
        mask = _remove_small_objects(mask, int(min_object_fraction * area))
    mask = _remove_small_holes(mask, int(max_hole_fraction * area))
    return mask


def _close_disk2(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_closing(mask, morphology.disk(2), border_value=0)`` by shifted slices.

    ``disk(2)`` is the 4-neighbour cross dilated by itself, so each step is two cross
    steps; with the outside counted as background in both steps this gives the same mask
    as scipy, ~20× faster on a 512² working mask (``tests/test_tissue.py`` compares them).
    """
    out = np.asarray(mask, bool)
    for grow in (True, False):
        for _ in range(2):
            out = _cross_step(out, grow)
    return out


def _cross_step(mask: np.ndarray, grow: bool) -> np.ndarray:
    """One dilation (``grow``) or erosion of ``mask`` by the 4-neighbour cross, with the
    outside of the array counted as background."""
    step = mask.copy()
    op = np.logical_or if grow else np.logical_and
    for here, there in (
        (np.s_[1:], np.s_[:-1]),  # the pixel above
        (np.s_[:-1], np.s_[1:]),  # below
        (np.s_[:, 1:], np.s_[:, :-1]),  # left
        (np.s_[:, :-1], np.s_[:, 1:]),  # right
    ):
        op(step[here], mask[there], out=step[here])
    if not grow:  # a neighbour outside the array is background
        step[[0, -1]] = False
        step[:, [0, -1]] = False
    return step


def _any_in_rows(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(len(lo), x)`` bool: any foreground in rows ``[lo[k], hi[k])`` of each column, from
    one OR over the strips between all the range ends."""
    cuts = np.unique(np.concatenate([lo, hi]))
    cuts = cuts[cuts < mask.shape[0]]
    if cuts.size == 0:
        return np.zeros((len(lo), mask.shape[1]), bool)
    strips = np.logical_or.reduceat(mask, cuts, axis=0)  # rows [cuts[k], cuts[k + 1])
    seen = np.zeros((len(cuts) + 1, mask.shape[1]), np.int32 if len(cuts) < 2**31 else np.int64)
    np.cumsum(strips, axis=0, dtype=seen.dtype, out=seen[1:])
    return seen[np.searchsorted(cuts, hi)] > seen[np.searchsorted(cuts, lo)]


def _touching(
    mask: np.ndarray,
    shape: tuple[int, int],
    size: int,
    margin: int,
    mask_px: tuple[float, float] | None = None,
) -> np.ndarray:
    """``(ceil(Y/size), ceil(X/size))`` bool: squares of a level-0 grid within ``margin`` px
    of the foreground (grown by one mask pixel). ``mask_px``: level-0 px per mask pixel
    (default: the mask covers exactly the image)."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or size <= 0 or margin < 0:
        raise ConfigError(
            f"select_blocks: mask must be 2-D (got {mask.shape}), block > 0 (got {size}) "
            f"and margin >= 0 (got {margin})"
        )
    Y, X = (int(v) for v in shape)
    my, mx = mask.shape
    py, px = mask_px or (Y / my, X / mx)  # level-0 px per mask px

    def ranges(n: int, m: int, s: float) -> tuple[np.ndarray, np.ndarray]:
        start = np.arange(0, n, size)
        end = np.minimum(start + size, n)
        lo = np.floor(np.maximum(start - margin, 0) / s).astype(np.int64)
        hi = np.minimum(np.ceil(np.minimum(end + margin, n) / s).astype(np.int64), m)
        # the mask grown by one pixel meets a range iff the mask meets it one pixel wider
        wide = lo < hi
        return np.where(wide, np.maximum(lo - 1, 0), lo), np.where(wide, np.minimum(hi + 1, m), lo)

    i0, i1 = ranges(Y, my, py)
    j0, j1 = ranges(X, mx, px)
    band = _any_in_rows(mask, i0, i1)  # per grid row and mask column
    seen = np.zeros((band.shape[0], mx + 1), np.int64)
    np.cumsum(band, axis=1, out=seen[:, 1:])
    return seen[:, j1] > seen[:, j0]


def _indices(hits: np.ndarray) -> list[tuple[int, int]]:
    """``(row, col)`` of every True entry of a 2-D grid, row-major."""
    return [(int(by), int(bx)) for by, bx in zip(*np.nonzero(hits), strict=True)]


def select_blocks(
    mask: np.ndarray, shape: tuple[int, int], block: int, margin: int = 0
) -> list[tuple[int, int]]:
    """Indices ``(by, bx)`` of the level-0 blocks that touch the foreground.

    Every mask pixel is mapped to the level-0 rectangle it covers, after growing the mask by
    one mask pixel on each side: a tissue edge that falls between two thumbnail pixels (or
    was smoothed away) still selects its block, so no block with foreground is missed.

    Parameters
    ----------
    mask : (y, x) bool ndarray
        Foreground at low resolution (covering the whole level-0 image).
    shape : (Y, X)
        Level-0 size.
    block : int
        Block (chunk or shard) size in level-0 pixels.
    margin : int
        Also select blocks within ``margin`` level-0 px of the foreground, so that an object
        sticking out of the (low-resolution) mask by up to ``margin`` px is not cut at the
        border of a skipped block. :func:`segpipe.infer.segment_image` passes its halo.

    Returns
    -------
    list of (by, bx), row-major.

    Examples
    --------
    >>> mask = np.zeros((8, 8), bool); mask[0, 0] = True
    >>> select_blocks(mask, (800, 800), 200)
    [(0, 0)]
    >>> select_blocks(mask, (800, 800), 200, margin=150)
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    """
    return _indices(_touching(mask, shape, block, margin))


def tissue_cells(
    mask: np.ndarray, shape: tuple[int, int], cell: int, margin: int = 0
) -> np.ndarray:
    """Which ``cell``-px squares of the level-0 grid need prediction.

    The same rule as :func:`select_blocks` on a finer grid: a cell is kept when it lies
    within ``margin`` level-0 px of the foreground (grown by one mask pixel). Inside a
    selected block, :func:`segpipe.predict.segment_window` predicts only the kept cells
    (with context around them); the others get background probabilities.

    Parameters
    ----------
    mask : (y, x) bool ndarray
        Foreground at low resolution (covering the whole level-0 image).
    shape : (Y, X)
        Level-0 size.
    cell : int
        Cell side in level-0 pixels (the pipeline uses :data:`segpipe.predict.MASK_CELL`).
    margin : int
        Level-0 px by which the foreground is grown: objects at the tissue edge that stick
        out of the low-resolution mask by up to ``margin`` px are predicted whole.

    Returns
    -------
    (ceil(Y / cell), ceil(X / cell)) bool ndarray

    Examples
    --------
    >>> mask = np.zeros((8, 8), bool); mask[0, 0] = True
    >>> tissue_cells(mask, (800, 800), 100).sum(), tissue_cells(mask, (800, 800), 100, 50).sum()
    (np.int64(4), np.int64(9))
    """
    return _touching(mask, shape, cell, margin)


def select_blocks_and_cells(
    mask: np.ndarray, shape: tuple[int, int], block: int, cell: int, margin: int = 0
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """:func:`select_blocks` and :func:`tissue_cells` of one mask.

    Examples
    --------
    >>> mask = np.zeros((8, 8), bool); mask[0, 0] = True
    >>> blocks, cells = select_blocks_and_cells(mask, (800, 800), 400, 100)
    >>> blocks, int(cells.sum())
    ([(0, 0)], 4)
    """
    return _indices(_touching(mask, shape, block, margin)), _touching(mask, shape, cell, margin)


def select_from_thumb(
    thumb: np.ndarray, modality: str, shape: tuple[int, int], block: int, cell: int, margin: int = 0
) -> tuple[list[tuple[int, int]], np.ndarray, float]:
    """:func:`tissue_mask` of ``thumb`` and :func:`select_blocks_and_cells` of it, worked out
    on the mask's working resolution (no thumbnail-sized copy): the blocks, the cells and
    the foreground fraction of the image.

    The mask is then grown by one *working* pixel, up to ``ceil(long side / WORK_SIZE)``
    thumbnail pixels: a little more is predicted, never less.

    Examples
    --------
    >>> thumb = np.zeros((1, 1024, 1024), np.uint8); thumb[0, 100:300, 100:300] = 200
    >>> blocks, cells, fraction = select_from_thumb(thumb, "fluorescence", (4096, 4096), 2048, 512)
    >>> blocks, int(cells.sum()), round(fraction, 3)
    ([(0, 0)], 9, 0.04)
    """
    thumb = np.asarray(thumb)
    mask, f = _work_mask(thumb, modality)
    y, x = thumb.shape[-2:]
    Y, X = (int(v) for v in shape)
    mask_px = (f * Y / y, f * X / x)
    blocks = _indices(_touching(mask, shape, block, margin, mask_px))
    cells = _touching(mask, shape, cell, margin, mask_px)
    # the thumbnail pixels each mask row / column covers (the last ones may be cut)
    wy = np.minimum(f, y - f * np.arange(mask.shape[0]))
    wx = np.minimum(f, x - f * np.arange(mask.shape[1]))
    # Σ wy[i] mask[i, j] wx[j], exactly in integers: f² per pixel, less along a cut edge
    covered = f * f * int(np.count_nonzero(mask))
    covered -= f * int(np.count_nonzero(mask[:, -1])) * (f - int(wx[-1]))
    covered -= f * int(np.count_nonzero(mask[-1])) * (f - int(wy[-1]))
    covered += int(mask[-1, -1]) * (f - int(wy[-1])) * (f - int(wx[-1]))
    fraction = covered / (y * x)
    return blocks, cells, fraction


def block_fraction_skipped(mask: np.ndarray, shape: tuple[int, int], block: int) -> float:
    """Fraction of level-0 blocks that :func:`select_blocks` leaves out."""
    Y, X = (int(v) for v in shape)
    total = (-(-Y // block)) * (-(-X // block))
    return 1.0 - len(select_blocks(mask, shape, block)) / total
