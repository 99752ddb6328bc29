"""Tiling on the global grid, windows versus whole images, segment_array."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import segpipe.predict as P
from segpipe.errors import ConfigError, ModelError
from segpipe.models import BUILTIN_CARDS, Model, ModelCard, build_module, load_model
from segpipe.models.testing import tiny_model
from segpipe.normalize import ImageStats, image_stats, prepare
from segpipe.predict import (
    as_channel_first,
    predict_window,
    segment_array,
    segment_window,
    stats_from_image,
)

torch.set_num_threads(1)


def blobs(shape: tuple[int, int] = (300, 340), n: int = 25, seed: int = 0) -> np.ndarray:
    """uint8 (Y, X) bright discs (radius 4–9) on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 20.0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx, r in zip(
        rng.integers(10, shape[0] - 10, n),
        rng.integers(10, shape[1] - 10, n),
        rng.integers(4, 10, n),
        strict=True,
    ):
        sl = (slice(max(cy - r, 0), cy + r + 1), slice(max(cx - r, 0), cx + r + 1))
        img[sl][(yy[sl] - cy) ** 2 + (xx[sl] - cx) ** 2 <= r * r] = 170
    return np.clip(img + rng.normal(0, 5, shape), 0, 255).astype(np.uint8)


def prepared(img: np.ndarray, model: Model) -> np.ndarray:
    raw = img[None]
    return prepare(raw, image_stats(raw, model.card, "grey"), model.card, "grey")


CLASSICAL = load_model("classical", device="cpu")


@pytest.mark.parametrize(
    ("y0", "x0", "h", "w"), [(37, 101, 150, 170), (0, 0, 130, 90), (160, 200, 140, 140)]
)
def test_window_equals_whole_image_exactly_for_classical(y0: int, x0: int, h: int, w: int) -> None:
    x = prepared(blobs((300, 340)), CLASSICAL)
    whole = predict_window(CLASSICAL, x, (0, 0))
    part = predict_window(CLASSICAL, x[:, y0 : y0 + h, x0 : x0 + w], (y0, x0), batch=3)
    m = CLASSICAL.card.halo
    # interior: at least halo away from window edges that are not image edges
    iy0 = 0 if y0 == 0 else m
    ix0 = 0 if x0 == 0 else m
    iy1 = h if y0 + h == 300 else h - m
    ix1 = w if x0 + w == 340 else w - m
    np.testing.assert_array_equal(
        part[:, iy0:iy1, ix0:ix1], whole[:, y0 + iy0 : y0 + iy1, x0 + ix0 : x0 + ix1]
    )


def test_window_differs_from_whole_only_near_its_edges() -> None:
    """The comparison above can fail: the window's reflect padding changes edge pixels."""
    x = prepared(blobs((300, 340)), CLASSICAL)
    whole = predict_window(CLASSICAL, x, (0, 0))
    part = predict_window(CLASSICAL, x[:, 37:187, 101:271], (37, 101))
    assert not np.array_equal(part, whole[:, 37:187, 101:271])


@pytest.mark.parametrize("task", ["instance", "semantic"])
def test_window_equals_whole_image_for_a_tiny_unet(task: str) -> None:
    model = tiny_model(task, seed=1)
    card = model.card
    x = prepared(blobs((260, 300), n=12), model)
    whole = predict_window(model, x, (0, 0), batch=4)
    assert whole.shape == (card.n_outputs, 260, 300)
    # an arbitrary window: equal to float tolerance at >= halo from its edges
    y0, x0, h, w = 45, 70, 150, 170
    part = predict_window(model, x[:, y0 : y0 + h, x0 : x0 + w], (y0, x0), batch=5)
    m = card.halo
    np.testing.assert_allclose(
        part[:, m:-m, m:-m], whole[:, y0 + m : y0 + h - m, x0 + m : x0 + w - m], atol=1e-5
    )
    # a chunk aligned to the tile stride plus halo: equal over the whole chunk core
    s = card.stride
    cy, cx = s, s
    win = x[:, cy - m : cy + s + m, cx - m : cx + s + m]
    part = predict_window(model, win, (cy - m, cx - m))
    np.testing.assert_allclose(part[:, m:-m, m:-m], whole[:, cy : cy + s, cx : cx + s], atol=1e-5)


