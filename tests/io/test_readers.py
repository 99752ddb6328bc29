"""Readers on real files written by tifffile / imagecodecs / Pillow / zarr, locally and on S3."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segpipe.io import ImageSource, open_image


@dataclass
class Case:
    name: str
    filename: str
    write: Any  # (h, path) -> list of reference levels (C, Y, X)
    n_channels: int
    dtype: Any
    mpp: float | None
    modality: str
    names: list[str] | None = None
    atol: float = 0  # JPEG is lossy
    extra: dict[str, Any] = field(default_factory=dict)


def _rgb(h: Any, y: int = 600, x: int = 800) -> np.ndarray:
    return h.smooth_image((3, y, x), np.uint8, seed=1)


CASES = [
    Case(
        "svs",
        "slide.svs",
        lambda h, p: h.write_svs(p, _rgb(h), mpp=0.25),
        3,
        np.uint8,
        0.25,
        "brightfield",
        ["red", "green", "blue"],
        atol=12,
    ),
    Case(
        "ome-tiff",
        "multi.ome.tiff",
        lambda h, p: h.write_ome_tiff(
            p,
            h.smooth_image((3, 500, 700), np.uint16),
            mpp=0.5,
            channel_names=["DAPI", "CD3", "CD8"],
        ),
        3,
        np.uint16,
        0.5,
        "fluorescence",
        ["DAPI", "CD3", "CD8"],
    ),
    Case(
        "ome-tiff-nm",
        "nm.ome.tif",
        lambda h, p: h.write_ome_tiff(
            p, h.smooth_image((1, 300, 260), np.uint8), n_levels=2, mpp=250.0, unit="nm"
        ),
        1,
        np.uint8,
        0.25,
        "grey",
    ),
    Case(
        "ndpi-like",
        "scan.tif",
        lambda h, p: h.write_generic_pyramid(p, _rgb(h, 520, 777), resolution_cm_mpp=0.46),
        3,
        np.uint8,
        0.46,
        "brightfield",
    ),
    Case(
        "pyramid-float32",
        "float.tif",
        lambda h, p: h.write_generic_pyramid(p, h.smooth_image((1, 400, 333), np.float32)),
        1,
        np.float32,
        None,
        "fluorescence",
    ),
    Case(
        "strip-rgb",
        "strips.tiff",
        lambda h, p: h.write_strip_tiff(p, _rgb(h, 211, 300), dpi=25400 / 0.5),
        3,
        np.uint8,
        0.5,
        "brightfield",
    ),
    Case(
        "strip-grey-72dpi",
        "grey.tif",
        lambda h, p: h.write_strip_tiff(p, h.smooth_image((1, 150, 170), np.uint8), dpi=72),
        1,
        np.uint8,
        None,
        "grey",
        ["grey"],
    ),
    Case(
        "strip-int16",
        "int16.tif",
        lambda h, p: h.write_strip_tiff(
            p, (h.smooth_image((1, 90, 80), np.uint16) // 2).astype(np.int16) - 1000
        ),
        1,
        np.float32,
        None,
        "fluorescence",
    ),
    Case(
        "png-grey8",
        "g.png",
        lambda h, p: h.write_png(p, h.smooth_image((1, 120, 90), np.uint8)),
        1,
        np.uint8,
        None,
        "grey",
    ),
    Case(
        "png-rgb16",
        "c16.png",
        lambda h, p: h.write_png(p, h.smooth_image((3, 100, 130), np.uint16)),
        3,
        np.uint16,
        None,
        "fluorescence",
    ),
    Case(
        "png-rgba8-alpha-dropped",
        "rgba.png",
        lambda h, p: h.write_png(p, _rgb(h, 64, 50), alpha=True),
        3,
        np.uint8,
        None,
        "brightfield",
    ),
    Case(
        "png-grey16-alpha-dropped",
        "ga16.png",
        lambda h, p: h.write_png(p, h.smooth_image((1, 40, 30), np.uint16), alpha=True),
        1,
        np.uint16,
        None,
        "fluorescence",
    ),
    Case(
        "jpeg-rgb",
        "photo.jpg",
        lambda h, p: h.write_jpeg(p, _rgb(h, 200, 300), dpi=25400 / 2.0),
        3,
        np.uint8,
        2.0,
        "brightfield",
        atol=12,
    ),
    Case(
        "jpeg-grey",
        "grey.jpeg",
        lambda h, p: h.write_jpeg(p, h.smooth_image((1, 77, 99), np.uint8)),
        1,
        np.uint8,
        None,
        "grey",
        atol=12,
    ),
    Case(
        "ome-zarr",
        "img.ome.zarr",
        lambda h, p: h.write_ome_zarr(
            p, h.smooth_image((2, 300, 410), np.uint16), mpp=0.7, channel_names=["a", "b"]
        ),
        2,
        np.uint16,
        0.7,
        "fluorescence",
        ["a", "b"],
    ),
]


def _plain_zarr(h: Any, p: Path) -> list[np.ndarray]:
    import zarr

    data = _rgb(h, 130, 170)
    z = zarr.open_array(str(p), mode="w", shape=(130, 170, 3), dtype=np.uint8, chunks=(64, 64, 3))
    z[...] = np.moveaxis(data, 0, -1)
    return [data]


CASES.append(Case("plain-zarr-yxs", "plain.zarr", _plain_zarr, 3, np.uint8, None, "brightfield"))


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def written(
    request: pytest.FixtureRequest, tmp_path: Path, io_helpers: Any
) -> tuple[Case, str, list]:
    case: Case = request.param
    path = tmp_path / case.filename
    levels = case.write(io_helpers, path)
    return case, str(path), levels


def _check_equal(case: Case, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype == np.dtype(case.dtype)
    if case.atol:
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        assert diff.mean() < case.atol / 3 and np.percentile(diff, 99) <= case.atol * 3
    else:
        np.testing.assert_array_equal(got, want.astype(case.dtype))


class TestReaders:
    """Shared behaviour every reader must show (one parametrised case per format)."""

    def test_metadata(self, written: tuple[Case, str, list]) -> None:
        case, uri, levels = written
        with open_image(uri) as src:
            assert isinstance(src, ImageSource)
            assert src.level_shapes == [lv.shape[1:] for lv in levels]
            assert src.n_channels == case.n_channels
            assert src.dtype == np.dtype(case.dtype)
            assert src.modality == case.modality
            assert len(src.channel_names) == case.n_channels
            if case.names:
                assert src.channel_names == case.names
            if case.mpp is None:
                assert src.mpp is None and src.level_mpp(0) is None
            else:
                assert src.mpp == pytest.approx(case.mpp, rel=1e-6)
                last = len(levels) - 1
                ratio = levels[0].shape[2] / levels[last].shape[2]
                assert src.level_mpp(last) == pytest.approx(case.mpp * ratio)

    def test_every_level_matches(self, written: tuple[Case, str, list]) -> None:
        case, uri, levels = written
        with open_image(uri) as src:
            for i, want in enumerate(levels):
                _check_equal(case, src.read_region(i, 0, 0, *want.shape[1:]), want)

    def test_odd_regions_match(self, written: tuple[Case, str, list]) -> None:
        case, uri, levels = written
        rng = np.random.default_rng(3)
        with open_image(uri) as src:
            want = levels[0]
            _, ny, nx = want.shape
            for _ in range(4):
                y0, x0 = int(rng.integers(0, ny - 1)), int(rng.integers(0, nx - 1))
                y1, x1 = int(rng.integers(y0 + 1, ny + 1)), int(rng.integers(x0 + 1, nx + 1))
                _check_equal(case, src.read_region(0, y0, x0, y1, x1), want[:, y0:y1, x0:x1])

    def test_pickles_as_reopen(self, written: tuple[Case, str, list]) -> None:
        case, uri, levels = written
        with open_image(uri) as src:
            clone = pickle.loads(pickle.dumps(src))
        with clone:
            assert clone.level_shapes == [lv.shape[1:] for lv in levels]
            _check_equal(case, clone.read_region(0, 5, 7, 20, 30), levels[0][:, 5:20, 7:30])

    def test_region_outside_raises(self, written: tuple[Case, str, list]) -> None:
        _, uri, levels = written
        with open_image(uri) as src:
            ny, nx = src.level_shapes[0]
            with pytest.raises(ValueError, match="outside"):
                src.read_region(0, 0, 0, ny + 1, nx)
            with pytest.raises(ValueError, match="level"):
                src.read_region(len(levels), 0, 0, 1, 1)


S3_CASES = ["svs", "ome-tiff", "ndpi-like", "png-rgb16", "jpeg-rgb", "ome-zarr"]


@pytest.mark.parametrize("name", S3_CASES)
def test_reads_from_s3_like_local(name: str, s3: Any, tmp_path: Path, io_helpers: Any) -> None:
    case = next(c for c in CASES if c.name == name)
    path = tmp_path / case.filename
    levels = case.write(io_helpers, path)
    bucket = s3.bucket("readers")
    s3.fs.put(str(path), f"{bucket}/archive/{case.filename}", recursive=path.is_dir())
    uri = f"s3://{bucket}/archive/{case.filename}"
    with open_image(uri, storage_options=s3.storage_options) as src, open_image(str(path)) as local:
        assert src.uri == uri
        assert src.level_shapes == local.level_shapes
        assert (src.mpp, src.modality, src.channel_names) == (
            local.mpp,
            local.modality,
            local.channel_names,
        )
        for i, want in enumerate(levels):
            np.testing.assert_array_equal(
                src.read_region(i, 0, 0, *want.shape[1:]),
                local.read_region(i, 0, 0, *want.shape[1:]),
            )
        _check_equal(case, src.read_region(0, 3, 5, 77, 99), levels[0][:, 3:77, 5:99])


def test_series_failure_falls_back_to_pages(
    tmp_path: Path, io_helpers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When tifffile's series detection raises (as on some foreign pyramids), pages are used."""
    import tifffile

    path = tmp_path / "foreign.tif"
    levels = io_helpers.write_generic_pyramid(path, _rgb(io_helpers, 300, 410))

    def broken(self: Any) -> Any:
        raise ValueError("incompatible keyframe")

    monkeypatch.setattr(tifffile.TiffFile, "series", property(broken))
    with open_image(str(path)) as src:
        assert src.level_shapes == [lv.shape[1:] for lv in levels]
        np.testing.assert_array_equal(src.read_region(2, 0, 0, *levels[2].shape[1:]), levels[2])


