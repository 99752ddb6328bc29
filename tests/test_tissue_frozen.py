"""The quick tissue selection gives the same blocks, cells and foreground fraction as its
earlier, library-only implementation (frozen below as the reference), and each quick part
equals the library function it stands for."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage import morphology
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu

from segpipe.tissue import (
    MIN_SEPARATION,
    MIN_TIGHT_RATIO,
    WORK_SIZE,
    select_blocks,
    select_blocks_and_cells,
    select_from_thumb,
    tissue_cells,
    tissue_mask,
)
from segpipe.tissue._mask import (
    _MODALITIES,
    BORDER_MAJORITY,
    GLASS_MAX_SATURATION,
    _block_mean,
    _close_disk2,
    _work_mask,
)
from segpipe.tissue._select import _indices
from segpipe.tissue._threshold import (
    _percentiles,
    _remove_small_holes,
    _remove_small_objects,
    _threshold_otsu,
)

# ---- frozen reference: segpipe.tissue before the quick paths ---------------------------------


def ref_otsu_separation(values):
    v = np.asarray(values, np.float64).ravel()
    total = float(v.var())
    if v.size < 2 or total <= 1e-12:
        return float(v.mean()) if v.size else 0.0, 0.0
    t = float(threshold_otsu(v))
    low, high = v[v <= t], v[v > t]
    if low.size == 0 or high.size == 0:
        return t, 0.0
    w0, w1 = low.size / v.size, high.size / v.size
    between = w0 * w1 * (float(low.mean()) - float(high.mean())) ** 2
    return t, float(between / total)


def ref_tight_ratio(values, threshold):
    low, high = values[values <= threshold], values[values > threshold]
    if low.size < 2 or high.size < 2:
        return 0.0
    spread = min(float(low.std()), float(high.std()))
    return float(high.mean() - low.mean()) / max(spread, 1e-9)


def ref_score(thumb, modality):
    img = np.asarray(thumb, np.float32)
    if modality == "brightfield":
        if img.shape[0] >= 3:
            rgb = np.moveaxis(img[:3], 0, -1)
            rgb = rgb / max(float(rgb.max()), 1e-6)
            score = rgb2hsv(rgb)[..., 1]
        else:
            score = 1.0 - img[0] / max(float(img[0].max()), 1e-6)
        return ndi.gaussian_filter(score, 1.0)
    chans = []
    for c in img:
        lo, hi = np.percentile(c, (0.5, 99.5))
        chans.append((c - lo) / max(float(hi - lo), 1e-6))
    score = chans[0] if len(chans) == 1 else np.max(chans, axis=0)
    return ndi.gaussian_filter(score, 2.0 if modality == "fluorescence" else 1.0)


def ref_block_mean(thumb, f):
    y, x = thumb.shape[1:]
    small = np.asarray(thumb, np.float32)
    if y % f or x % f:
        small = np.pad(small, ((0, 0), (0, -y % f), (0, -x % f)), mode="edge")
    c, py, px = small.shape
    small = small.reshape(c, py // f, f, px).sum(axis=2)
    return small.reshape(c, py // f, px // f, f).sum(axis=3) / (f * f)


def ref_mask(thumb, mode):
    score = ref_score(thumb, mode)
    threshold, separation = ref_otsu_separation(score)
    if separation < MIN_SEPARATION and (
        mode == "grey" or ref_tight_ratio(score, threshold) < MIN_TIGHT_RATIO
    ):
        return np.ones(score.shape, bool)
    low_mean = float(score[score <= threshold].mean())
    high_mean = float(score[score > threshold].mean())
    # session 9: a brightfield split whose weak side is not glass, or a grey image whose
    # border lies on both sides, is all foreground
    if mode == "brightfield" and thumb.shape[0] >= 3 and low_mean > GLASS_MAX_SATURATION:
        return np.ones(score.shape, bool)
    border = np.concatenate([score[0], score[-1], score[:, 0], score[:, -1]])
    bright_border = float(np.mean(border > threshold))
    if mode == "grey" and 1 - BORDER_MAJORITY < bright_border < BORDER_MAJORITY:
        return np.ones(score.shape, bool)
    if mode == "grey" and bright_border >= BORDER_MAJORITY:
        mask = score < threshold + 0.5 * (high_mean - threshold)
    else:
        mask = score > threshold - 0.5 * (threshold - low_mean)
    area = mask.size
    mask = _close_disk2(mask) if min(mask.shape) > 8 else mask
    if mode == "brightfield":
        mask = morphology.remove_small_objects(mask, max_size=int(0.001 * area))
    return morphology.remove_small_holes(mask, max_size=int(0.01 * area))


def ref_integral(mask):
    grown = ndi.binary_dilation(mask, np.ones((3, 3), bool))
    out = np.zeros((grown.shape[0] + 1, grown.shape[1] + 1), np.int64)
    out[1:, 1:] = grown.cumsum(axis=0).cumsum(axis=1)
    return out


def ref_touching(mask, shape, size, margin, mask_px=None):
    mask = np.asarray(mask, bool)
    Y, X = (int(v) for v in shape)
    my, mx = mask.shape
    integral = ref_integral(mask)
    py, px = mask_px or (Y / my, X / mx)

    def ranges(n, m, s):
        start = np.arange(0, n, size)
        end = np.minimum(start + size, n)
        lo = np.floor(np.maximum(start - margin, 0) / s).astype(np.int64)
        hi = np.minimum(np.ceil(np.minimum(end + margin, n) / s).astype(np.int64), m)
        return lo, hi

    i0, i1 = ranges(Y, my, py)
    j0, j1 = ranges(X, mx, px)
    total = (
        integral[i1[:, None], j1[None, :]]
        - integral[i0[:, None], j1[None, :]]
        - integral[i1[:, None], j0[None, :]]
        + integral[i0[:, None], j0[None, :]]
    )
    return total > 0


def ref_select_from_thumb(thumb, modality, shape, block, cell, margin=0):
    thumb = np.asarray(thumb)
    if thumb.ndim == 2:
        thumb = thumb[None]
    mode = _MODALITIES[modality]
    y, x = thumb.shape[1:]
    f = max(1, -(-max(y, x) // WORK_SIZE))
    mask = ref_mask(ref_block_mean(thumb, f) if f > 1 else thumb, mode)
    Y, X = shape
    mask_px = (f * Y / y, f * X / x)
    blocks = _indices(ref_touching(mask, shape, block, margin, mask_px))
    cells = ref_touching(mask, shape, cell, margin, mask_px)
    wy = np.minimum(f, y - f * np.arange(mask.shape[0]))
    wx = np.minimum(f, x - f * np.arange(mask.shape[1]))
    fraction = float(wy @ mask.astype(np.float64) @ wx) / (y * x)
    return blocks, cells, fraction, mask


# ---- scenes ------------------------------------------------------------------------------------


def thumbnail(rng, shape, n_channels, dtype, kind):
    """Blobs on a background, with noise, specks and holes; or flat / unimodal scenes."""
    y, x = shape
    if kind == "flat":
        base = np.full(shape, 0.4)
    elif kind == "noise":
        base = rng.random(shape)
    else:
        smooth = ndi.gaussian_filter(rng.random(shape), rng.uniform(1, 8))
        blobs = smooth > np.quantile(smooth, rng.uniform(0.5, 0.97))
        base = np.where(blobs, rng.uniform(0.5, 0.9), rng.uniform(0.0, 0.3))
        base = base + rng.normal(0, rng.uniform(0.0, 0.08), shape)
        specks = rng.random(shape) < 0.002
        base[specks] = 1 - base[specks]
        if kind == "bright-background":
            base = 1 - base
    chans = [np.clip(base + rng.normal(0, 0.02, shape), 0, 1) for _ in range(n_channels)]
    img = np.stack(chans)
    if np.dtype(dtype).kind == "f":
        return (img * rng.uniform(1, 1000)).astype(dtype)
    return np.round(img * np.iinfo(dtype).max).astype(dtype)


def assert_same_selection(thumb, modality, shape, block, cell, margin):
    blocks, cells, fraction = select_from_thumb(thumb, modality, shape, block, cell, margin)
    want_blocks, want_cells, want_fraction, want_mask = ref_select_from_thumb(
        thumb, modality, shape, block, cell, margin
    )
    assert blocks == want_blocks
    np.testing.assert_array_equal(cells, want_cells)
    assert fraction == want_fraction  # the same float
    mask, _ = _work_mask(np.asarray(thumb), modality)
    np.testing.assert_array_equal(mask, want_mask)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    y=st.integers(9, 1100),
    x=st.integers(9, 1100),
    n_channels=st.sampled_from([1, 1, 2, 3]),
    dtype=st.sampled_from([np.uint8, np.uint8, np.uint16, np.int16, np.float32]),
    modality=st.sampled_from(["grey", "fluorescence", "brightfield"]),
    kind=st.sampled_from(["blobs", "blobs", "blobs", "bright-background", "flat", "noise"]),
)
def test_selection_equals_the_reference(seed, y, x, n_channels, dtype, modality, kind) -> None:
    rng = np.random.default_rng(seed)
    thumb = thumbnail(rng, (y, x), n_channels, dtype, kind)
    scale = int(rng.integers(1, 9))
    assert_same_selection(
        thumb, modality, (y * scale, x * scale), 256 * scale, 8 * scale, 3 * scale
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("modality", ["grey", "fluorescence"])
def test_selection_equals_the_reference_on_1024_grey_thumbnails(seed, modality) -> None:
    """The benchmark's case: a 1024² 8-bit grey image, its own thumbnail."""
    thumb = thumbnail(np.random.default_rng(seed), (1024, 1024), 1, np.uint8, "blobs")
    assert_same_selection(thumb, modality, (1024, 1024), 1024, 128, 17)
    assert_same_selection(thumb[:, :1000, :777], modality, (1000, 777), 1024, 128, 17)


