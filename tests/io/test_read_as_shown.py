"""The same picture reads the same whatever its format: as Pillow (and viewers) show it.

EXIF orientation of JPEG / PNG applied (header shape included; a TIFF's Orientation tag is
ignored, as OpenSlide, QuPath and tifffile do), 1-bit TIFFs as 0/255, CMYK TIFFs as
RGB, alpha extra samples of grey TIFFs dropped — on whole reads, odd regions and every level
of tiled pyramids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from segpipe.io import open_image


def _shown(im: Image.Image, mode: str | None = None) -> np.ndarray:
    """What Pillow shows, channel-first ``(C, Y, X)``."""
    im = ImageOps.exif_transpose(im)
    arr = np.asarray(im.convert(mode) if mode else im)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, 2, 0)


def _read_all(path: Path, level: int = 0) -> np.ndarray:
    with open_image(str(path)) as src:
        return src.read_region(level, 0, 0, *src.level_shapes[level])


def _pyramid(path: Path, data: np.ndarray, **kw: object) -> list[np.ndarray]:
    """Tiled TIFF, level 1 (half size) in a SubIFD; returns the stored levels."""
    levels = [data, np.ascontiguousarray(data[::2, ::2])]
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(32, 32), subifds=1, metadata=None, **kw)  # type: ignore[arg-type]
        kw.pop("extratags", None)
        tw.write(levels[1], tile=(32, 32), subfiletype=1, metadata=None, **kw)  # type: ignore[arg-type]
    return levels


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(tmp_path: Path, fmt: str, orientation: int) -> None:
    """A camera photo reads as viewers show it; the header shape (level_shapes, read before
    any pixel) is the decoded one — orientations 5-8 swap Y and X."""
    rgb = np.random.default_rng(orientation).integers(0, 256, (37, 52, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo.{fmt.lower()}"
    Image.fromarray(rgb).save(path, fmt, exif=exif.tobytes())
    with Image.open(path) as im:
        want = _shown(im)
    with open_image(str(path)) as src:
        assert src.level_shapes == [want.shape[1:]]
        y, x = src.level_shapes[0]
        np.testing.assert_array_equal(src.read_region(0, 3, 5, y - 2, x - 7), want[:, 3 : y - 2, 5 : x - 7])
        np.testing.assert_array_equal(src.read_region(0, 0, 0, y, x), want)


@pytest.mark.parametrize("orientation", [3, 6])
def test_tiff_orientation_tag_is_ignored(tmp_path: Path, orientation: int) -> None:
    """Slides read as stored, as in OpenSlide, QuPath and tifffile: their coordinates (and
    annotations made there) must match segpipe's labels."""
    data = np.random.default_rng(0).integers(0, 256, (150, 230, 3), np.uint8)
    levels = _pyramid(
        tmp_path / "p.tif", data, photometric="rgb", extratags=[(274, 3, 1, orientation, True)]
    )
    with open_image(str(tmp_path / "p.tif")) as src:
        for level, stored in enumerate(levels):
            assert src.level_shapes[level] == stored.shape[:2]
            np.testing.assert_array_equal(src.read_region(level, 7, 33, 12, 38),
                                          np.moveaxis(stored[7:12, 33:38], 2, 0))


def test_bilevel_tiff_reads_0_255_like_png(tmp_path: Path) -> None:
    """A 1-bit TIFF (min-is-black or min-is-white, strips or tiled pyramid) reads 0/255
    uint8, as a 1-bit PNG does (it read 0/1)."""
    bits = np.random.default_rng(0).random((90, 130)) > 0.5
    Image.fromarray(bits).save(tmp_path / "bits.png")
    Image.fromarray(bits).save(tmp_path / "pil.tif")  # min-is-black strips
    tifffile.imwrite(tmp_path / "white.tif", ~bits, photometric="miniswhite")
    _pyramid(tmp_path / "pyramid.tif", ~bits, photometric="miniswhite")
    want = np.where(bits, 255, 0).astype(np.uint8)[None]
    np.testing.assert_array_equal(_read_all(tmp_path / "bits.png"), want)
    for name in ("pil.tif", "white.tif", "pyramid.tif"):
        with open_image(str(tmp_path / name)) as src:
            assert (src.dtype, src.modality) == (np.uint8, "grey")
            np.testing.assert_array_equal(src.read_region(0, 0, 0, 90, 130), want)
            np.testing.assert_array_equal(src.read_region(0, 31, 5, 67, 99), want[:, 31:67, 5:99])
    np.testing.assert_array_equal(_read_all(tmp_path / "pyramid.tif", 1), want[:, ::2, ::2])


