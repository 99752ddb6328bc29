"""Tests of segpipe.synthetic: samplers, slides, industrial images, archives."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from imagecodecs import png_decode
from scipy import ndimage as ndi
from skimage.measure import regionprops

from segpipe.errors import ConfigError
from segpipe.synthetic import (
    DEFECT_CLASSES,
    SyntheticSlide,
    defects_sample,
    level_shapes,
    make_archive,
    nuclei_sample,
    write_industrial,
    write_slide,
)

# ---------------------------------------------------------------- nuclei_sample


@pytest.mark.parametrize("modality, channels", [("fluorescence", 1), ("he", 3)])
def test_nuclei_sample_shapes_and_determinism(modality: str, channels: int) -> None:
    image, labels = nuclei_sample((96, 128), rng=3, modality=modality)
    assert image.shape == (channels, 96, 128) and image.dtype == np.uint8
    assert labels.shape == (96, 128) and labels.dtype == np.uint32
    again = nuclei_sample((96, 128), rng=np.random.default_rng(3), modality=modality)
    assert np.array_equal(image, again[0]) and np.array_equal(labels, again[1])
    other = nuclei_sample((96, 128), rng=4, modality=modality)
    assert not np.array_equal(image, other[0])


def test_nuclei_labels_are_a_partition_within_the_diameter_range() -> None:
    lo, hi = 12, 24
    diameters = []
    for seed in range(6):
        _, labels = nuclei_sample((192, 192), rng=seed, diameter_px=(lo, hi), density=0.35)
        ids = np.unique(labels)
        assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, ids.size))  # sequential
        for region in regionprops(labels):
            # one connected piece per nucleus (occlusion never splits an instance)
            assert ndi.label(region.image)[1] == 1
            y0, x0, y1, x1 = region.bbox
            if y0 > 0 and x0 > 0 and y1 < 192 and x1 < 192:
                diameters.append(region.equivalent_diameter_area)
    diameters = np.asarray(diameters)
    assert diameters.size > 50
    assert diameters.max() <= hi * 1.1  # shape perturbation is bounded
    assert np.median(diameters) >= lo  # occlusion trims only a few
    assert np.percentile(diameters, 90) >= (lo + hi) / 2


def test_nuclei_touch_in_clusters() -> None:
    _, labels = nuclei_sample((256, 256), rng=1, density=0.4, cluster_fraction=0.8)
    a, b = labels[:, :-1], labels[:, 1:]
    touching = (a != b) & (a > 0) & (b > 0)
    c, d = labels[:-1], labels[1:]
    touching_v = (c != d) & (c > 0) & (d > 0)
    pairs = {tuple(sorted(p)) for p in zip(a[touching], b[touching], strict=True)}
    pairs |= {tuple(sorted(p)) for p in zip(c[touching_v], d[touching_v], strict=True)}
    assert len(pairs) >= 10


def test_he_colours_are_plausible() -> None:
    image, labels = nuclei_sample((256, 256), rng=7, modality="he", tissue_edge_probability=1.0)
    rgb = image.astype(float)
    nuclei = labels > 0
    grown = ndi.binary_dilation(nuclei, iterations=3)
    brightness = rgb.sum(axis=0)
    tissue = ~grown & (brightness < 600)  # stained, outside nuclei
    glass = ~grown & (rgb.min(axis=0) > 200)  # white, unstained
    assert tissue.sum() > 1000 and glass.sum() > 500
    # nuclei are darker and bluer (haematoxylin) than the pink (eosin) surround
    assert brightness[nuclei].mean() < brightness[tissue].mean() - 60
    blue_minus_red = rgb[2] - rgb[0]
    assert blue_minus_red[nuclei].mean() > blue_minus_red[tissue].mean() + 15
    # eosin: red above green in stroma; glass is near white and grey
    assert (rgb[0][tissue] - rgb[1][tissue]).mean() > 20
    assert np.ptp(rgb[:, glass].mean(axis=1)) < 25


def test_fluorescence_bright_nuclei_and_some_dim_ones() -> None:
    means, backgrounds = [], []
    for seed in range(4):
        image, labels = nuclei_sample(
            (160, 160), rng=seed, modality="fluorescence", dim_fraction=0.3
        )
        grey = image[0].astype(float)
        backgrounds.append(np.median(grey[~ndi.binary_dilation(labels > 0, iterations=4)]))
        means += [grey[labels == i].mean() for i in range(1, labels.max() + 1)]
        assert (
            np.median([grey[labels == i].mean() for i in range(1, labels.max() + 1)])
            > 2 * backgrounds[-1]
        )
    means = np.asarray(means)
    assert np.mean(means < 0.5 * np.median(means)) > 0.05  # dim nuclei exist


@pytest.mark.parametrize("modality", ["fluorescence", "he"])
def test_nuclei_sample_edge_cases(modality: str) -> None:
    image, labels = nuclei_sample((40, 24), rng=0, modality=modality, density=0.0)
    assert image.shape[1:] == (40, 24) and labels.max() == 0
    image, labels = nuclei_sample((16, 16), rng=1, modality=modality, diameter_px=(30, 60))
    assert labels.shape == (16, 16)


def test_nuclei_sample_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="modality"):
        nuclei_sample(modality="ihc")
    with pytest.raises(ConfigError, match="diameter_px"):
        nuclei_sample(diameter_px=(30, 10))


# ---------------------------------------------------------------- defects


def test_defects_sample_shapes_classes_and_determinism() -> None:
    image, classes = defects_sample((128, 160), rng=0)
    assert image.shape == (1, 128, 160) and image.dtype == np.uint8
    assert classes.shape == (128, 160) and classes.dtype == np.uint8
    again = defects_sample((128, 160), rng=0)
    assert np.array_equal(image, again[0]) and np.array_equal(classes, again[1])
    deep, _ = defects_sample((64, 64), rng=1, dtype=np.uint16)
    assert deep.dtype == np.uint16 and deep.max() > 255
    seen = np.zeros(len(DEFECT_CLASSES), int)
    for seed in range(12):
        seen += np.bincount(defects_sample((256, 256), rng=seed)[1].ravel(), minlength=4) > 0
    assert (seen > 0).all(), f"classes seen per sample: {seen}"


def test_defect_geometry_and_contrast() -> None:
    scratch_ratio, pit_areas, stain_areas = [], [], []
    for seed in range(12):
        image, classes = defects_sample((256, 256), rng=seed, surface="brushed")
        for cls, props in ((1, scratch_ratio), (2, pit_areas), (3, stain_areas)):
            for region in regionprops(ndi.label(classes == cls)[0]):
                if cls == 1 and region.area > 30:
                    props.append(region.axis_major_length / max(region.axis_minor_length, 1.0))
                elif cls != 1:
                    props.append(region.area)
    assert np.median(scratch_ratio) > 6  # thin and long
    assert np.median(pit_areas) < 250  # small spots
    assert np.median(stain_areas) > 4 * np.median(pit_areas)  # large blotches


def test_defects_pits_are_darker_than_surroundings() -> None:
    image, classes = defects_sample(
        (256, 256), rng=2, pits=12, scratches=0, stains=0, clean_probability=0
    )
    grey = image[0].astype(float)
    ring = ndi.binary_dilation(classes == 2, iterations=6) & (classes == 0)
    assert grey[classes == 2].mean() < grey[ring].mean()


# ---------------------------------------------------------------- slides


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("slide") / "he.svs"
    return write_slide(path, shape=(1300, 1500), kind="he", seed=5, tissue_fraction=0.5, mpp=0.25)


def test_write_slide_is_an_svs_pyramid(he_slide) -> None:
    assert he_slide.path.exists() and he_slide.labels_path == he_slide.path.with_name(
        "he.labels.tif"
    )
    assert he_slide.levels == level_shapes((1300, 1500)) == [(1300, 1500), (650, 750)]
    with tifffile.TiffFile(he_slide.path) as tif:
        assert tif.is_bigtiff and tif.pages.first.is_svs and tif.pages.first.is_tiled
        assert "|MPP = 0.25" in tif.pages.first.description
        series = tif.series[0]
        assert [lvl.shape for lvl in series.levels] == [(1300, 1500, 3), (650, 750, 3)]
        level0 = series.levels[0].asarray()
        level1 = series.levels[1].asarray()
    # lower level = 2×2 mean of level 0
    mean = level0.astype(float).reshape(650, 2, 750, 2, 3).mean(axis=(1, 3))
    assert np.abs(mean - level1).max() <= 1
    with tifffile.TiffFile(he_slide.labels_path) as tif:
        page = tif.pages.first
        assert page.is_tiled and page.dtype == np.uint32 and page.shape == (1300, 1500)
        labels = page.asarray()
    assert len(np.unique(labels)) - 1 == he_slide.n_nuclei > 100


def test_slide_tiles_agree_with_a_rerender_across_borders(he_slide) -> None:
    slide = SyntheticSlide((1300, 1500), "he", seed=5, tissue_fraction=0.5)
    image = tifffile.imread(he_slide.path, level=0)
    labels = tifffile.imread(he_slide.labels_path)
    # a region straddling tile borders (tiles are 256) in both axes, rendered on its own
    y0, x0, y1, x1 = 200, 700, 600, 1100
    region, region_labels = slide.render(y0, x0, y1, x1)
    assert np.array_equal(np.moveaxis(region, 0, -1), image[y0:y1, x0:x1])
    assert np.array_equal(region_labels, labels[y0:y1, x0:x1])
    # nuclei cut by a tile border keep one id on both sides
    across = (labels[:, 255] == labels[:, 256]) & (labels[:, 255] > 0)
    assert across.any()


def test_slide_nuclei_only_in_tissue_on_bright_glass(he_slide) -> None:
    slide = SyntheticSlide((1300, 1500), "he", seed=5, tissue_fraction=0.5)
    tissue = slide.tissue(0, 0, 1300, 1500)
    labels = tifffile.imread(he_slide.labels_path)
    assert 0.3 < (tissue > 0.5).mean() < 0.7
    # nucleus centres lie in tissue: no nucleus pixel further than a radius from it
    far = ~ndi.binary_dilation(tissue > 0.5, iterations=20)
    assert far.mean() > 0.2 and not labels[far].any()
    image = tifffile.imread(he_slide.path, level=0)
    assert image[tissue == 0].mean() > 200  # white glass


def test_fluorescence_slide_dark_background(tmp_path: Path) -> None:
    info = write_slide(tmp_path / "f.svs", shape=(600, 700), kind="fluorescence", seed=2)
    with tifffile.TiffFile(info.path) as tif:
        image = tif.series[0].levels[0].asarray()
    assert image.shape == (600, 700) and image.dtype == np.uint16  # as fluorescence scanners
    labels = tifffile.imread(info.labels_path)
    glass = ~ndi.binary_dilation(labels > 0, iterations=30)
    assert np.median(image[glass]) < 40 * 257 < image[labels > 0].mean()


def _peak_traced_bytes(path: Path, shape: tuple[int, int]) -> int:
    tracemalloc.start()
    try:
        write_slide(path, shape=shape, kind="fluorescence", seed=1, tissue_fraction=0.3)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_write_slide_memory_does_not_grow_with_the_slide(tmp_path: Path) -> None:
    small = _peak_traced_bytes(tmp_path / "small.svs", (512, 768))
    large = _peak_traced_bytes(tmp_path / "large.svs", (512, 3072))  # 4x the pixels
    assert large < 1.5 * small, f"peak {small / 1e6:.1f} MB -> {large / 1e6:.1f} MB"


def test_write_slide_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kind"):
        write_slide(tmp_path / "x.svs", shape=(64, 64), kind="ihc")
    with pytest.raises(ConfigError, match="tile"):
        write_slide(tmp_path / "x.svs", shape=(64, 64), tile=100)


# ---------------------------------------------------------------- industrial files and archives


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_write_industrial(tmp_path: Path, fmt: str) -> None:
    info = write_industrial(tmp_path / f"part.{fmt}", shape=(300, 400), seed=1, fmt=fmt)
    if fmt == "png":
        image = png_decode(info.path.read_bytes())
    else:
        image = tifffile.imread(info.path)
    classes = tifffile.imread(info.labels_path)
    assert image.shape == classes.shape == (300, 400)
    assert image.dtype == np.uint16 and classes.dtype == np.uint8
    assert classes.max() < len(DEFECT_CLASSES)
    assert info.classes_present == [DEFECT_CLASSES[i] for i in np.unique(classes)]


def test_make_archive_layout(tmp_path: Path) -> None:
    info = make_archive(tmp_path, slide_shape=(700, 600), industrial_shape=(300, 400), seed=3)
    rel = sorted(str(p.relative_to(info.archive)) for p in info.archive.rglob("*") if p.is_file())
    assert rel == ["industrial/part_000.png", "slides/fluo_000.svs", "slides/he_000.svs"]
    truth = sorted(str(p.relative_to(info.truth)) for p in info.truth.rglob("*") if p.is_file())
    assert truth == [
        "industrial/part_000.labels.tif",
        "slides/fluo_000.labels.tif",
        "slides/he_000.labels.tif",
    ]
    assert [item.kind for item in info.items] == ["he", "fluorescence", "industrial"]
    assert [item.mpp for item in info.items] == [0.5, 0.5, None]
    for item in info.items:
        assert item.image == info.archive / item.relpath and item.truth.exists()
    # distinct images from distinct seeds
    he = tifffile.imread(info.items[0].truth)
    fluo = tifffile.imread(info.items[1].truth)
    assert not np.array_equal(he, fluo)


def _anon_rss() -> int:
    """Anonymous resident memory of this process (bytes); memory maps do not count."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_write_large_slide_in_bounded_memory(tmp_path: Path) -> None:
    """A 16k x 16k slide (SEGPIPE_BIG_SLIDE=32768 for the full check) in bounded memory."""
    import os
    import threading

    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the anonymous resident memory")
    side = int(os.environ.get("SEGPIPE_BIG_SLIDE", "16384"))
    base, peak, done = _anon_rss(), [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], _anon_rss())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        info = write_slide(tmp_path / "big.svs", shape=(side, side), kind="he", seed=4)
    finally:
        done.set()
        watcher.join()
    with tifffile.TiffFile(info.path) as tif:
        assert [lvl.shape[:2] for lvl in tif.series[0].levels] == info.levels
        assert info.levels[-1][0] <= 1024
    level0 = side * side * 3
    assert peak[0] - base < max(level0 / 8, 64e6), f"grew by {(peak[0] - base) / 1e6:.0f} MB"


