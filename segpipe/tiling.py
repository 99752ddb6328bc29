"""Block grid and halo geometry over the (Y, X) plane of a large image.

A *block* is the unit of distributed work (a shard of level 0 when the image is sharded,
else a chunk). Its **core** is the set of pixels the block owns: the cores of all blocks
tile the image exactly once. Its **window** is the core expanded by a **halo** on each
side and clipped to the image; a block's task reads and segments the whole window but
writes only the core.

Why the halo is as large as it is
---------------------------------
Two different reasons set a lower bound, and the halo must satisfy both:

1. **Receptive field.** A convolutional model (or a Gaussian pre-filter) looks at a
   neighbourhood of each pixel. If the halo is at least the model card's ``halo`` (the
   receptive-field radius the model needs at its own resolution, converted to level-0
   pixels), every *core* pixel is predicted from exactly the context it would see in the
   whole image, so the probabilities in the core equal the whole-image probabilities.
   Stitching also compares each core edge pixel with its neighbour one pixel *outside*
   the core, so one more pixel is needed: ``halo >= card.halo + 1``.
2. **Object size.** Instance post-processing (seeded watershed, distance transforms,
   size filters) is *not* local: whether two touching nuclei are split, and where, depends
   on the whole object. A window reproduces the whole-image decision for an object only
   when the window contains the entire object, i.e. when the halo is at least the largest
   object diameter that must be reproduced exactly. Objects larger than the halo are still
   stitched into one id across block borders by :mod:`segpipe.stitch`, but their internal
   splits may differ from a whole-image run. For pointwise models followed by connected
   components (the ``classical`` model) any halo satisfying (1) is exact.

The grid is aligned to the image origin, so block ``(by, bx)`` has core
``[by*block_y, min((by+1)*block_y, Y)) x [bx*block_x, min((bx+1)*block_x, X))``; the last
row/column of blocks may be smaller.

Examples
--------
>>> grid = BlockGrid(shape=(10, 14), block=(5, 7), halo=2)
>>> grid.grid_shape
(2, 2)
>>> grid.core((1, 1))
(5, 7, 10, 14)
>>> grid.window((1, 1))
(3, 5, 10, 14)
>>> grid.core_in_window((1, 1))
(slice(2, 7, None), slice(2, 9, None))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from segpipe.errors import ConfigError

__all__ = ["BlockGrid", "Region", "NEIGHBOUR_OFFSETS", "cell_mask", "cover_cells"]

Region = tuple[int, int, int, int]
"""A half-open rectangle ``(y0, x0, y1, x1)`` in level-0 pixels."""

NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1),
    (0, -1),           (0, 1),
    (1, -1),  (1, 0),  (1, 1),
)  # fmt: skip
"""The 8-neighbourhood of a block in raster order (faces and corners)."""


@dataclass(frozen=True)
class BlockGrid:
    """A grid of blocks with a halo over an image of ``shape`` (Y, X).

    Parameters
    ----------
    shape : (int, int)
        Image size (Y, X) in pixels, both >= 1.
    block : int or (int, int)
        Core size of a block (by, bx) in pixels, both >= 1.
    halo : int
        Context added on every side of a block's core (>= 0, pixels). See the module
        docstring for why it must be at least ``card.halo + 1`` and at least the size of
        the largest object whose segmentation must be reproduced exactly.
    """

    shape: tuple[int, int]
    block: tuple[int, int]
    halo: int = 0

    def __init__(self, shape: tuple[int, int], block: int | tuple[int, int], halo: int = 0):
        if isinstance(block, int):
            block = (block, block)
        shape = (int(shape[0]), int(shape[1]))
        block = (int(block[0]), int(block[1]))
        if len(shape) != 2 or min(shape) < 1:
            raise ConfigError(f"shape={shape}: an image needs at least one pixel on each axis")
        if min(block) < 1:
            raise ConfigError(f"block={block}: a block needs at least one pixel on each axis")
        if int(halo) < 0:
            raise ConfigError(f"halo={halo}: the halo cannot be negative; use 0 or more pixels")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "halo", int(halo))

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Number of blocks along (Y, X)."""
        return (-(-self.shape[0] // self.block[0]), -(-self.shape[1] // self.block[1]))

    @property
    def n_blocks(self) -> int:
        """Total number of blocks."""
        gy, gx = self.grid_shape
        return gy * gx

    def blocks(self) -> Iterator[tuple[int, int]]:
        """Yield every block index ``(by, bx)`` in raster order."""
        gy, gx = self.grid_shape
        for by in range(gy):
            for bx in range(gx):
                yield (by, bx)

    def raster_index(self, index: tuple[int, int]) -> int:
        """Position of block ``index`` in raster order."""
        self._check(index)
        return index[0] * self.grid_shape[1] + index[1]

    def contains(self, index: tuple[int, int]) -> bool:
        """Whether ``index`` names a block of this grid."""
        gy, gx = self.grid_shape
        return 0 <= index[0] < gy and 0 <= index[1] < gx

    def core(self, index: tuple[int, int]) -> Region:
        """The pixels block ``index`` owns, ``(y0, x0, y1, x1)``."""
        self._check(index)
        by, bx = index
        y0, x0 = by * self.block[0], bx * self.block[1]
        return (y0, x0, min(y0 + self.block[0], self.shape[0]), min(x0 + self.block[1], self.shape[1]))

    def window(self, index: tuple[int, int], halo: int | None = None) -> Region:
        """The core of block ``index`` expanded by ``halo`` (default: the grid's), clipped."""
        h = self.halo if halo is None else int(halo)
        y0, x0, y1, x1 = self.core(index)
        return (max(y0 - h, 0), max(x0 - h, 0), min(y1 + h, self.shape[0]), min(x1 + h, self.shape[1]))

    def core_in_window(
        self, index: tuple[int, int], halo: int | None = None
    ) -> tuple[slice, slice]:
        """Slices that cut the core of block ``index`` out of its window."""
        cy0, cx0, cy1, cx1 = self.core(index)
        wy0, wx0, _, _ = self.window(index, halo)
        return (slice(cy0 - wy0, cy1 - wy0), slice(cx0 - wx0, cx1 - wx0))

    def neighbours(self, index: tuple[int, int]) -> list[tuple[int, int]]:
        """Indices of the (up to 8) blocks sharing a face or a corner with ``index``."""
        self._check(index)
        out = []
        for dy, dx in NEIGHBOUR_OFFSETS:
            n = (index[0] + dy, index[1] + dx)
            if self.contains(n):
                out.append(n)
        return out

    def block_of(self, y: int, x: int) -> tuple[int, int]:
        """The block whose core holds pixel ``(y, x)``."""
        if not (0 <= y < self.shape[0] and 0 <= x < self.shape[1]):
            raise ConfigError(f"pixel ({y}, {x}) lies outside the image of shape {self.shape}")
        return (y // self.block[0], x // self.block[1])

    def _check(self, index: tuple[int, int]) -> None:
        if not self.contains(index):
            raise ConfigError(
                f"block {tuple(index)} is outside the {self.grid_shape} block grid; "
                "use an index from BlockGrid.blocks()"
            )


def _active_cells(
    mask: np.ndarray, origin: Sequence[int], cell: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell edges of a window (rows, columns; first and last cells clipped to the window)
    on the image-anchored ``cell``-px grid, and which cells hold a True pixel of ``mask``."""
    ny, nx = mask.shape
    oy, ox = (int(v) for v in origin)
    ey = np.unique(np.clip(np.arange(oy // cell * cell, oy + ny + cell, cell) - oy, 0, ny))
    ex = np.unique(np.clip(np.arange(ox // cell * cell, ox + nx + cell, cell) - ox, 0, nx))
    rows = np.logical_or.reduceat(mask, ey[:-1], axis=0)
    return ey, ex, np.logical_or.reduceat(rows, ex[:-1], axis=1)


def cell_mask(mask: np.ndarray, origin: Sequence[int] = (0, 0), cell: int = 128) -> np.ndarray:
    """The pixels of a window whose cell (image-anchored grid, as :func:`cover_cells`)
    holds a True pixel of ``mask``.

    Examples
    --------
    >>> m = np.zeros((6, 6), bool); m[1, 4] = True
    >>> cell_mask(m, origin=(0, 2), cell=4).astype(int)[:2]
    array([[0, 0, 1, 1, 1, 1],
           [0, 0, 1, 1, 1, 1]])
    """
    m = np.asarray(mask, bool)
    if m.ndim != 2 or cell < 1:
        raise ConfigError(f"cell_mask: mask must be 2-D (got {m.shape}) and cell >= 1 (got {cell})")
    if m.size == 0:
        return m.copy()
    ey, ex, active = _active_cells(m, origin, cell)
    return active.repeat(np.diff(ey), axis=0).repeat(np.diff(ex), axis=1)


def cover_cells(
    mask: np.ndarray,
    origin: Sequence[int] = (0, 0),
    cell: int = 128,
    context: int = 0,
    overhead: int | None = None,
) -> list[Region]:
    """Few rectangles of whole grid cells that cover every True pixel of a window's mask.

    The cells are the ``cell``-px squares of a grid anchored at the *image* origin (so
    windows of one image agree on them), clipped to the window. Each rectangle will be
    predicted with ``context`` px around it (clipped to the window), so the cover minimises
    the predicted pixels, ``sum((h + 2 context) (w + 2 context)) + overhead`` per rectangle,
    over guillotine partitions of the cell grid (exact dynamic programme; a window of
    1152 px and 128-px cells has 10 × 10 cells). A full mask gives the whole window.

    Parameters
    ----------
    mask : (Y, X) bool ndarray
        Pixels of the window that must be covered.
    origin : (y, x)
        Position of ``mask[0, 0]`` in the image.
    cell : int
        Cell side (px, >= 1).
    context : int
        Pixels added around each rectangle when it is predicted (>= 0).
    overhead : int, optional
        Fixed cost of one more rectangle, in pixels (default ``cell ** 2``): fewer, larger
        passes run more efficiently than many small ones.

    Returns
    -------
    list of (y0, x0, y1, x1)
        Disjoint rectangles in window coordinates, row-major; empty for an empty mask.

    Examples
    --------
    >>> m = np.zeros((256, 256), bool); m[10, 10] = m[200, 250] = True
    >>> cover_cells(m, cell=64, context=16)
    [(0, 0, 64, 64), (192, 192, 256, 256)]
    >>> cover_cells(np.ones((100, 90), bool), origin=(30, 0), cell=64, context=16)
    [(0, 0, 100, 90)]
    """
    m = np.asarray(mask, bool)
    if m.ndim != 2 or cell < 1 or context < 0:
        raise ConfigError(
            f"cover_cells: mask must be 2-D (got {m.shape}), cell >= 1 (got {cell}), "
            f"context >= 0 (got {context})"
        )
    ny, nx = m.shape
    if not m.any():
        return []
    ey, ex, active = _active_cells(m, origin, cell)
    # plain Python ints from here on: the programme visits each sub-grid many times
    counts = np.pad(active.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0))).tolist()
    edge_y, edge_x = ey.tolist(), ex.tolist()
    extra = cell * cell if overhead is None else int(overhead)

    def count(r0: int, r1: int, c0: int, c1: int) -> int:
        return counts[r1][c1] - counts[r0][c1] - counts[r1][c0] + counts[r0][c0]

    @cache
    def trim(r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int] | None:
        if count(r0, r1, c0, c1) == 0:
            return None
        while count(r0, r0 + 1, c0, c1) == 0:
            r0 += 1
        while count(r1 - 1, r1, c0, c1) == 0:
            r1 -= 1
        while count(r0, r1, c0, c0 + 1) == 0:
            c0 += 1
        while count(r0, r1, c1 - 1, c1) == 0:
            c1 -= 1
        return r0, r1, c0, c1

    def area(r0: int, r1: int, c0: int, c1: int) -> int:
        h = min(edge_y[r1] + context, ny) - max(edge_y[r0] - context, 0)
        w = min(edge_x[c1] + context, nx) - max(edge_x[c0] - context, 0)
        return h * w + extra

    @cache
    def best(r0: int, r1: int, c0: int, c1: int) -> tuple[int, tuple[tuple[int, ...], ...]]:
        cost, parts = area(r0, r1, c0, c1), ((r0, r1, c0, c1),)
        rows = [((r0, r, c0, c1), (r, r1, c0, c1)) for r in range(r0 + 1, r1)]
        cols = [((r0, r1, c0, c), (r0, r1, c, c1)) for c in range(c0 + 1, c1)]
        for first, second in rows + cols:  # every guillotine cut, horizontal then vertical
            a, b = trim(*first), trim(*second)
            if a is not None and b is not None:
                (ca, pa), (cb, pb) = best(*a), best(*b)
                if ca + cb < cost:
                    cost, parts = ca + cb, pa + pb
        return cost, parts

    start = trim(0, active.shape[0], 0, active.shape[1])
    assert start is not None
    _, parts = best(*start)
    return sorted((edge_y[r0], edge_x[c0], edge_y[r1], edge_x[c1]) for r0, r1, c0, c1 in parts)
