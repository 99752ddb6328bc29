"""ingest_image: source → OME-Zarr pyramid, checked level by level against a reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from segpipe.errors import ConfigError, ImageReadError
from segpipe.ingest import (
    ImageMeta,
    IngestSpec,
    downsample2,
    ingest_image,
    is_complete,
    level_shapes_for,
    read_meta,
)
from segpipe.io import open_image, zarr_store


def reference_pyramid(level0: np.ndarray, min_size: int) -> list[np.ndarray]:
    """Independent oracle: mean of the (up to 4) pixels under each output pixel, rounded."""
    out = [level0]
    while max(out[-1].shape[1:]) > min_size:
        a = out[-1].astype(np.float64)
        c, y, x = a.shape
        ny, nx = (y + 1) // 2, (x + 1) // 2
        total = np.zeros((c, ny, nx))
        count = np.zeros((1, ny, nx))
        for dy in (0, 1):
            for dx in (0, 1):
                part = a[:, dy::2, dx::2]
                total[:, : part.shape[1], : part.shape[2]] += part
                count[:, : part.shape[1], : part.shape[2]] += 1
        mean = total / count
        if np.issubdtype(level0.dtype, np.integer):
            mean = np.floor(mean + 0.5)
        out.append(mean.astype(level0.dtype))
    return out


def _read_levels(url: str, storage_options: dict[str, Any] | None = None) -> list[np.ndarray]:
    root = zarr.open_group(store=zarr_store(url, storage_options, read_only=True), mode="r")
    paths = [d["path"] for d in root.attrs["ome"]["multiscales"][0]["datasets"]]
    return [np.asarray(root[p][...]) for p in paths]


@pytest.fixture(scope="module")
def odd_rgb(tmp_path_factory: pytest.TempPathFactory, io_helpers: Any) -> tuple[str, np.ndarray]:
    """2503 × 1979 RGB pyramid TIFF (odd sizes on purpose)."""
    path = tmp_path_factory.mktemp("src") / "odd.tif"
    data = io_helpers.smooth_image((3, 2503, 1979), np.uint8, seed=5)
    io_helpers.write_generic_pyramid(path, data, n_levels=2, resolution_cm_mpp=0.5)
    return str(path), data


def test_level_shapes_and_downsample_core() -> None:
    assert level_shapes_for((10007, 7919), 1024) == [
        (10007, 7919),
        (5004, 3960),
        (2502, 1980),
        (1251, 990),
        (626, 495),
    ]
    assert level_shapes_for((500, 300), 1024) == [(500, 300)]
    a = np.arange(3 * 5 * 7, dtype=np.uint16).reshape(3, 5, 7)
    np.testing.assert_array_equal(downsample2(a), reference_pyramid(a, 1)[1])
    f = np.random.default_rng(0).random((2, 9, 4), dtype=np.float32)
    np.testing.assert_allclose(downsample2(f), reference_pyramid(f, 1)[1], rtol=1e-6)


def test_round_trip_odd_sizes_unsharded(odd_rgb: tuple[str, np.ndarray], tmp_path: Path) -> None:
    source, data = odd_rgb
    url = str(tmp_path / "odd.ome.zarr")
    meta = ingest_image(source, url, IngestSpec(chunk=256, min_size=300))
    assert isinstance(meta, ImageMeta)
    assert meta.shape == (2503, 1979) and meta.n_channels == 3 and meta.dtype == np.uint8
    assert meta.mpp == pytest.approx(0.5) and meta.modality == "brightfield"
    assert meta.levels == level_shapes_for((2503, 1979), 300)
    got = _read_levels(url)
    want = reference_pyramid(data, 300)
    assert len(got) == len(want) == 5
    for level, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(g, w, err_msg=f"level {level}")
    arr = zarr.open_group(url, mode="r")["0"]
    assert arr.chunks == (3, 256, 256) and arr.shards is None
    assert "zstd" in json.dumps(arr.metadata.to_dict()["codecs"]).lower()
    assert read_meta(url) == meta
    assert is_complete(url)


def test_round_trip_sharded_on_cluster(tmp_path: Path, io_helpers: Any, dask_client: Any) -> None:
    path = tmp_path / "multi.ome.tif"
    data = io_helpers.smooth_image((2, 701, 905), np.uint16, seed=2)
    io_helpers.write_ome_tiff(path, data, n_levels=2, mpp=0.325, channel_names=["DAPI", "GFP"])
    url = str(tmp_path / "multi.ome.zarr")
    meta = ingest_image(
        str(path),
        url,
        IngestSpec(chunk=128, shard=256, compression="blosc", min_size=200),
        client=dask_client,
    )
    assert meta.channel_names == ["DAPI", "GFP"] and meta.modality == "fluorescence"
    for g, w in zip(_read_levels(url), reference_pyramid(data, 200), strict=True):
        np.testing.assert_array_equal(g, w)
    root = zarr.open_group(url, mode="r")
    assert root["0"].chunks == (2, 128, 128) and root["0"].shards == (2, 256, 256)
    ome = root.attrs["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][2]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales[0] == pytest.approx([1.0, 0.325, 0.325])
    assert scales[2] == pytest.approx([1.0, 1.3, 1.3])
    assert [c["label"] for c in ome["omero"]["channels"]] == ["DAPI", "GFP"]
    assert root.attrs["segpipe"]["complete"] is True
    # the result reads back through segpipe's own reader with the same metadata
    with open_image(url) as src:
        assert src.mpp == pytest.approx(0.325) and src.channel_names == ["DAPI", "GFP"]
        np.testing.assert_array_equal(
            src.read_region(0, 100, 50, 300, 420), data[:, 100:300, 50:420]
        )


def test_ome_zarr_reader_opens_result(odd_rgb: tuple[str, np.ndarray], tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    source, data = odd_rgb
    url = str(tmp_path / "for-reader.ome.zarr")
    ingest_image(source, url, IngestSpec(chunk=512, shard=1024, min_size=700))
    nodes = list(Reader(parse_url(url))())
    assert nodes and nodes[0].load(Multiscales) is not None
    pyramid = nodes[0].data
    assert [tuple(p.shape) for p in pyramid] == [(3, 2503, 1979), (3, 1252, 990), (3, 626, 495)]
    np.testing.assert_array_equal(
        np.asarray(pyramid[0][:, 1000:1100, 7:99]), data[:, 1000:1100, 7:99]
    )


def test_s3_source_and_target(s3: Any, tmp_path: Path, io_helpers: Any, dask_client: Any) -> None:
    data = io_helpers.smooth_image((3, 333, 517), np.uint8, seed=9)
    local = tmp_path / "slide.svs"
    levels = io_helpers.write_svs(local, data)
    bucket = s3.bucket("ingest")
    s3.fs.put(str(local), f"{bucket}/archive/slide.svs")
    url = f"s3://{bucket}/results/images/slide.ome.zarr"
    meta = ingest_image(
        f"s3://{bucket}/archive/slide.svs",
        url,
        IngestSpec(chunk=128, min_size=100),
        client=dask_client,
        storage_options=s3.storage_options,
    )
    assert meta.mpp == pytest.approx(0.25) and meta.levels[0] == (333, 517)
    assert is_complete(url, s3.storage_options)
    assert read_meta(url, s3.storage_options) == meta
    got = _read_levels(url, s3.storage_options)
    with open_image(str(local)) as src:  # the SVS is JPEG: compare with its own decode
        level0 = src.read_region(0, 0, 0, 333, 517)
    assert np.abs(level0.astype(int) - levels[0].astype(int)).mean() < 4
    for g, w in zip(got, reference_pyramid(level0, 100), strict=True):
        np.testing.assert_array_equal(g, w)


def test_crash_leftover_is_replaced(odd_rgb: tuple[str, np.ndarray], tmp_path: Path) -> None:
    source, data = odd_rgb
    url = tmp_path / "half.ome.zarr"
    root = zarr.open_group(str(url), mode="w", zarr_format=3)
    root.create_array("0", shape=(1, 10, 10), dtype=np.float32)
    root.attrs["segpipe"] = {"complete": False}
    (url / "junk.bin").write_bytes(b"left over")
    assert not is_complete(str(url))
    ingest_image(source, str(url), IngestSpec(chunk=1024, min_size=1024))
    assert not (url / "junk.bin").exists()
    assert is_complete(str(url))
    got = _read_levels(str(url))
    assert got[0].shape == (3, 2503, 1979) and got[0].dtype == np.uint8
    np.testing.assert_array_equal(got[0], data)


def test_is_complete_and_read_meta_on_missing(tmp_path: Path) -> None:
    assert not is_complete(str(tmp_path / "nothing.ome.zarr"))
    with pytest.raises(ImageReadError, match="nothing.ome.zarr"):
        read_meta(str(tmp_path / "nothing.ome.zarr"))


@pytest.mark.parametrize(
    "kwargs",
    [{"chunk": 15}, {"chunk": 100, "shard": 150}, {"compression": "lzma"}, {"min_size": 0}, {"mpp": 0}],
)
def test_spec_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="IngestSpec"):
        IngestSpec(**kwargs)


def test_png_single_level_grey(tmp_path: Path, io_helpers: Any) -> None:
    path = tmp_path / "g16.png"
    data = io_helpers.smooth_image((1, 301, 203), np.uint16)
    io_helpers.write_png(path, data)
    url = str(tmp_path / "g16.ome.zarr")
    meta = ingest_image(str(path), url, IngestSpec(chunk=64, min_size=64))
    assert meta.mpp is None and meta.levels[-1] == (38, 26)
    root = zarr.open_group(url, mode="r")
    assert "unit" not in root.attrs["ome"]["multiscales"][0]["axes"][1]
    for g, w in zip(_read_levels(url), reference_pyramid(data, 64), strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_finished_ingest_leaves_no_source_cached(tmp_path: Path, io_helpers: Any) -> None:
    """A decoded PNG / JPEG holds all its pixels: the worker cache must not keep it after its
    ingest (8 large ones were kept before session 9)."""
    from segpipe.ingest import _tasks

    path = tmp_path / "p.png"
    io_helpers.write_png(path, io_helpers.smooth_image((3, 300, 200), np.uint8))
    ingest_image(str(path), str(tmp_path / "p.ome.zarr"), IngestSpec(chunk=64, min_size=64))
    assert not [key for key in _tasks._SOURCES if key[0] == str(path)]


def test_pixel_size_override(tmp_path: Path, io_helpers: Any) -> None:
    """``ingest.mpp`` replaces a file's pixel size (here none) in the metadata ingest writes."""
    from segpipe.config import config_hash, load_config, results_settings

    path = tmp_path / "g.png"
    io_helpers.write_png(path, io_helpers.smooth_image((1, 64, 48), np.uint8))
    spec = load_config(None, {"ingest.mpp": 0.25}).ingest_spec()
    meta = ingest_image(str(path), str(tmp_path / "g.ome.zarr"), spec)
    assert meta.mpp == 0.25 and read_meta(str(tmp_path / "g.ome.zarr")).mpp == 0.25
    multiscales = zarr.open_group(str(tmp_path / "g.ome.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    assert multiscales["axes"][1]["unit"] == "micrometer"
    assert multiscales["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.25, 0.25]
    # a changed setting redoes the images; unset, the hash is the one results made before it had
    assert config_hash(load_config(None, {"ingest.mpp": 0.25})) != config_hash(load_config())
    assert "mpp" not in results_settings(load_config())["ingest"]


@pytest.mark.slow
def test_issue_size_10007_x_7919(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "big.tif"
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (10007, 7919), np.uint8)
    tifffile.imwrite(path, data, tile=(512, 512), compression="zlib")
    url = str(tmp_path / "big.ome.zarr")
    meta = ingest_image(str(path), url)
    assert meta.levels == level_shapes_for((10007, 7919))
    got = _read_levels(url)
    for g, w in zip(got, reference_pyramid(data[np.newaxis], 1024), strict=True):
        np.testing.assert_array_equal(g, w)


def test_changed_source_is_reread_by_warm_workers(
    tmp_path: Path, io_helpers: Any, dask_client: Any
) -> None:
    """Workers cache open sources; a source rewritten in place must not be read stale."""
    import os

    path = tmp_path / "same-name.tif"
    first = io_helpers.smooth_image((1, 300, 200), np.uint16, seed=1)
    io_helpers.write_strip_tiff(path, first)
    url = str(tmp_path / "same.ome.zarr")
    ingest_image(str(path), url, IngestSpec(chunk=64, min_size=1024), client=dask_client)
    second = io_helpers.smooth_image((1, 280, 260), np.uint16, seed=2)  # new layout
    io_helpers.write_strip_tiff(path, second)
    os.utime(path, (1_000_000, 1_000_000))
    ingest_image(str(path), url, IngestSpec(chunk=64, min_size=1024), client=dask_client)
    np.testing.assert_array_equal(_read_levels(url)[0], second)


def _old_pyramid(level0: np.ndarray, levels: list[tuple[int, int]]) -> list[np.ndarray]:
    """What ingest wrote before levels were built in the level-0 tasks: downsample2 of the
    whole level above, level by level."""
    out = [level0]
    for _ in levels[1:]:
        out.append(downsample2(out[-1]))
    return out


def _plan(name: str, n_levels: int) -> list[tuple[int, int]]:
    """Task layouts for the pyramid test: level by level, deep groups, pairs."""
    last = n_levels - 1
    if name == "per-level":
        return [(i, i) for i in range(n_levels)]
    if name == "deep":
        return [(0, 4), (5, last)]
    return [(i, min(i + 1, last)) for i in range(0, n_levels, 2)]


@pytest.mark.parametrize("plan", ["per-level", "deep", "pairs"])
@pytest.mark.parametrize(
    ("shape", "dtype", "shard"),
    [
        ((1, 517, 749), np.uint16, None),
        ((3, 517, 749), np.uint8, 64),
        ((1, 333, 501), np.float32, None),
    ],
)
def test_grouped_pyramid_equals_level_by_level_downsampling(
    tmp_path: Path,
    io_helpers: Any,
    monkeypatch: pytest.MonkeyPatch,
    plan: str,
    shape: tuple[int, int, int],
    dtype: Any,
    shard: int | None,
) -> None:
    """Odd sizes, not multiples of the block (nor of the source tiles); every task layout
    (see ``_phases``) gives the same levels as downsampling level 0 level by level, as
    ingest did before, and both match the oracle."""
    import tifffile

    import segpipe.ingest as ingest

    data = (
        io_helpers.smooth_image(shape, dtype, seed=len(plan))
        if dtype != np.float32
        else (np.random.default_rng(3).random(shape, dtype=np.float32))
    )
    path = tmp_path / "odd.tif"
    tifffile.imwrite(
        path,
        np.moveaxis(data, 0, -1) if shape[0] == 3 else data[0],
        tile=(48, 80),
        photometric="rgb" if shape[0] == 3 else "minisblack",
        compression="zlib",
    )
    monkeypatch.setattr(ingest, "_phases", lambda grids, threads: _plan(plan, len(grids)))
    url = str(tmp_path / "odd.ome.zarr")
    meta = ingest_image(str(path), url, IngestSpec(chunk=32, shard=shard, min_size=16))
    got = _read_levels(url)
    assert len(got) == len(meta.levels) >= 5
    for level, (g, old, oracle) in enumerate(
        zip(got, _old_pyramid(data, meta.levels), reference_pyramid(data, 16), strict=True)
    ):
        assert g.dtype == data.dtype and g.shape[1:] == meta.levels[level]
        np.testing.assert_array_equal(g, old, err_msg=f"level {level}")
        if dtype != np.float32:
            np.testing.assert_array_equal(g, oracle, err_msg=f"level {level}")


def test_phases_cover_every_level_once() -> None:
    from segpipe.ingest import level_shapes_for
    from segpipe.ingest._core import _MAX_DEPTH, _phases

    for shape, block in (
        ((517, 749), 32),
        ((1024, 1024), 1024),
        ((2048, 2048), 1024),
        ((10007, 7919), 256),
        ((32768, 32768), 1024),
    ):
        grids = [(-(-y // block), -(-x // block)) for y, x in level_shapes_for(shape, 16)]
        for threads in (1, 2, 16, 1000):
            phases = _phases(grids, threads)
            levels = [lvl for first, top in phases for lvl in range(first, top + 1)]
            assert levels == list(range(len(grids))), (shape, threads, phases)
            assert all(top - first <= _MAX_DEPTH for first, top in phases)
    # more threads: smaller tasks in the first phase
    grids = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert _phases(grids, 2)[0] == (0, 4) and _phases(grids, 64)[0][1] < 3


def test_malloc_thresholds_raised_per_ingest_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    import segpipe._malloc as malloc

    calls: list[tuple[int, int, bool]] = []
    monkeypatch.setattr(
        malloc, "_mallopt", lambda m, t, trim=False: calls.append((m, t, trim)) or True
    )
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)  # a nanny of this process may have set it
    malloc.raise_for("a")
    malloc.raise_for("a")  # every task of an ingest calls it; set once
    malloc.raise_for("b")  # a second ingest on the same worker
    malloc.restore("a")
    assert calls == [(64 << 20, 256 << 20, False)]  # "b" still runs
    malloc.restore("b")
    malloc.restore("b")
    assert calls[1:] == [(128 << 10, 65536, True)] and not malloc._OWNERS
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    malloc.raise_for("c")  # adaptive glibc defaults are left alone
    assert len(calls) == 2 and not malloc._OWNERS
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with malloc.raised(), malloc.raised():  # one task's scope; nested / concurrent tasks share it
        assert calls[2:] == [(64 << 20, 256 << 20, False)] and len(malloc._OWNERS) == 2
    assert calls[3:] == [(128 << 10, 65536, True)] and not malloc._OWNERS