def test_ome_subifd_pages_fallback(
    tmp_path: Path, io_helpers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages fallback finds reduced levels stored in SubIFDs."""
    import tifffile

    path = tmp_path / "sub.ome.tif"
    levels = io_helpers.write_ome_tiff(path, io_helpers.smooth_image((1, 400, 300), np.uint8))
    monkeypatch.setattr(tifffile.TiffFile, "series", property(lambda self: 1 / 0))
    with open_image(str(path)) as src:
        assert src.level_shapes == [lv.shape[1:] for lv in levels]
        np.testing.assert_array_equal(src.read_region(1, 0, 0, *levels[1].shape[1:]), levels[1])


def _png(path: Path, **save: Any) -> str:
    from PIL import Image

    Image.fromarray(np.zeros((20, 30), np.uint8)).save(path, **save)
    return str(path)


@pytest.mark.parametrize(
    ("name", "save", "mpp"),
    [
        ("png-72dpi.png", {"dpi": (72, 72)}, None),  # stored as 2835 px/m = 72.009 dpi
        ("png-96dpi.png", {"dpi": (96, 96)}, None),
        ("jpeg-28-per-cm.jpg", {"dpi": (71.12, 71.12)}, None),  # JFIF density 28 px/cm
        ("png-50800dpi.png", {"dpi": (50800, 50800)}, 0.5),
        ("png-nodpi.png", {}, None),
    ],
)
def test_screen_default_resolutions_are_no_pixel_size(tmp_path: Path, name: str, save: dict[str, Any],
                                                       mpp: float | None) -> None:  # fmt: skip
    """A PNG / JPEG saved at a screen's 72 or 96 dpi (in px/m or px/cm) has no pixel size;
    it read as ~350 µm/px before session 9, and the nuclei model then asked for 122 GiB."""
    with open_image(_png(tmp_path / name, **save)) as src:
        assert src.mpp == (None if mpp is None else pytest.approx(mpp, rel=1e-4))


def test_tiff_resolution_in_cm_at_72_dpi_and_imagej_units(tmp_path: Path) -> None:
    import tifffile

    image = np.zeros((20, 30), np.uint8)
    tifffile.imwrite(tmp_path / "cm72.tif", image, resolution=(28.35, 28.35), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "cm.tif", image, resolution=(40000, 40000), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "fiji.tif", image, imagej=True, resolution=(4, 4), metadata={"unit": "um"})
    with open_image(str(tmp_path / "cm72.tif")) as a, open_image(str(tmp_path / "cm.tif")) as b:
        assert (a.mpp, b.mpp) == (None, pytest.approx(0.25))
    with open_image(str(tmp_path / "fiji.tif")) as fiji:  # ResolutionUnit NONE, unit in the description
        assert fiji.mpp == pytest.approx(0.25)


def test_min_is_white_and_palette_tiffs_read_as_shown(tmp_path: Path) -> None:
    """Stored values are shown the way viewers show them: a min-is-white page inverted, a
    palette page through its colour table (RGB), as Pillow reads both."""
    import tifffile
    from PIL import Image

    dark_square = np.full((8, 8), 255, np.uint8)
    dark_square[2:6, 2:6] = 30
    tifffile.imwrite(tmp_path / "miw.tif", 255 - dark_square, photometric="miniswhite")
    index = np.zeros((8, 8), np.uint8)
    index[2:6, 2:6] = 1
    table = np.zeros((3, 256), np.uint16)
    table[:, 0] = 255 * 257  # white
    table[0, 1] = 255 * 257  # red
    tifffile.imwrite(tmp_path / "palette.tif", index, photometric="palette", colormap=table)
    for name in ("miw.tif", "palette.tif"):
        with open_image(str(tmp_path / name)) as src, Image.open(tmp_path / name) as im:
            want = np.asarray(im.convert("RGB" if name == "palette.tif" else "L"))
            want = want[None] if want.ndim == 2 else np.moveaxis(want, 2, 0)
            got = src.read_region(0, 0, 0, 8, 8)
            np.testing.assert_array_equal(got, want)
            assert src.dtype == np.uint8


def test_the_largest_series_is_the_image(tmp_path: Path) -> None:
    """A thumbnail page (or an OME macro image) before the main image is not what is read;
    the OME metadata read is the main image's."""
    import tifffile

    rng = np.random.default_rng(0)
    main = rng.integers(0, 255, (384, 512, 3), np.uint8)
    with tifffile.TiffWriter(tmp_path / "thumb_first.tif") as tw:
        tw.write(main[::8, ::8], photometric="rgb")
        tw.write(main, photometric="rgb", tile=(128, 128))
    with tifffile.TiffWriter(tmp_path / "macro_first.ome.tif", ome=True) as tw:
        tw.write(main[:100, :300], photometric="rgb", metadata={"Name": "macro", "PhysicalSizeX": 10.0})
        tw.write(np.moveaxis(main, 2, 0).astype(np.uint16), photometric="minisblack",
                 metadata={"axes": "CYX", "Name": "main", "PhysicalSizeX": 0.25,
                           "Channel": {"Name": ["DAPI", "CD3", "CD8"]}})  # fmt: skip
    with open_image(str(tmp_path / "thumb_first.tif")) as src:
        assert src.level_shapes[0] == (384, 512)
        np.testing.assert_array_equal(src.read_region(0, 0, 0, 384, 512), np.moveaxis(main, 2, 0))
    with open_image(str(tmp_path / "macro_first.ome.tif")) as src:
        assert (src.level_shapes[0], src.n_channels, src.mpp) == ((384, 512), 3, pytest.approx(0.25))
        assert list(src.channel_names) == ["DAPI", "CD3", "CD8"]
