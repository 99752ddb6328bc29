"""TIFF pages read segment by segment (``_read_segments``) equal tifffile's own decode.

The direct path skips zarr's indexing; here every layout it accepts is compared with the
``aszarr`` path and with ``TiffPage.asarray`` over odd regions that cut tiles and strips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from segpipe.errors import ImageReadError
from segpipe.io import open_image

REGIONS = [(0, 0, 1, 1), (5, 7, 70, 51), (31, 33, 97, 120), (0, 0, 97, 120), (96, 119, 97, 120)]


def _image(shape: tuple[int, ...], dtype: Any, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


LAYOUTS: dict[str, tuple[tuple[int, ...], Any, dict[str, Any]]] = {
    "tiled-grey-zlib": ((97, 120), np.uint8, {"tile": (32, 48), "compression": "zlib"}),
    "tiled-u16-predictor": (
        (97, 120),
        np.uint16,
        {"tile": (16, 16), "compression": "zlib", "predictor": True},
    ),
    "tiled-rgb": ((97, 120, 3), np.uint8, {"tile": (32, 32), "photometric": "rgb"}),
    "tiled-planar": (
        (3, 97, 120),
        np.uint16,
        {"tile": (32, 32), "photometric": "rgb", "planarconfig": "separate"},
    ),
    "tiled-float": ((97, 120), np.float32, {"tile": (64, 64), "compression": "zlib"}),
    "strips-7": ((97, 120), np.uint16, {"rowsperstrip": 7, "compression": "zlib"}),
    "strips-rgb-one": ((97, 120, 3), np.uint8, {"photometric": "rgb", "rowsperstrip": 1000}),
    "strips-planar": (
        (3, 97, 120),
        np.uint8,
        {"photometric": "rgb", "planarconfig": "separate", "rowsperstrip": 10},
    ),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    shape, dtype, kwargs = LAYOUTS[request.param]
    data = _image(shape, dtype, seed=len(request.param))
    path = tmp_path_factory.mktemp("seg") / f"{request.param}.tif"
    tifffile.imwrite(path, data, metadata=None, **kwargs)
    if data.ndim == 2:
        ref = data[np.newaxis]
    elif kwargs.get("planarconfig") == "separate":
        ref = data
    else:
        ref = np.moveaxis(data, -1, 0)
    return str(path), ref


def test_direct_path_equals_reference_and_aszarr(layout: tuple[str, np.ndarray]) -> None:
    path, ref = layout
    with open_image(path) as direct, open_image(path) as generic:
        level = direct._levels[0]  # type: ignore[attr-defined]
        assert level._page is not None, "layout should take the direct path"
        generic._levels[0]._page = None  # type: ignore[attr-defined]
        for y0, x0, y1, x1 in REGIONS:
            got = direct.read_region(0, y0, x0, y1, x1)
            np.testing.assert_array_equal(got, ref[:, y0:y1, x0:x1], err_msg=f"{y0, x0, y1, x1}")
            np.testing.assert_array_equal(got, generic.read_region(0, y0, x0, y1, x1))


def test_missing_tiles_read_as_nodata(tmp_path: Path) -> None:
    path = tmp_path / "sparse.tif"

    def tiles() -> Any:
        for i in range(6):
            yield None if i in (1, 4) else np.full((16, 16), 10 * (i + 1), np.uint8)

    tifffile.imwrite(path, tiles(), shape=(32, 40), dtype=np.uint8, tile=(16, 16))
    want = tifffile.imread(path)
    with open_image(str(path)) as src:
        assert src._levels[0]._page is not None  # type: ignore[attr-defined]
        np.testing.assert_array_equal(src.read_region(0, 0, 0, 32, 40)[0], want)
        np.testing.assert_array_equal(src.read_region(0, 3, 17, 29, 33)[0], want[3:29, 17:33])
    assert (want[:16, 16:32] == 0).all() and (want[16:, 16:32] == 0).all()


def test_multi_page_levels_use_aszarr(tmp_path: Path) -> None:
    """A level spread over pages (OME-TIFF planes) keeps the generic path, same pixels."""
    path = tmp_path / "planes.ome.tif"
    data = _image((2, 40, 50), np.uint16)
    tifffile.imwrite(path, data, tile=(16, 16), metadata={"axes": "CYX"})
    with open_image(str(path)) as src:
        assert src._levels[0]._page is None  # type: ignore[attr-defined]
        np.testing.assert_array_equal(src.read_region(0, 3, 5, 37, 44), data[:, 3:37, 5:44])


def test_corrupt_tile_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, _image((64, 64), np.uint8), tile=(32, 32), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[3]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    with open_image(str(path)) as src:
        np.testing.assert_array_equal(src.read_region(0, 0, 0, 32, 64).shape, (1, 32, 64))
        with pytest.raises(ImageReadError, match=r"corrupt\.tif.*region y 30:40") as info:
            src.read_region(0, 30, 30, 40, 40)
    assert "\n" not in str(info.value)


def test_edge_tiles_decoded_once_across_neighbouring_regions(tmp_path: Path) -> None:
    path = tmp_path / "unaligned.tif"
    data = _image((97, 120), np.uint16, seed=4)
    tifffile.imwrite(path, data, tile=(32, 48), compression="zlib")
    quadrants = [(0, 0, 50, 60), (0, 60, 50, 120), (50, 0, 97, 60), (50, 60, 97, 120)]
    with open_image(str(path)) as src:
        page = src._levels[0]._page  # type: ignore[attr-defined]
        decode = page.decode
        calls: list[int] = []

        def counting(data: Any, index: int, **kwargs: Any) -> Any:
            calls.append(index)
            return decode(data, index, **kwargs)

        page.__dict__["decode"] = counting  # TiffPage.decode is a cached property
        for y0, x0, y1, x1 in quadrants:
            np.testing.assert_array_equal(src.read_region(0, y0, x0, y1, x1)[0], data[y0:y1, x0:x1])
    assert sorted(calls) == list(range(12))  # 4 x 3 tiles, each decoded once (20 without)