def test_blob_sample_varies_style_and_labels_bright_blobs() -> None:
    from segpipe.synthetic import blob_sample

    sharp, contrasts = 0, []
    for seed in range(12):
        image, labels = blob_sample((96, 96), np.random.default_rng(seed), (10, 20), 0.3)
        assert image.shape == (1, 96, 96) and image.dtype == np.uint8 and labels.dtype == np.uint32
        assert labels.max() > 0 and np.unique(labels).size == labels.max() + 1  # 1..n
        inside, outside = image[0][labels > 0].astype(float), image[0][labels == 0].astype(float)
        contrasts.append(np.median(inside) - np.median(outside))
        # a sharp edge: a one-pixel step across the outline carries most of the contrast
        step = np.abs(np.diff(image[0].astype(float), axis=1))[np.diff(labels > 0, axis=1)]
        sharp += bool(contrasts[-1] > 40 and np.median(step) > 0.7 * contrasts[-1])
    assert min(contrasts) > 0  # nuclei are always brighter than the background
    assert max(contrasts) > 4 * min(contrasts)  # ... by very different amounts
    assert sharp >= 1
    again = blob_sample((96, 96), np.random.default_rng(3), (10, 20), 0.3)
    np.testing.assert_array_equal(again[0], blob_sample((96, 96), np.random.default_rng(3), (10, 20), 0.3)[0])


def test_write_mosaic_repeats_the_patch_variants(tmp_path):

    from segpipe.synthetic import mosaic_patches, mosaic_variant_at, write_mosaic

    path = write_mosaic(tmp_path / "m.tif", 768, patch=256, tile=128, seed=3, sparse=True)
    variants, glass = mosaic_patches(256, 3)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilelength == 128
        img = page.asarray()
    assert img.shape == (768, 768) and img.dtype == glass.dtype
    for py in range(3):
        for px in range(3):
            got = img[py * 256 : (py + 1) * 256, px * 256 : (px + 1) * 256]
            want = glass if py % 2 or px % 2 else variants[mosaic_variant_at(py, px)]
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="multiples of the tile"):
        write_mosaic(tmp_path / "bad.tif", 700, patch=256, tile=128)
