"""Channel modes and percentile normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.color import rgb2hed

from segpipe.errors import ConfigError
from segpipe.models import BUILTIN_CARDS
from segpipe.models.testing import tiny_card
from segpipe.normalize import (
    ImageStats,
    convert_channels,
    image_stats,
    prepare,
    stats_from_image,
    thumbnail,
)

GREY = BUILTIN_CARDS["defects"]  # grey input, percentile normalisation
OTSU = BUILTIN_CARDS["classical"]  # grey input, Otsu normalisation
NUCLEAR = BUILTIN_CARDS["nuclei"]
RGB = tiny_card("semantic", in_channels=3, channel_mode="rgb")


def he_image(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB image (C, Y, X) uint8 with purple nuclei on pink; and the nuclei mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    nuclei = np.zeros((size, size), bool)
    for cy, cx in rng.integers(6, size - 6, (8, 2)):
        nuclei |= (yy - cy) ** 2 + (xx - cx) ** 2 < 16
    img = np.empty((3, size, size), np.float32)
    img[:] = np.array([235, 180, 210], np.float32)[:, None, None]  # eosin-pink background
    img[:, nuclei] = np.array([90, 60, 150], np.float32)[:, None]  # hematoxylin-purple nuclei
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), nuclei


def test_fluorescence_uses_the_first_channel() -> None:
    raw = np.stack([np.full((4, 5), 7, np.uint16), np.full((4, 5), 99, np.uint16)])
    for mode in ("grey", "nuclear"):
        out = convert_channels(raw, mode, "fluorescence")
        assert out.shape == (1, 4, 5) and out.dtype == np.float32
        assert (out == 7).all()


def test_brightfield_grey_is_inverted_so_objects_are_bright() -> None:
    img, nuclei = he_image()
    grey = convert_channels(img, "grey", "brightfield")[0]
    assert grey[nuclei].mean() > grey[~nuclei].mean() + 50


def test_grey_modality_with_rgb_uses_luminance() -> None:
    raw = np.zeros((3, 2, 2), np.uint8)
    raw[1] = 100
    out = convert_channels(raw, "grey", "grey")
    np.testing.assert_allclose(out, 71.54, rtol=1e-5)


def test_nuclear_he_matches_skimage_hematoxylin() -> None:
    img, nuclei = he_image()
    h = convert_channels(img, "nuclear", "brightfield")[0]
    reference = rgb2hed(np.moveaxis(img, 0, -1))[..., 0]
    assert np.corrcoef(h.ravel(), reference.ravel())[0, 1] > 0.999
    assert h[nuclei].mean() > h[~nuclei].mean()


def test_rgb_mode() -> None:
    grey = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    out = convert_channels(grey, "rgb", "grey")
    assert out.shape == (3, 2, 3) and (out == grey).all()
    rgba = np.random.default_rng(0).integers(0, 255, (4, 2, 3)).astype(np.uint8)
    out = convert_channels(rgba, "rgb", "brightfield")
    np.testing.assert_array_equal(out, rgba[:3])  # RGB as is, alpha dropped


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="modality"):
        convert_channels(np.zeros((1, 2, 2)), "grey", "xray")
    with pytest.raises(ConfigError, match=r"\(C, Y, X\)"):
        convert_channels(np.zeros((2, 2)), "grey", "grey")
    with pytest.raises(ConfigError, match="channel_mode"):
        convert_channels(np.zeros((1, 2, 2)), "lab", "grey")


def test_image_stats_are_percentiles_after_conversion() -> None:
    img, _ = he_image()
    stats = image_stats(img, GREY, "brightfield")
    grey = convert_channels(img, "grey", "brightfield")
    assert stats.low == (pytest.approx(float(np.percentile(grey, 1.0)), rel=1e-5),)
    assert stats.high == (pytest.approx(float(np.percentile(grey, 99.8)), rel=1e-5),)
    assert stats.high[0] < 0  # inverted luminance
    x = prepare(img, stats, GREY, "brightfield")
    assert x.dtype == np.float32 and x.shape == (1, 64, 64)
    assert np.mean(x < 0) == pytest.approx(0.01, abs=0.005)
    assert np.mean(x > 1) == pytest.approx(0.002, abs=0.002)


def test_rgb_stats_per_channel() -> None:
    img, _ = he_image()
    stats = image_stats(img, RGB, "brightfield")
    assert len(stats.low) == 3 and all(
        lo < hi for lo, hi in zip(stats.low, stats.high, strict=True)
    )
    assert prepare(img, stats, RGB, "brightfield").shape == (3, 64, 64)


def test_prepare_of_a_crop_is_the_crop_of_prepare() -> None:
    """Statistics are per image, so tiles agree exactly at their borders."""
    img, _ = he_image(size=96)
    stats = image_stats(img, NUCLEAR, "brightfield")
    whole = prepare(img, stats, NUCLEAR, "brightfield")
    crop = prepare(img[:, 17:60, 33:90], stats, NUCLEAR, "brightfield")
    np.testing.assert_array_equal(crop, whole[:, 17:60, 33:90])


def test_prepare_checks_the_stats_channels() -> None:
    img, _ = he_image()
    with pytest.raises(ConfigError, match="stats have 3 channels"):
        prepare(img, image_stats(img, RGB, "brightfield"), GREY, "brightfield")


def test_constant_image_does_not_divide_by_zero() -> None:
    raw = np.full((1, 8, 8), 5, np.uint8)
    stats = image_stats(raw, GREY, "grey")
    x = prepare(raw, stats, GREY, "grey")
    assert np.isfinite(x).all() and (x == 0).all()


def test_thumbnail_and_stats_from_image() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 200, (1, 1100, 900)).astype(np.uint8)
    img[:, 100:300, 100:300] = 250
    thumb = thumbnail(img, max_side=300)
    assert thumb.shape == (1, 275, 225) and thumb.dtype == np.uint8  # like an ingested pyramid level
    assert thumb.mean() == pytest.approx(img.mean(), rel=0.01)
    assert thumbnail(img, max_side=2048).shape == img.shape
    stats = stats_from_image(img, GREY, "grey", max_side=300)
    assert stats == image_stats(thumb, GREY, "grey")
    assert stats.high[0] == pytest.approx(250, abs=1)


def test_image_stats_validation_and_round_trip() -> None:
    stats = ImageStats(low=(1, 2), high=[3.5, 4])
    assert stats.low == (1.0, 2.0) and stats.high == (3.5, 4.0)
    assert ImageStats.from_dict(stats.to_dict()) == stats
    with pytest.raises(ConfigError):
        ImageStats(low=(1.0,), high=(1.0, 2.0))
    with pytest.raises(ConfigError):
        ImageStats(low=(float("nan"),), high=(1.0,))


def test_stats_from_image_match_the_pipeline_on_uint8_he() -> None:
    """segment_array's statistics equal those the pipeline takes from an ingested uint8
    pyramid level: the thumbnail keeps the dtype, so H&E optical density is not rescaled."""
    from segpipe.ingest import downsample2
    from segpipe.models import builtin_card
    from segpipe.normalize import stats_from_image, thumbnail
    from segpipe.synthetic import nuclei_sample

    card = builtin_card("nuclei")
    image, _ = nuclei_sample((600, 640), rng=3, modality="he")
    small = thumbnail(image, max_side=300)
    assert small.dtype == np.uint8
    level = downsample2(image)
    np.testing.assert_allclose(
        stats_from_image(image, card, "brightfield", max_side=300).low,
        image_stats(level, card, "brightfield").low,
        atol=0.05,
    )


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int8, np.int16]),
    n=st.integers(2, 3000),
    channels=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    q=st.floats(0, 100),
)
def test_integer_percentiles_equal_numpy(dtype, n, channels, seed, q):
    """image_stats reads 8/16-bit levels through a histogram: the same floats as np.percentile."""
    from segpipe.normalize import _percentiles

    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    x = rng.integers(info.min, info.max, size=(channels, n), endpoint=True).astype(dtype)
    x[:, : n // 2] //= 17  # ties and a skewed histogram
    qs = [q, 1.0, 99.8, 0.0, 100.0]
    # numpy interpolates in the input dtype, so a span over the dtype's range (int8 0 and
    # -128) overflows there (-129.28 for the 1st percentile); the same values in int64 do not
    np.testing.assert_array_equal(_percentiles(x, qs), np.percentile(x.astype(np.int64), qs, axis=1))
    wide = np.array([[0, -128]], np.int8)
    np.testing.assert_array_equal(_percentiles(wide, [1.0]), [[-126.72]])


def test_otsu_normalisation_maps_the_otsu_threshold_to_one_half() -> None:
    """The classical models' fixed threshold 0.5 is the image's Otsu threshold, for 8-bit,
    16-bit (histogram path) and float levels alike, whatever the brightest pixels are."""
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    img = rng.normal(20, 3, (1, 128, 128))
    img[:, 40:80, 30:70] = rng.normal(90, 5, (40, 40))  # the objects
    img[:, 5:8, 5:8] = 250  # one saturated blob: the percentiles alone would put 0.5 near 135
    for dtype in (np.uint8, np.uint16, np.float32):
        x = np.clip(img, 0, 255).astype(dtype)
        stats = image_stats(x, OTSU, "grey")
        t = threshold_otsu(x[0])
        assert stats.low == (pytest.approx(float(np.percentile(x, 1.0))),)
        y = prepare(np.full((1, 1, 1), t, dtype), stats, OTSU, "grey")
        assert float(y[0, 0, 0]) == pytest.approx(0.5, abs=1e-3), dtype
        objects = prepare(x, stats, OTSU, "grey")[0] > 0.5
        assert objects[40:80, 30:70].mean() > 0.99 and objects[10:30, 80:120].mean() < 0.01
    flat = np.full((1, 16, 16), 7, np.uint8)  # no threshold above the low percentile
    assert image_stats(flat, OTSU, "grey") == image_stats(flat, GREY, "grey")



def fluorescence_field(
    size: int, radius: int, levels: Sequence[int], seed: int = 0
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A (1, size, size) uint16 fluorescence-like field: background ~300 ± 30 and one disc
    per level (its brightness), along the diagonal; and the discs' centres."""
    rng = np.random.default_rng(seed)
    img = rng.normal(300, 30, (size, size))
    yy, xx = np.mgrid[:size, :size]
    centres = [((i + 1) * size // (len(levels) + 1),) * 2 for i in range(len(levels))]
    for (cy, cx), level in zip(centres, levels, strict=True):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] += level - 300
    return np.clip(img, 0, 65535).astype(np.uint16)[None], centres


@pytest.mark.parametrize("speck", [False, True])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32])
def test_otsu_ignores_a_few_hot_pixels(speck, dtype) -> None:
    """Four saturated pixels (or a 2×3 speck at 40000, below the dtype's maximum) among six
    nuclei of 81 px (0.19 % of the field) do not move the Otsu threshold: unclipped, their
    squared distance outweighs the nuclei and the threshold went above all six (≈6070)."""
    clean, centres = fluorescence_field(512, 5, [2500, 3000, 3500, 4500, 5000, 6000])
    spotted = clean.copy()
    if speck:
        spotted[0, 100:102, 300:303] = 40000
    else:
        spotted[0, [100, 400, 60, 450], [300, 200, 450, 30]] = 65535
    ref = image_stats(clean.astype(dtype), OTSU, "fluorescence")
    stats = image_stats(spotted.astype(dtype), OTSU, "fluorescence")
    assert stats.low == ref.low
    assert stats.high[0] == pytest.approx(ref.high[0], abs=2.0)
    y = prepare(spotted.astype(dtype), stats, OTSU, "fluorescence")[0]
    assert all(y[cy, cx] > 0.5 for cy, cx in centres)
    assert (y > 0.5).mean() < 0.01


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_otsu_still_finds_rare_objects(dtype) -> None:
    """The clip (top 0.01 %) spares objects as rare as three small nuclei covering 0.09 % of
    the field — a clip at the card's high percentile (99.8) would not — also with two hot
    pixels, which the unclipped threshold put above the nuclei."""
    img, centres = fluorescence_field(512, 5, [2300, 2300, 2300], seed=1)
    spotted = img.copy()
    spotted[0, [50, 400], [300, 100]] = 65535
    for x in (img.astype(dtype), spotted.astype(dtype)):
        stats = image_stats(x, OTSU, "fluorescence")
        assert stats.low[0] + (stats.high[0] - stats.low[0]) / 2 < 1000
        y = prepare(x, stats, OTSU, "fluorescence")[0]
        assert all(y[cy, cx] > 0.5 for cy, cx in centres)
        assert (y > 0.5).mean() < 0.002


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int16]),
    n=st.integers(2, 3000),
    hot=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_clipped_otsu_of_the_histogram_equals_skimage(dtype, n, hot, seed) -> None:
    """8/16-bit levels: Otsu of the clipped histogram equals skimage's threshold_otsu of the
    values clipped at the ceiling of their 99.99th percentile."""
    from skimage.filters import threshold_otsu

    from segpipe.normalize import _OTSU_CLIP, _histograms, _otsu, _percentiles

    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    x = rng.normal(100, 20, (1, n)) * rng.choice([1, 8], (1, n), p=[0.9, 0.1])
    x[0, rng.integers(0, n, hot)] = info.max
    x = np.clip(x, info.min, info.max).astype(dtype)
    hists = _histograms(x)
    clip = _percentiles(x, [_OTSU_CLIP], hists)[0]
    clipped = np.minimum(x[0], np.ceil(clip[0]).astype(dtype))
    expected = threshold_otsu(clipped) if clipped.min() < clipped.max() else clipped[0]
    assert _otsu(x, hists, clip)[0] == expected
