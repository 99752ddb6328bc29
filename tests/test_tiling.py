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