def test_predict_window_small_and_single_row_windows() -> None:
    x = prepared(blobs((40, 50), n=2), CLASSICAL)
    assert predict_window(CLASSICAL, x, (1000, 3)).shape == (1, 40, 50)
    assert predict_window(CLASSICAL, x[:, :1], (5, 5)).shape == (1, 1, 50)
    assert predict_window(CLASSICAL, x[:, :0], (0, 0)).shape == (1, 0, 50)


def test_predict_window_errors() -> None:
    with pytest.raises(ModelError, match=r"\(1, Y, X\) window"):
        predict_window(CLASSICAL, np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ConfigError, match="origin"):
        predict_window(CLASSICAL, np.zeros((1, 8, 8), np.float32), (-1, 0))


def test_segment_window_returns_segmentation() -> None:
    img = blobs()
    stats = stats_from_image(img[None], CLASSICAL.card, "grey")
    seg = segment_window(CLASSICAL, img[None], stats, (0, 0), "grey")
    assert seg.labels.shape == img.shape and seg.labels.dtype == np.uint32
    assert 15 <= seg.labels.max() <= 25
    assert (seg.labels[img > 120] > 0).mean() > 0.95


def test_segment_array_axis_handling() -> None:
    img = blobs((120, 150), n=8)
    ref = segment_array(img, model="classical")
    assert ref.shape == (120, 150) and ref.dtype == np.uint32 and ref.max() > 0
    rgb = np.repeat(img[..., None], 3, axis=-1)
    for variant in (rgb, np.moveaxis(rgb, -1, 0), np.stack([img, img // 2])):
        np.testing.assert_array_equal(
            segment_array(variant, "classical", modality="fluorescence"), ref
        )
    rgba = np.concatenate([rgb, np.full((120, 150, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(segment_array(rgba, "classical"), segment_array(rgb, "classical"))
    assert segment_array(img > 100, "classical").max() == ref.max()
    with pytest.raises(ConfigError, match="shape"):
        segment_array(np.zeros((2, 3, 4, 5)), "classical")


def test_as_channel_first() -> None:
    assert as_channel_first(np.zeros((5, 6))).shape == (1, 5, 6)
    assert as_channel_first(np.zeros((50, 60, 4))).shape == (4, 50, 60)
    assert as_channel_first(np.zeros((7, 50, 60))).shape == (7, 50, 60)
    assert as_channel_first(np.zeros((3, 50, 2))).shape == (3, 50, 2)


def test_brightfield_dark_objects_are_found() -> None:
    img = 255 - blobs((120, 150), n=8)  # dark discs on bright: brightfield-like
    rgb = np.repeat(img[..., None], 3, axis=-1)
    labels = segment_array(rgb, "classical")  # uint8 RGB → brightfield → inverted grey
    bright = segment_array(255 - img, "classical")
    # the same objects; the inverted luminance is float, whose Otsu threshold comes from 256
    # bins over its range rather than the exact 8-bit histogram, so edges may move a pixel
    assert labels.max() == bright.max() == 8
    assert ((labels > 0) & (bright > 0)).sum() / ((labels > 0) | (bright > 0)).sum() > 0.97


def test_stats_argument_is_used() -> None:
    img = blobs((100, 100), n=5)
    assert segment_array(img, "classical").max() > 0
    assert segment_array(img, "classical", stats=ImageStats(low=(0.0,), high=(1000.0,))).max() == 0


def mpp_model(mpp: float) -> Model:
    card = ModelCard(
        **{**BUILTIN_CARDS["classical"].model_dump(), "name": "classical-mpp", "mpp": mpp}
    )
    return Model(build_module(card), card, "cpu")


def test_segment_array_resamples_to_the_model_resolution() -> None:
    model = mpp_model(0.5)
    small = blobs((100, 120), n=8, seed=3)
    big = np.kron(small, np.ones((2, 2), np.uint8))  # the same scene at 0.25 µm/px
    ref = segment_array(small, model, mpp=0.5)
    out = segment_array(big, model, mpp=0.25)
    assert out.shape == big.shape
    assert out.max() == ref.max()
    up = np.kron(ref > 0, np.ones((2, 2), bool))
    iou = ((out > 0) & up).sum() / ((out > 0) | up).sum()
    assert iou > 0.9
    # without mpp no resampling happens; with mpp the prediction runs on a 2x smaller grid
    np.testing.assert_array_equal(
        segment_array(big, model) > 0, segment_array(big, model, mpp=0.5) > 0
    )
    with pytest.raises(ConfigError, match="mpp"):
        segment_array(big, model, mpp=-1.0)


def test_segment_array_predicts_like_the_pipeline() -> None:
    """Learned models in one pass (the engine's windows), near-equal pixel sizes unresampled."""
    model = tiny_model("instance", seed=3)
    img = blobs((200, 232), n=12, seed=5)
    stats = stats_from_image(img[None], model.card, "grey")
    one_pass = P.segment_window(model, img[None], stats, (0, 0), "grey", grid="window").labels
    np.testing.assert_array_equal(segment_array(img, model, modality="grey", stats=stats), one_pass)
    scaled = mpp_model(0.5)
    assert P.model_scale(0.54, scaled.card) == 1.0 and P.model_scale(0.56, scaled.card) == pytest.approx(1.12)
    np.testing.assert_array_equal(segment_array(img, scaled, mpp=0.54), segment_array(img, scaled))
    assert P.default_grid(CLASSICAL.card) == "global" and P.default_grid(model.card) == "window"
    # a pixel size far coarser than the model's (a screen dpi taken for a scan) is refused,
    # not enlarged 700× (which asked for 122 GiB)
    assert P.model_scale(4.0, scaled.card) == pytest.approx(8.0)
    with pytest.raises(ConfigError, match=r"352.7 µm/px is 705× the model's 0.5 µm/px.*ingest.mpp"):
        segment_array(img, scaled, mpp=352.7)


def test_scaled_windows_agree_with_the_whole_image() -> None:
    model = mpp_model(0.5)
    img = blobs((200, 240), n=15, seed=4)[None]
    stats = stats_from_image(img, model.card, "grey")
    x = prepare(img, stats, model.card, "grey")
    for scale in (0.5, 0.75, 2.0):
        whole = P._predict_scaled(model, x, (0, 0), scale, batch=8)
        assert whole.shape == (1, 200, 240)
        y0, x0 = 60, 80  # even origin: on the shared model grid for scale 0.5
        part = P._predict_scaled(model, x[:, y0:180, x0:220], (y0, x0), scale, batch=8)
        m = 48
        np.testing.assert_allclose(
            part[:, m:-m, m:-m], whole[:, y0 + m : 180 - m, x0 + m : 220 - m], atol=1e-4
        )


def test_segment_window_rejects_bad_scale() -> None:
    img = blobs((40, 40), n=2)[None]
    with pytest.raises(ConfigError, match="scale"):
        segment_window(
            CLASSICAL, img, stats_from_image(img, CLASSICAL.card, "grey"), (0, 0), "grey", scale=0
        )


def test_contract_segment_array_classical_on_a_2300_px_image() -> None:
    img = blobs((2300, 2300), n=120, seed=0)
    labels = segment_array(img, model="classical")
    assert labels.shape == (2300, 2300) and labels.dtype == np.uint32
    assert 80 <= labels.max() <= 120


def test_public_api() -> None:
    import segpipe

    assert P.segment_array is segment_array
    assert segpipe.segment_array is segment_array
    assert segpipe.load_model("classical", device="cpu") is CLASSICAL


@settings(max_examples=25, deadline=None)
@given(
    y0=st.integers(0, 150),
    x0=st.integers(0, 150),
    h=st.integers(1, 150),
    w=st.integers(1, 150),
)
def test_any_window_matches_the_whole_image_at_halo_from_its_edges(
    y0: int, x0: int, h: int, w: int
) -> None:
    x = WHOLE_INPUT[:, y0 : y0 + h, x0 : x0 + w]
    part = predict_window(CLASSICAL, x, (y0, x0))
    m = CLASSICAL.card.halo
    ref = WHOLE_PROBS[:, y0 : y0 + h, x0 : x0 + w]
    assert part.shape == ref.shape
    np.testing.assert_array_equal(part[:, m:-m, m:-m], ref[:, m:-m, m:-m])


WHOLE_INPUT = prepared(blobs((300, 300), n=20, seed=7), CLASSICAL)
WHOLE_PROBS = predict_window(CLASSICAL, WHOLE_INPUT, (0, 0))


@pytest.mark.parametrize("origin", [(64, 128), (16, 48)])
def test_window_grid_matches_the_whole_image_away_from_its_edges(origin: tuple[int, int]) -> None:
    """One forward pass per window (the pipeline's grid for learned models) agrees with the
    global grid at least ``card.halo`` from the window's edges when the origin is aligned to
    the network's down-sampling factor."""
    model = tiny_model("instance", seed=3)
    halo = model.card.halo
    rng = np.random.default_rng(0)
    image = rng.random((1, 320, 384), dtype=np.float32)
    whole = predict_window(model, image, (0, 0))
    y0, x0 = origin
    window = image[:, y0 : y0 + 160, x0 : x0 + 224]
    part = predict_window(model, window, (y0, x0), grid="window")
    assert part.shape == (model.card.n_outputs, 160, 224)
    inner = (slice(None), slice(halo, -halo), slice(halo, -halo))
    expect = whole[:, y0 : y0 + 160, x0 : x0 + 224]
    np.testing.assert_allclose(part[inner], expect[inner], atol=1e-4)
    with pytest.raises(ConfigError, match="grid"):
        predict_window(model, window, (y0, x0), grid="tiles")


def _cells_mask(shape: tuple[int, int], origin: tuple[int, int], cell: int,
                cells: list[tuple[int, int]]) -> np.ndarray:  # fmt: skip
    """A window mask holding one pixel in each listed image-anchored cell (cy, cx)."""
    mask = np.zeros(shape, bool)
    for cy, cx in cells:
        mask[cy * cell - origin[0] + 3, cx * cell - origin[1] + 5] = True
    return mask


def _in_cells(shape: tuple[int, int], origin: tuple[int, int], cell: int,
              cells: list[tuple[int, int]]) -> np.ndarray:  # fmt: skip
    yy = (np.arange(shape[0]) + origin[0]) // cell
    xx = (np.arange(shape[1]) + origin[1]) // cell
    return np.isin(yy[:, None] * 1000 + xx[None, :], [cy * 1000 + cx for cy, cx in cells])


def test_masked_window_equals_the_full_window_in_its_cells_classical() -> None:
    """Pointwise model, global grid: bit for bit inside the predicted cells, 0 elsewhere."""
    img = blobs((300, 340), n=40, seed=4)[None]
    stats = image_stats(img, CLASSICAL.card, "grey")
    origin, cell = (16, 32), 64
    window = img[:, 16:, 32:]
    cells = [(1, 1), (1, 2), (4, 4)]
    mask = _cells_mask(window.shape[1:], origin, cell, cells)
    full = P.window_probabilities(CLASSICAL, window, stats, origin, "grey")
    part = P.window_probabilities(CLASSICAL, window, stats, origin, "grey", mask=mask, cell=cell)
    inside = _in_cells(window.shape[1:], origin, cell, cells)
    np.testing.assert_array_equal(part[:, inside], full[:, inside])
    assert not part[:, ~inside].any()
    labels = segment_window(CLASSICAL, window, stats, origin, "grey", mask=mask, cell=cell).labels
    assert labels.max() > 0 and not labels[~inside].any()
    # a full mask is the unmasked window
    every = np.ones(window.shape[1:], bool)
    np.testing.assert_array_equal(
        P.window_probabilities(CLASSICAL, window, stats, origin, "grey", mask=every), full
    )
    empty = P.window_probabilities(CLASSICAL, window, stats, origin, "grey", mask=~every)
    assert not empty.any()


def test_masked_window_predicts_what_is_cheaper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Global grid: the masked cells' passes when they need fewer tiles than the window,
    else one pass over the window; either way the cells get the window's values."""
    img = blobs((1100, 1100), n=200, seed=5)[None]  # 3 × 3 global tiles (stride 512)
    stats = image_stats(img, CLASSICAL.card, "grey")
    passes: list[tuple[int, ...]] = []
    real = P.predict_window

    def counting(model, window, *args, **kwargs):  # type: ignore[no-untyped-def]
        passes.append(window.shape)
        return real(model, window, *args, **kwargs)

    monkeypatch.setattr(P, "predict_window", counting)
    full = P.window_probabilities(CLASSICAL, img, stats, (0, 0), "grey")
    # one corner cell: one small pass; four cells astride tile borders: their passes would
    # need 2 × 2 tiles each, more than the window's 9, so the window is predicted once
    for cells, whole in (([(0, 0)], False), ([(3, 3), (3, 7), (7, 3), (7, 7)], True)):
        passes.clear()
        mask = _cells_mask(img.shape[1:], (0, 0), 128, cells)
        part = P.window_probabilities(CLASSICAL, img, stats, (0, 0), "grey", mask=mask)
        inside = _in_cells(img.shape[1:], (0, 0), 128, cells)
        np.testing.assert_array_equal(part[:, inside], full[:, inside])
        assert not part[:, ~inside].any()
        if whole:
            assert passes == [img.shape]
        else:
            assert len(passes) == 1 and passes[0][1] * passes[0][2] < 0.1 * img.shape[1] * img.shape[2]


@pytest.mark.parametrize("scale", [1.0, 0.75])
def test_masked_window_matches_the_full_window_for_a_unet(scale: float) -> None:
    """One pass per rectangle with the card's halo of context: float tolerance; the
    background cells get background probabilities (label 0, class 0)."""
    model = tiny_model("semantic", seed=5)
    rng = np.random.default_rng(1)
    raw = (rng.random((1, 256, 320)) * 255).astype(np.uint8)
    stats = image_stats(raw, model.card, "grey")
    origin, cell = (64, 0), 64
    cells = [(1, 0), (2, 3), (2, 4), (4, 1)]
    mask = _cells_mask(raw.shape[1:], origin, cell, cells)
    kw = {"grid": "window", "scale": scale}
    full = P.window_probabilities(model, raw, stats, origin, "grey", **kw)
    part = P.window_probabilities(model, raw, stats, origin, "grey", mask=mask, cell=cell, **kw)
    inside = _in_cells(raw.shape[1:], origin, cell, cells)
    np.testing.assert_allclose(part[:, inside], full[:, inside], atol=1e-4)
    np.testing.assert_array_equal(part[0, ~inside], 1.0)
    seg = segment_window(model, raw, stats, origin, "grey", mask=mask, cell=cell, **kw)
    assert not seg.labels[~inside].any() and not seg.classes[~inside].any()


def test_masked_window_errors() -> None:
    raw = np.zeros((1, 40, 50), np.uint8)
    stats = ImageStats(low=(0.0,), high=(1.0,))
    with pytest.raises(ConfigError, match="mask shape"):
        segment_window(CLASSICAL, raw, stats, mask=np.ones((40, 49), bool))
    with pytest.raises(ConfigError, match="cell"):
        segment_window(CLASSICAL, raw, stats, mask=np.ones((40, 50), bool), cell=24)
