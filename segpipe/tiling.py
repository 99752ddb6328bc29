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

from collections.abc import Iterator
from dataclasses import dataclass

from segpipe.errors import ConfigError

__all__ = ["BlockGrid", "Region", "NEIGHBOUR_OFFSETS"]

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
