"""Bad input → one-line errors from segpipe.errors that name the file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from segpipe.errors import ImageReadError, ImageTooLargeError, UnsupportedImageError
from segpipe.io import MAX_PIXELS, open_image


def _one_line_naming(exc: BaseException, path: Path) -> None:
    text = str(exc)
    assert "\n" not in text
    assert path.name in text


def _pyramid(tmp_path: Path, io_helpers: Any, name: str = "p.tif") -> tuple[Path, list[np.ndarray]]:
    path = tmp_path / name
    data = io_helpers.smooth_image((3, 512, 640), np.uint8)
    return path, io_helpers.write_generic_pyramid(path, data, n_levels=2)


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not found") as info:
        open_image(str(tmp_path / "nope.tif"))
    _one_line_naming(info.value, tmp_path / "nope.tif")
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty") as info:
        open_image(str(empty))
    _one_line_naming(info.value, empty)


def test_not_an_image(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tif"
    fake.write_text("this is a text file, not a TIFF\n" * 10)
    with pytest.raises(UnsupportedImageError, match="not a supported image") as info:
        open_image(str(fake))
    _one_line_naming(info.value, fake)
    assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)
    folder = tmp_path / "folder.zarr"
    folder.mkdir()
    with pytest.raises(ImageReadError) as info:
        open_image(str(folder))
    _one_line_naming(info.value, folder)


def test_truncated_header(tmp_path: Path, io_helpers: Any) -> None:
    path, _ = _pyramid(tmp_path, io_helpers)
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(ImageReadError, match="truncated or corrupt") as info:
        open_image(str(path))
    _one_line_naming(info.value, path)


def test_truncated_pixel_data_fails_at_read_time(tmp_path: Path, io_helpers: Any) -> None:
    """IFDs intact (written first by rewriting), tile data cut off: reading names the region."""
    path, levels = _pyramid(tmp_path, io_helpers)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        last = int(page.dataoffsets[-1]) + int(page.databytecounts[-1])
    raw = bytearray(path.read_bytes())
    start = int(page.dataoffsets[len(page.dataoffsets) // 2])
    raw[start:last] = b"\x00" * (last - start)  # tiles from the middle on are garbage/zeros
    path.write_bytes(bytes(raw))
    with open_image(str(path)) as src:
        np.testing.assert_array_equal(src.read_region(0, 0, 0, 64, 64), levels[0][:, :64, :64])
        with pytest.raises(ImageReadError, match="region y 384:512") as info:
            src.read_region(0, 384, 0, 512, 640)
        _one_line_naming(info.value, path)


def test_corrupt_tile_data(tmp_path: Path, io_helpers: Any) -> None:
    path, levels = _pyramid(tmp_path, io_helpers, "corrupt.tif")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = int(page.dataoffsets[7]), int(page.databytecounts[7])
        tw = (page.imagewidth + page.tilewidth - 1) // page.tilewidth
        ty, tx = divmod(7, tw)
        tile = (ty * page.tilelength, tx * page.tilewidth)
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = (
        np.random.default_rng(0).integers(0, 256, count, np.uint8).tobytes()
    )
    path.write_bytes(bytes(raw))
    with open_image(str(path)) as src:
        y, x = tile
        with pytest.raises(ImageReadError, match=f"level 0 region y {y}:{y + 10}") as info:
            src.read_region(0, y, x, y + 10, x + 10)
        _one_line_naming(info.value, path)
        # other tiles still read
        np.testing.assert_array_equal(src.read_region(0, 0, 0, 100, 100), levels[0][:, :100, :100])


def test_huge_tiff_header_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((256, 256), np.uint8), tile=(256, 256), bigtiff=True)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(1_000_000)
        tif.pages[0].tags["ImageLength"].overwrite(1_000_000)
    with pytest.raises(ImageTooLargeError, match="1000000 x 1000000") as info:
        open_image(str(path))
    _one_line_naming(info.value, path)
    assert 10**12 > MAX_PIXELS


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_huge_png_header_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 1_000_000, 1_000_000, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageTooLargeError) as info:
        open_image(str(path))
    _one_line_naming(info.value, path)


def test_corrupt_png(tmp_path: Path, io_helpers: Any) -> None:
    path = tmp_path / "bad.png"
    io_helpers.write_png(path, io_helpers.smooth_image((1, 64, 64), np.uint8))
    raw = bytearray(path.read_bytes())
    raw[60:] = b"\xff" * (len(raw) - 60)
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError) as info:
        with open_image(str(path)) as src:
            src.read_region(0, 0, 0, 64, 64)
    _one_line_naming(info.value, path)


@pytest.mark.parametrize("dtype", [np.complex64, np.int64, np.uint64])
def test_unsupported_dtype(tmp_path: Path, dtype: Any) -> None:
    path = tmp_path / f"{np.dtype(dtype).name}.tif"
    tifffile.imwrite(path, np.zeros((32, 32), dtype))
    with pytest.raises(UnsupportedImageError, match="pixel type") as info:
        open_image(str(path))
    _one_line_naming(info.value, path)


def test_float64_and_uint32_are_converted(tmp_path: Path) -> None:
    for dtype in (np.float64, np.uint32):
        path = tmp_path / f"{np.dtype(dtype).name}.tif"
        data = np.arange(32 * 32, dtype=dtype).reshape(32, 32)
        tifffile.imwrite(path, data)
        with open_image(str(path)) as src:
            assert src.dtype == np.float32
            np.testing.assert_array_equal(
                src.read_region(0, 0, 0, 32, 32)[0], data.astype(np.float32)
            )


def test_too_many_channels_and_extra_axes(tmp_path: Path) -> None:
    path = tmp_path / "many.tif"
    tifffile.imwrite(path, np.zeros((100, 16, 16), np.uint8), photometric="minisblack")
    with pytest.raises(UnsupportedImageError, match="100 channels") as info:
        open_image(str(path))
    _one_line_naming(info.value, path)
    zstack = tmp_path / "zstack.ome.tif"
    tifffile.imwrite(
        zstack, np.zeros((3, 2, 16, 16), np.uint8), ome=True, metadata={"axes": "ZCYX"}
    )
    with pytest.raises(UnsupportedImageError, match="Z plane") as info:
        open_image(str(zstack))
    _one_line_naming(info.value, zstack)


def test_zarr_group_without_multiscales(tmp_path: Path) -> None:
    import zarr

    path = tmp_path / "group.zarr"
    zarr.open_group(str(path), mode="w").create_array("x", shape=(4, 4), dtype=np.uint8)
    with pytest.raises(UnsupportedImageError, match="multiscales") as info:
        open_image(str(path))
    _one_line_naming(info.value, path)


def test_closed_source_refuses_reads(tmp_path: Path, io_helpers: Any) -> None:
    path, _ = _pyramid(tmp_path, io_helpers)
    src = open_image(str(path))
    src.close()
    with pytest.raises(ValueError, match="closed"):
        src.read_region(0, 0, 0, 1, 1)


def test_file_cut_short_fails_at_read_time(tmp_path: Path, io_helpers: Any) -> None:
    """A copy cut off inside the last level's tile data opens, and fails naming the region."""
    path, levels = _pyramid(tmp_path, io_helpers, "cut.tif")
    with tifffile.TiffFile(path) as tif:
        last_page = tif.pages[-1]
        assert int(last_page.offset) < int(last_page.dataoffsets[0])  # IFD before its data
        cut = int(last_page.dataoffsets[len(last_page.dataoffsets) // 2])
    path.write_bytes(path.read_bytes()[:cut])
    with open_image(str(path)) as src:
        np.testing.assert_array_equal(src.read_region(0, 0, 0, 512, 640), levels[0])
        with pytest.raises(ImageReadError, match="level 1 region") as info:
            src.read_region(1, 0, 0, 256, 320)
        _one_line_naming(info.value, path)