# ---- the quick parts -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3000),
    dtype=st.sampled_from([np.uint8, np.uint16]),
    f=st.integers(1, 4),
    spread=st.integers(0, 5),
)
def test_percentiles_equal_numpy(seed, n, dtype, f, spread) -> None:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max if spread == 5 else 2**spread
    levels = rng.integers(0, top, n, endpoint=True).astype(dtype) * (f * f if spread < 5 else 1)
    levels = levels.astype(np.uint32) if f > 1 else levels
    channel = levels.astype(np.float32) / (f * f) if f > 1 else levels.astype(np.float32)
    got = _percentiles(channel, levels, f * f)
    want = np.percentile(channel, (0.5, 99.5))
    assert [type(v) for v in got] == [type(v) for v in want]
    assert np.array(got).tobytes() == want.tobytes()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 5000), levels=st.integers(2, 400))
def test_threshold_otsu_equals_skimage(seed, n, levels) -> None:
    rng = np.random.default_rng(seed)
    v = np.floor(rng.random(n) ** rng.uniform(0.3, 3) * levels) / rng.uniform(1, 100)
    if v.min() == v.max():
        return
    assert _threshold_otsu(v) == threshold_otsu(v)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    density=st.floats(0, 1),
    size=st.integers(0, 80),
)
def test_small_objects_and_holes_equal_skimage(seed, shape, density, size) -> None:
    mask = np.random.default_rng(seed).random(shape) < density
    np.testing.assert_array_equal(
        _remove_small_objects(mask, size), morphology.remove_small_objects(mask, max_size=size)
    )
    np.testing.assert_array_equal(
        _remove_small_holes(mask, size), morphology.remove_small_holes(mask, max_size=size)
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16])
@pytest.mark.parametrize("f", [2, 3, 5])
def test_block_mean_of_integers_equals_float32_sums(dtype, f) -> None:
    info = np.iinfo(dtype)
    thumb = np.random.default_rng(f).integers(info.min, info.max, (2, 23, 31), endpoint=True)
    thumb = thumb.astype(dtype)
    got, want = _block_mean(thumb, f), ref_block_mean(thumb, f)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_constant_scores_keep_the_old_tight_ratio_rule() -> None:
    """Nearly constant fluorescence: the mean splits the values, as before."""
    thumb = np.zeros((1, 40, 40), np.float32)
    thumb[0, 10:20, 10:20] = 1e-13  # scores below 1e-6: variance under 1e-12
    np.testing.assert_array_equal(
        tissue_mask(thumb, "fluorescence"), ref_mask(thumb, "fluorescence")
    )


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 50), st.integers(1, 50)),
    density=st.floats(0, 0.2),
    scale=st.floats(0.5, 40),
    size=st.integers(1, 300),
    margin=st.integers(0, 60),
)
def test_block_and_cell_selection_equals_the_summed_area_table(
    seed, shape, density, scale, size, margin
) -> None:
    mask = np.random.default_rng(seed).random(shape) < density
    level0 = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    want = ref_touching(mask, level0, size, margin)
    np.testing.assert_array_equal(tissue_cells(mask, level0, size, margin), want)
    assert select_blocks(mask, level0, size, margin) == _indices(want)
    blocks, cells = select_blocks_and_cells(mask, level0, size, max(1, size // 3), margin)
    assert blocks == _indices(want)
    np.testing.assert_array_equal(cells, ref_touching(mask, level0, max(1, size // 3), margin))
