"""Blocks and cells of a level-0 grid that a tissue mask touches (private; see
:mod:`segpipe.tissue`)."""

from __future__ import annotations

import numpy as np

from segpipe.errors import ConfigError
from segpipe.tissue._mask import _work_mask


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
