"""Per-region statistics: block partials merged by label equal skimage on the whole image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label, regionprops_table

from segpipe.regions import COLUMNS, Partial, finalize, merge_partials, partial_stats, regions_table
from segpipe.tiling import BlockGrid

PROPS = {
    "area": "area_px",
    "centroid-0": "centroid_y",
    "centroid-1": "centroid_x",
    "bbox-0": "bbox_y0",
    "bbox-1": "bbox_x0",
    "bbox-2": "bbox_y1",
    "bbox-3": "bbox_x1",
    "orientation": "orientation",
    "eccentricity": "eccentricity",
    "axis_major_length": "major_axis_px",
    "axis_minor_length": "minor_axis_px",
    "perimeter": "perimeter_px",
}


def scene(seed: int, shape: tuple[int, int] = (57, 63), n_channels: int = 2):
    rng = np.random.default_rng(seed)
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(rng.random(shape), 2.0)
    labels = label(smooth > np.quantile(smooth, 0.55), connectivity=2).astype(np.uint32)
    labels[labels == 3] = 0  # a gap in the ids, like stitched labels have
    image = rng.integers(0, 60000, size=(n_channels, *shape)).astype(np.uint16)
    return labels, image


def blocked_partial(labels, image, block, halo=2, classes=None) -> Partial:
    """Measure every block's core with its window as context, merge in shuffled order."""
    grid = BlockGrid(labels.shape, block, halo)
    parts = []
    for b in grid.blocks():
        y0, x0, y1, x1 = grid.window(b)
        cls = None if classes is None else classes[y0:y1, x0:x1]
        parts.append(
            partial_stats(
                labels[y0:y1, x0:x1], image[:, y0:y1, x0:x1], (y0, x0), cls,
                core=grid.core_in_window(b),
            )
        )  # fmt: skip
    rng = np.random.default_rng(0)
    order = rng.permutation(len(parts))
    return merge_partials([parts[i] for i in order])


def assert_matches_skimage(cols: dict, labels: np.ndarray, image: np.ndarray) -> None:
    ref = regionprops_table(
        labels.astype(np.int64),
        intensity_image=np.moveaxis(image, 0, -1).astype(np.float64),
        properties=["label", "area", "centroid", "bbox", "orientation", "eccentricity",
                    "axis_major_length", "axis_minor_length", "perimeter", "intensity_mean",
                    "intensity_std", "intensity_min", "intensity_max"],
    )  # fmt: skip
    np.testing.assert_array_equal(cols["label"], ref["label"])
    for theirs, ours in PROPS.items():
        np.testing.assert_allclose(cols[ours], ref[theirs], rtol=1e-9, atol=1e-9, err_msg=ours)
    for c in range(image.shape[0]):
        for stat in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(
                cols[f"{stat}_intensity"][:, c], ref[f"intensity_{stat}-{c}"], rtol=1e-9, atol=1e-7
            )


@pytest.mark.parametrize("block", [(57, 63), (16, 16), (7, 9), (5, 31)])
def test_blocked_partials_equal_regionprops_on_whole_image(block) -> None:
    labels, image = scene(1)
    cols = finalize(blocked_partial(labels, image, block), mpp=0.5, image_id="img")
    assert len(cols["label"]) > 5
    assert_matches_skimage(cols, labels, image)
    np.testing.assert_allclose(cols["area_um2"], cols["area_px"] * 0.25)
    assert set(cols) == set(COLUMNS)
    assert (cols["image_id"] == "img").all()


def test_regions_table_on_whole_image_matches_skimage() -> None:
    labels, image = scene(2, (40, 45), n_channels=3)
    cols = regions_table(labels, image)
    assert_matches_skimage(cols, labels, image)
    assert np.isnan(cols["area_um2"]).all()
    assert (cols["class"] == "object").all()


def test_objects_touching_image_edges_and_single_pixels() -> None:
    labels = np.zeros((9, 10), np.uint32)
    labels[0, 0] = 1  # a single pixel in the corner
    labels[:, 9] = 2  # a line along the right edge
    labels[3:6, 2:8] = 4
    labels[4, 4] = 5  # a hole filled by another object
    image = np.arange(90, dtype=np.float64).reshape(1, 9, 10)
    assert_matches_skimage(finalize(blocked_partial(labels, image, (4, 3))), labels, image)


def test_class_is_the_majority_class() -> None:
    labels = np.array([[1, 1, 1, 0, 2]], np.uint32)
    classes = np.array([[2, 1, 2, 0, 1]], np.uint8)
    cols = regions_table(labels, np.ones((1, 1, 5)), classes=classes, class_names=["bg", "a", "b"])
    assert cols["class"].tolist() == ["b", "a"]


def test_empty_columns_are_typed() -> None:
    cols = regions_table(np.zeros((8, 8), np.uint32), np.zeros((2, 8, 8)))
    assert set(cols) == set(COLUMNS)
    assert all(len(v) == 0 for v in cols.values())
    assert cols["label"].dtype == np.uint32 and cols["area_px"].dtype == np.int64
    assert cols["mean_intensity"].shape == (0, 2)
    merged = merge_partials([Partial.empty(2), Partial.empty(2)])
    assert len(merged) == 0


def _assert_partials_close(a: Partial, b: Partial) -> None:
    for name, va in a._asdict().items():
        np.testing.assert_allclose(va, getattr(b, name), rtol=1e-9, atol=1e-6, err_msg=name)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), cuts=st.lists(st.integers(1, 40), min_size=2, max_size=5))
def test_merge_is_associative_and_commutative(seed: int, cuts: list[int]) -> None:
    labels, image = scene(seed, (41, 41), n_channels=1)
    classes = (labels % 3).astype(np.uint8)
    edges = sorted({0, 41, *cuts})
    parts = [
        partial_stats(labels[y0:y1], image[:, y0:y1], (y0, 0), classes[y0:y1])
        for y0, y1 in zip(edges[:-1], edges[1:], strict=True)
    ]
    flat = merge_partials(parts)
    rev = merge_partials(parts[::-1])
    nested = merge_partials([merge_partials(parts[:1]), merge_partials(parts[1:])])
    _assert_partials_close(flat, rev)
    _assert_partials_close(flat, nested)
    whole = partial_stats(labels, image, (0, 0), classes)
    # everything but the perimeter (cut strips lose their context) equals the whole image
    for name in ("label", "count", "mean_y", "mean_x", "m2_yy", "m2_xx", "m2_xy", "bbox",
                 "mean_v", "m2_v", "min_v", "max_v", "class_counts"):  # fmt: skip
        np.testing.assert_allclose(getattr(flat, name), getattr(whole, name), rtol=1e-9, atol=1e-6)


def test_relabel_merges_rows() -> None:
    labels, image = scene(4, (20, 20), 1)
    part = partial_stats(labels, image)
    merged = part.relabel(np.ones(len(part), np.uint32) * 7)
    assert merged.label.tolist() == [7] and merged.count[0] == (labels > 0).sum()