def test_cmyk_tiff_reads_as_rgb_like_pillow(tmp_path: Path) -> None:
    """A CMYK TIFF is RGB (brightfield) with Pillow's conversion, as a CMYK JPEG is — it was
    4 fluorescence channels. Every (C, K) pair is checked."""
    c, k = np.meshgrid(np.arange(256), np.arange(256))
    cmyk = np.stack([c, (3 * c) % 256, (5 * c + 7) % 256, k], -1).astype(np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "pil.tif")
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "photo.jpg", quality=95)
    tiled = _pyramid(tmp_path / "tiled.tif", cmyk, photometric="separated")
    with Image.open(tmp_path / "pil.tif") as im:
        want = _shown(im, "RGB")
    with Image.open(tmp_path / "tiled.tif") as im:
        np.testing.assert_array_equal(_shown(im, "RGB"), want)
    want1 = _shown(Image.fromarray(tiled[1], "CMYK"), "RGB")
    with open_image(str(tmp_path / "photo.jpg")) as jpeg:
        shown_as = (jpeg.n_channels, jpeg.modality, jpeg.channel_names)
    for name in ("pil.tif", "tiled.tif"):
        with open_image(str(tmp_path / name)) as src:
            assert (src.n_channels, src.modality, src.channel_names) == shown_as
            np.testing.assert_array_equal(src.read_region(0, 0, 0, 256, 256), want)
            np.testing.assert_array_equal(src.read_region(0, 40, 9, 201, 250), want[:, 40:201, 9:250])
    np.testing.assert_array_equal(_read_all(tmp_path / "tiled.tif", 1), want1)


@pytest.mark.parametrize("extra", ["unassalpha", "assocalpha"])
def test_grey_alpha_tiff_drops_alpha_like_png(tmp_path: Path, extra: str) -> None:
    """Grey + alpha is one grey channel in TIFF as in PNG (it was 2 fluorescence channels);
    a min-is-white grey + alpha page is inverted as well."""
    rng = np.random.default_rng(0)
    la = np.stack([rng.integers(0, 256, (70, 90)), rng.integers(0, 256, (70, 90))], -1).astype(np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    Image.fromarray(la, "LA").save(tmp_path / "pil.tif")
    _pyramid(tmp_path / "pyramid.tif", la, photometric="minisblack", extrasamples=[extra])
    white = la.copy()
    white[..., 0] = 255 - la[..., 0]
    tifffile.imwrite(tmp_path / "white.tif", white, photometric="miniswhite", extrasamples=[extra])
    want = _read_all(tmp_path / "la.png")
    np.testing.assert_array_equal(want, la[None, ..., 0])
    for name in ("pil.tif", "pyramid.tif", "white.tif"):
        with open_image(str(tmp_path / name)) as src:
            assert (src.n_channels, src.modality) == (1, "grey")
            np.testing.assert_array_equal(src.read_region(0, 0, 0, 70, 90), want)
            np.testing.assert_array_equal(src.read_region(0, 33, 21, 69, 77), want[:, 33:69, 21:77])
    np.testing.assert_array_equal(_read_all(tmp_path / "pyramid.tif", 1), want[:, ::2, ::2])


def test_unmarked_extra_samples_and_ome_channels_are_kept(tmp_path: Path) -> None:
    """Only samples marked as alpha are dropped: two fluorescence channels stay two."""
    two = np.random.default_rng(0).integers(0, 4096, (2, 40, 50), np.uint16)
    tifffile.imwrite(tmp_path / "contig.tif", np.moveaxis(two, 0, -1), photometric="minisblack",
                     planarconfig="contig")  # ExtraSamples: unspecified
    tifffile.imwrite(tmp_path / "two.ome.tif", two, photometric="minisblack", metadata={"axes": "CYX"})
    for name in ("contig.tif", "two.ome.tif"):
        np.testing.assert_array_equal(_read_all(tmp_path / name), two)
