"""Block grid and halo geometry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segpipe.errors import ConfigError
from segpipe.tiling import BlockGrid

sizes = st.integers(min_value=1, max_value=61)


@settings(max_examples=60, deadline=None)
@given(sy=sizes, sx=sizes, by=st.integers(1, 17), bx=st.integers(1, 17), halo=st.integers(0, 9))
def test_cores_cover_image_exactly_once(sy: int, sx: int, by: int, bx: int, halo: int) -> None:
    grid = BlockGrid((sy, sx), (by, bx), halo)
    cover = np.zeros((sy, sx), np.int32)
    for b in grid.blocks():
        y0, x0, y1, x1 = grid.core(b)
        assert y1 > y0 and x1 > x0
        cover[y0:y1, x0:x1] += 1
        wy0, wx0, wy1, wx1 = grid.window(b)
        # the window is the core grown by the halo and clipped to the image
        assert (wy0, wx0) == (max(y0 - halo, 0), max(x0 - halo, 0))
        assert (wy1, wx1) == (min(y1 + halo, sy), min(x1 + halo, sx))
        sl = grid.core_in_window(b)
        window = np.arange(sy * sx).reshape(sy, sx)[wy0:wy1, wx0:wx1]
        np.testing.assert_array_equal(window[sl], np.arange(sy * sx).reshape(sy, sx)[y0:y1, x0:x1])
        assert grid.block_of(y0, x0) == b and grid.block_of(y1 - 1, x1 - 1) == b
    assert (cover == 1).all()
    assert grid.n_blocks == len(list(grid.blocks()))


def test_neighbours_are_the_8_neighbourhood() -> None:
    grid = BlockGrid((10, 14), (5, 7), 2)  # dask-image's 10×14 in 5×7 chunks: a 2×2 grid
    assert grid.grid_shape == (2, 2)
    assert sorted(grid.neighbours((0, 0))) == [(0, 1), (1, 0), (1, 1)]
    big = BlockGrid((30, 30), 10, 1)
    assert len(big.neighbours((1, 1))) == 8
    assert len(big.neighbours((0, 1))) == 5
    assert big.raster_index((2, 1)) == 7


@pytest.mark.parametrize(
    "kwargs",
    [dict(shape=(0, 5), block=4), dict(shape=(5, 5), block=0), dict(shape=(5, 5), block=2, halo=-1)],
)
def test_invalid_grid_raises_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        BlockGrid(**kwargs)


def test_unknown_block_raises() -> None:
    with pytest.raises(ConfigError, match="outside"):
        BlockGrid((10, 10), 5).core((2, 0))


@settings(max_examples=60, deadline=None)
@given(
    ny=st.integers(1, 300),
    nx=st.integers(1, 300),
    oy=st.integers(0, 200),
    ox=st.integers(0, 200),
    cell=st.sampled_from([16, 32, 64]),
    context=st.integers(0, 40),
    density=st.floats(0.0, 0.02),
    seed=st.integers(0, 1000),
)
def test_cover_cells_covers_the_mask_with_disjoint_whole_cells(
    ny: int, nx: int, oy: int, ox: int, cell: int, context: int, density: float, seed: int
) -> None:
    from segpipe.tiling import cover_cells

    rng = np.random.default_rng(seed)
    mask = rng.random((ny, nx)) < density
    rects = cover_cells(mask, (oy, ox), cell, context)
    cover = np.zeros((ny, nx), np.int32)
    for y0, x0, y1, x1 in rects:
        assert 0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx
        # edges fall on the image-anchored cell grid or on the window's edges
        assert all((v + o) % cell == 0 or v in (0, n) for v, o, n in
                   ((y0, oy, ny), (y1, oy, ny), (x0, ox, nx), (x1, ox, nx)))  # fmt: skip
        cover[y0:y1, x0:x1] += 1
    assert cover.max(initial=0) <= 1  # disjoint
    assert (cover[mask] == 1).all()  # every mask pixel is covered
    if not mask.any():
        assert rects == []


def test_cover_cells_keeps_far_apart_groups_apart_and_a_full_mask_whole() -> None:
    from segpipe.tiling import cover_cells

    mask = np.zeros((512, 512), bool)
    mask[10:20, 10:20] = mask[400:500, 300:320] = True
    assert cover_cells(mask, (0, 0), 64, 32) == [(0, 0, 64, 64), (384, 256, 512, 320)]
    # the same cells seen from a window that starts elsewhere in the image
    assert cover_cells(mask[5:, 7:], (5, 7), 64, 32) == [(0, 0, 59, 57), (379, 249, 507, 313)]
    assert cover_cells(np.ones((300, 200), bool), (48, 16), 64, 32) == [(0, 0, 300, 200)]
    # two nearby groups: predicting their gap once is cheaper than two contexts
    near = np.zeros((256, 256), bool)
    near[0:10, 0:10] = near[0:10, 70:80] = True
    assert cover_cells(near, (0, 0), 64, 64) == [(0, 0, 64, 128)]
    with pytest.raises(ConfigError, match="cell"):
        cover_cells(mask, (0, 0), 0, 8)
