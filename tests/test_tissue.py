"""Tests of segpipe.tissue: foreground masks on thumbnails and block selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from segpipe.errors import ConfigError
from segpipe.synthetic import SyntheticSlide, defects_sample, write_slide
from segpipe.tissue import (
    MIN_SEPARATION,
    block_fraction_skipped,
    otsu_separation,
    select_blocks,
    tissue_mask,
)

BLOCK = 1024


def _truth_blocks(slide: SyntheticSlide, block: int, step: int = 8) -> set[tuple[int, int]]:
    """Blocks that hold tissue, or a nucleus reaching out of it (≤ 24 px), at level 0."""
    Y, X = slide.shape
    tissue = slide.tissue(0, 0, Y // step, X // step, float(step)) > 0.5
    tissue = ndi.binary_dilation(tissue, iterations=24 // step)
    n = block // step
    return {
        (by, bx)
        for by in range(-(-Y // block))
        for bx in range(-(-X // block))
        if tissue[by * n : (by + 1) * n, bx * n : (bx + 1) * n].any()
    }


@pytest.mark.parametrize(
    ("kind", "modality", "seed"),
    [("he", "brightfield", 0), ("he", "brightfield", 3), ("fluorescence", "fluorescence", 1)],
)
def test_large_slide_skips_most_blocks_and_misses_none(kind: str, modality: str, seed: int) -> None:
    # a 32k x 32k slide with ~40 % tissue, only ever looked at through a 512 px thumbnail
    slide = SyntheticSlide((32768, 32768), kind, seed=seed, tissue_fraction=0.4)
    thumb = slide.thumbnail(64)
    mask = tissue_mask(thumb, modality)
    assert 0.3 < mask.mean() < 0.55
    blocks = set(select_blocks(mask, slide.shape, BLOCK))
    truth = _truth_blocks(slide, BLOCK)
    assert not truth - blocks, f"missed tissue blocks {sorted(truth - blocks)}"
    assert block_fraction_skipped(mask, slide.shape, BLOCK) >= 0.5


@pytest.fixture(scope="module", params=["he", "fluorescence"])
def written_slide(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tissue") / f"{request.param}.svs"
    return write_slide(path, shape=(2048, 2560), kind=request.param, seed=11, tissue_fraction=0.35)


@pytest.mark.parametrize("level", [0, -1])
def test_written_slide_no_nucleus_chunk_missed(written_slide, level: int) -> None:
    # the mask must not depend much on the pyramid level it is computed from
    with tifffile.TiffFile(written_slide.path) as tif:
        thumb = tif.series[0].levels[level].asarray()
    thumb = np.moveaxis(thumb, -1, 0) if thumb.ndim == 3 else thumb[None]
    labels = tifffile.imread(written_slide.labels_path)
    block = 256
    modality = "brightfield" if written_slide.kind == "he" else "fluorescence"
    mask = tissue_mask(thumb, modality)
    assert mask.shape == thumb.shape[1:]
    blocks = set(select_blocks(mask, labels.shape, block))
    with_nuclei = {
        (by, bx)
        for by in range(-(-labels.shape[0] // block))
        for bx in range(-(-labels.shape[1] // block))
        if labels[by * block : (by + 1) * block, bx * block : (bx + 1) * block].any()
    }
    assert with_nuclei and not with_nuclei - blocks
    assert block_fraction_skipped(mask, labels.shape, block) > 0.25


def test_fluorescence_thumbnail_mask_follows_tissue() -> None:
    slide = SyntheticSlide((8192, 8192), "fluorescence", seed=5, tissue_fraction=0.4)
    mask = tissue_mask(slide.thumbnail(16), "fluorescence")
    truth = slide.tissue(0, 0, 512, 512, 16.0) > 0.5
    agree = (mask == truth).mean()
    assert agree > 0.95
    assert mask[truth].mean() > 0.98  # tissue is (nearly) never dropped


def test_full_frame_industrial_keeps_everything() -> None:
    image, _ = defects_sample((1024, 1024), rng=4, surface="brushed")
    thumb = image[:, ::8, ::8]
    assert otsu_separation(ndi.gaussian_filter(thumb[0].astype(float), 1))[1] < MIN_SEPARATION
    mask = tissue_mask(thumb, "grey")
    assert mask.all()
    assert len(select_blocks(mask, (1024, 1024), 256)) == 16


@pytest.mark.parametrize("bright_part", [True, False])
def test_grey_part_on_background(bright_part: bool) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    part = (yy - 64) ** 2 + (xx - 64) ** 2 < 40**2
    grey = np.where(part, 180.0, 40.0) if bright_part else np.where(part, 40.0, 180.0)
    thumb = (grey + rng.normal(0, 8, grey.shape)).clip(0, 255).astype(np.uint8)[None]
    mask = tissue_mask(thumb, "grey")
    assert mask[64, 64] and not mask[2, 2]
    assert abs(int(mask.sum()) - int(part.sum())) < 0.1 * part.sum()
    assert block_fraction_skipped(mask, (1280, 1280), 160) > 0.1  # corners skipped


def test_tissue_fully_covered_slide_keeps_everything() -> None:
    slide = SyntheticSlide((4096, 4096), "he", seed=2, tissue_fraction=1.0)
    assert tissue_mask(slide.thumbnail(16), "brightfield").all()


def test_fully_covered_written_fluorescence_slide_keeps_everything(tmp_path: Path) -> None:
    info = write_slide(
        tmp_path / "full.svs", shape=(1024, 1280), kind="fluorescence", tissue_fraction=1.0
    )
    with tifffile.TiffFile(info.path) as tif:
        thumb = tif.series[0].levels[-1].asarray()[None]
    assert tissue_mask(thumb, "fluorescence").all()


def test_small_holes_filled_and_specks_removed() -> None:
    thumb = np.full((3, 200, 200), 235, np.uint8)
    thumb[:, 40:160, 40:160] = np.array([210, 120, 190], np.uint8)[:, None, None]
    thumb[:, 100:103, 100:103] = 235  # a tiny hole in the tissue
    thumb[:, 5, 5] = np.array([210, 120, 190], np.uint8)  # one coloured speck of dust
    mask = tissue_mask(thumb, "he")
    assert mask[101, 101] and not mask[5, 5]


def test_otsu_separation_distinguishes_one_and_two_classes() -> None:
    rng = np.random.default_rng(1)
    assert otsu_separation(rng.normal(0, 1, 5000))[1] < 0.7
    two = np.concatenate([rng.normal(0, 1, 3000), rng.normal(8, 1, 2000)])
    threshold, separation = otsu_separation(two)
    assert separation > 0.9 and 2 < threshold < 6
    assert otsu_separation(np.zeros(10))[1] == 0.0


def test_select_blocks_margin() -> None:
    mask = np.zeros((8, 8), bool)
    mask[1, 1] = True  # covers level-0 [100, 200) in both axes; grown: [0, 300)
    assert select_blocks(mask, (800, 800), 200) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert select_blocks(np.zeros((8, 8), bool), (800, 800), 200) == []
    assert block_fraction_skipped(np.ones((8, 8), bool), (800, 800), 300) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    my=st.integers(2, 12),
    mx=st.integers(2, 12),
    Y=st.integers(16, 900),
    X=st.integers(16, 900),
    block=st.integers(8, 300),
    seed=st.integers(0, 10_000),
)
def test_select_blocks_never_misses_a_foreground_pixel(
    my: int, mx: int, Y: int, X: int, block: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((my, mx)) < 0.2
    blocks = set(select_blocks(mask, (Y, X), block))
    # every level-0 pixel whose thumbnail pixel is foreground lies in a selected block
    ys = np.minimum((np.arange(Y) * my) // Y, my - 1)
    xs = np.minimum((np.arange(X) * mx) // X, mx - 1)
    full = mask[ys][:, xs]
    for y, x in zip(*np.nonzero(full), strict=True):
        assert (y // block, x // block) in blocks
    assert all(0 <= by < -(-Y // block) and 0 <= bx < -(-X // block) for by, bx in blocks)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="modality"):
        tissue_mask(np.zeros((1, 8, 8)), "xray")
    with pytest.raises(ConfigError, match="thumb"):
        tissue_mask(np.zeros((1, 2, 8, 8)), "grey")
    with pytest.raises(ConfigError, match="block"):
        select_blocks(np.zeros((4, 4), bool), (10, 10), 0)


def test_mask_of_2d_thumbnail(tmp_path: Path) -> None:
    grey = np.zeros((64, 64), np.uint8)
    grey[16:48, 16:48] = 200
    assert tissue_mask(grey, "fluorescence")[32, 32]


@pytest.mark.parametrize("modality", ["grey", "fluorescence"])
def test_sparse_small_bright_objects_keep_their_blocks(modality: str) -> None:
    """Sparse cells on a dark dish are the objects, not dust: their blocks are kept."""
    rng = np.random.default_rng(0)
    side, block = 2304, 256
    image = np.full((side, side), 20, np.float32)
    yy, xx = np.mgrid[:side, :side]
    centres = rng.integers(20, side - 20, (40, 2))
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 170
    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    thumb = image[::4, ::4][None]
    chosen = set(select_blocks(tissue_mask(thumb, modality), (side, side), block))
    assert {(int(cy) // block, int(cx) // block) for cy, cx in centres} <= chosen


def test_margin_grows_the_selection_and_cells_follow_the_same_rule() -> None:
    from segpipe.tissue import tissue_cells

    mask = np.zeros((8, 8), bool)
    mask[3, 3] = True  # level-0 [300, 400); grown by one mask pixel: [200, 500)
    assert select_blocks(mask, (800, 800), 200) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert len(select_blocks(mask, (800, 800), 200, margin=120)) == 16
    cells = tissue_cells(mask, (800, 800), 100)
    assert cells.shape == (8, 8) and cells.sum() == 9 and cells[2:5, 2:5].all()
    grown = tissue_cells(mask, (800, 800), 100, margin=30)
    assert grown.sum() == 25 and grown[1:6, 1:6].all()
    # odd sizes: the last cell row / column is partial
    assert tissue_cells(mask, (790, 805), 100).shape == (8, 9)
    with pytest.raises(ConfigError, match="margin"):
        tissue_cells(mask, (800, 800), 100, margin=-1)


@settings(max_examples=30, deadline=None)
@given(
    my=st.integers(2, 10),
    mx=st.integers(2, 10),
    Y=st.integers(16, 600),
    X=st.integers(16, 600),
    cell=st.integers(8, 150),
    margin=st.integers(0, 60),
    seed=st.integers(0, 10_000),
)
def test_tissue_cells_cover_every_foreground_pixel_grown_by_the_margin(
    my: int, mx: int, Y: int, X: int, cell: int, margin: int, seed: int
) -> None:
    from segpipe.tissue import tissue_cells

    rng = np.random.default_rng(seed)
    mask = rng.random((my, mx)) < 0.15
    cells = tissue_cells(mask, (Y, X), cell, margin)
    ys = np.minimum((np.arange(Y) * my) // Y, my - 1)
    xs = np.minimum((np.arange(X) * mx) // X, mx - 1)
    full = ndi.binary_dilation(mask[ys][:, xs], np.ones((2 * margin + 1,) * 2, bool))
    kept = np.repeat(np.repeat(cells, cell, 0), cell, 1)[:Y, :X]
    assert not (full & ~kept).any()  # no level-0 pixel within the margin of tissue is dropped


@settings(max_examples=25, deadline=None)
@given(
    y=st.integers(8, 1500),
    x=st.integers(8, 1500),
    up=st.sampled_from([1, 3, 8]),
    cell=st.sampled_from([64, 128]),
    margin=st.integers(0, 40),
    seed=st.integers(0, 10_000),
)
def test_select_from_thumb_keeps_what_the_full_mask_keeps(
    y: int, x: int, up: int, cell: int, margin: int, seed: int
) -> None:
    """The working-resolution shortcut never drops a block or cell the thumbnail-sized mask
    keeps, and measures the same foreground fraction."""
    from segpipe.tissue import select_blocks_and_cells, select_from_thumb

    rng = np.random.default_rng(seed)
    thumb = np.zeros((1, y, x), np.uint8)
    for _ in range(3):  # bright rectangles of "tissue" on a dark background
        cy, cx = rng.integers(0, y), rng.integers(0, x)
        thumb[0, cy : cy + rng.integers(2, y // 2 + 3), cx : cx + rng.integers(2, x // 2 + 3)] = 180
    thumb += rng.integers(0, 20, thumb.shape, dtype=np.uint8)
    shape = (y * up, x * up)
    mask = tissue_mask(thumb, "fluorescence")
    blocks, cells = select_blocks_and_cells(mask, shape, 4 * cell, cell, margin)
    blocks2, cells2, fraction = select_from_thumb(thumb, "fluorescence", shape, 4 * cell, cell, margin)
    assert set(blocks) <= set(blocks2)
    assert not (cells & ~cells2).any()
    assert fraction == pytest.approx(float(mask.mean()), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_shifted_morphology_equals_scipy(shape: tuple[int, int], density: float, seed: int) -> None:
    """The shifted-slice closing the mask uses gives scipy's dilation then erosion, the
    outside counted as background, then as foreground (borders included), and keeps every
    pixel of the mask."""
    from skimage import morphology

    from segpipe.tissue._mask import _close_disk2

    mask = np.random.default_rng(seed).random(shape) < density
    disk = morphology.disk(2)
    want = ndi.binary_erosion(ndi.binary_dilation(mask, disk, border_value=0), disk, border_value=1)
    got = _close_disk2(mask)
    np.testing.assert_array_equal(got, want)
    assert not (mask & ~got).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("f", [2, 3, 4])
def test_block_mean_equals_float32_sums(dtype: type, f: int) -> None:
    """The integer block means of 8/16-bit thumbnails are the float32 sums' to the bit."""
    from segpipe.tissue._mask import _block_mean

    rng = np.random.default_rng(f)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    lo, hi = (info.min, info.max) if info else (-1e3, 1e3)
    thumb = rng.uniform(lo, hi, (2, 37, 50)).astype(dtype)
    small = np.asarray(thumb, np.float32)
    small = np.pad(small, ((0, 0), (0, -37 % f), (0, -50 % f)), mode="edge")
    c, py, px = small.shape
    small = small.reshape(c, py // f, f, px).sum(axis=2)
    want = small.reshape(c, py // f, px // f, f).sum(axis=3) / (f * f)
    got = _block_mean(thumb, f)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_all_tissue_and_parts_touching_three_sides_are_foreground() -> None:
    """Session 9: an H&E crop that is tissue everywhere got an empty mask (the split found
    nuclei in stroma and the specks were then removed), and a grey part touching three
    sides was taken for the background. Both are all foreground now; tissue on glass and a
    part on a dark background are still told apart."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256]
    nuclei = np.zeros((256, 256), bool)
    for y, x in rng.integers(5, 251, (80, 2)):
        nuclei |= (yy - y) ** 2 + (xx - x) ** 2 < 4
    for glass in (False, True):
        tissue = ((yy - 128) ** 2 + (xx - 100) ** 2 < 80**2) if glass else np.ones((256, 256), bool)
        he = np.empty((3, 256, 256), np.float32)
        he[:] = np.array([235, 235, 238], np.float32)[:, None, None]
        he[:, tissue] = np.array([230, 170, 210], np.float32)[:, None]
        he[:, tissue & nuclei] = np.array([90, 60, 150], np.float32)[:, None]
        he = (he + rng.normal(0, 3, he.shape)).clip(0, 255).astype(np.uint8)
        mask = tissue_mask(he, "brightfield")
        assert mask.all() if not glass else (mask[tissue].mean() > 0.95 and mask[~tissue].mean() < 0.05)
    part = np.full((256, 256), 20, np.uint8)
    part[100:] = 200  # touches the left, right and bottom sides
    assert tissue_mask(part, "grey").all()
    small = np.full((256, 256), 20, np.uint8)
    small[100:160, 100:160] = 200  # inside: the dark side is the background
    mask = tissue_mask(small, "grey")
    assert mask[110:150, 110:150].all() and not mask[:50].any()
