"""``partial_stats`` gives the same floats, ids and counts, to the bit, as its earlier
sort-based implementation (frozen below as the reference) on varied label images."""

from __future__ import annotations

from math import sqrt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from segpipe.regions import Partial, partial_stats

# ---- frozen reference: segpipe.regions.partial_stats before the run-based rewrite ----------

_W = np.zeros(50, np.float64)
_W[[5, 7, 15, 17, 25, 27]] = 1.0
_W[[21, 33]] = sqrt(2)
_W[[13, 23]] = (1 + sqrt(2)) / 2


def _ref_group_sum(values, inv, n):
    if values.ndim == 1:
        return np.bincount(inv, weights=values, minlength=n)
    out = np.zeros((n, values.shape[1]), np.float64)
    for c in range(values.shape[1]):
        out[:, c] = np.bincount(inv, weights=values[:, c], minlength=n)
    return out


def _ref_nonzero(a):
    flat = np.flatnonzero(np.ascontiguousarray(a != 0))
    return np.divmod(flat, a.shape[1])


def _ref_with_context(labels, cy, cx, margin):
    h, w = labels.shape
    out = np.zeros((cy[1] - cy[0] + 2 * margin, cx[1] - cx[0] + 2 * margin), labels.dtype)
    y0, y1 = max(cy[0] - margin, 0), min(cy[1] + margin, h)
    x0, x1 = max(cx[0] - margin, 0), min(cx[1] + margin, w)
    oy, ox = y0 - (cy[0] - margin), x0 - (cx[0] - margin)
    out[oy : oy + y1 - y0, ox : ox + x1 - x0] = labels[y0:y1, x0:x1]
    return out


def _ref_perimeter_pixels(lab):
    across = lab[1:-1, 1:] != lab[1:-1, :-1]
    down = lab[1:, 1:-1] != lab[:-1, 1:-1]
    border = lab[1:-1, 1:-1] != 0
    border &= across[:, :-1] | across[:, 1:] | down[:-1] | down[1:]
    ys, xs = _ref_nonzero(border[1:-1, 1:-1])
    lab_flat = np.ascontiguousarray(lab).ravel()
    border_flat = border.ravel()
    at_lab = (ys + 2) * lab.shape[1] + (xs + 2)
    at_border = (ys + 1) * border.shape[1] + (xs + 1)
    centre = lab_flat[at_lab]
    code = np.ones(len(ys), np.uint8)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            weight = 2 if dy == 0 or dx == 0 else 10
            same = border_flat[at_border + (dy * border.shape[1] + dx)]
            same &= lab_flat[at_lab + (dy * lab.shape[1] + dx)] == centre
            code += np.uint8(weight) * same
    return ys, xs, _W[code]


def reference_partial_stats(labels, image, origin=(0, 0), classes=None, *, core=None) -> Partial:
    labels = np.asarray(labels)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if core is None:
        core = (slice(0, labels.shape[0]), slice(0, labels.shape[1]))
    cy, cx = (s.indices(n)[:2] for s, n in zip(core, labels.shape, strict=True))
    lab_core = labels[core]
    rows, cols = _ref_nonzero(lab_core)
    n_classes = 0 if classes is None else int(np.max(classes, initial=0)) + 1
    if rows.size == 0:
        return Partial.empty(image.shape[0], n_classes)
    values = lab_core[rows, cols]
    small_ids = values.dtype.itemsize > 2 and int(values.min()) >= 0 and int(values.max()) < 2**16
    order = np.argsort(values.astype(np.uint16) if small_ids else values, kind="stable")
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    uniq = values[starts]
    count = np.diff(np.r_[starts, values.size])
    n = len(uniq)
    inv = np.repeat(np.arange(n), count)
    fr, fc = rows.astype(np.float64), cols.astype(np.float64)
    my = np.bincount(inv, weights=fr, minlength=n) / count
    mx = np.bincount(inv, weights=fc, minlength=n) / count
    dy, dx = fr - my[inv], fc - mx[inv]
    oy, ox = origin[0] + cy[0], origin[1] + cx[0]
    pix = image[:, core[0], core[1]][:, rows, cols].T.astype(np.float64)
    mean_v = _ref_group_sum(pix, inv, n) / count[:, None]
    dv = pix - mean_v[inv]
    by, bx, shares = _ref_perimeter_pixels(_ref_with_context(labels, cy, cx, 2))
    border_inv = np.searchsorted(uniq, lab_core[by, bx])
    if classes is None:
        class_counts = np.zeros((n, 0), np.int64)
    else:
        cls = np.asarray(classes)[core][rows, cols].astype(np.int64)
        class_counts = np.bincount(inv * n_classes + cls, minlength=n * n_classes)
        class_counts = class_counts.reshape(n, n_classes).astype(np.int64)
    return Partial(
        label=uniq.astype(np.uint32),
        count=count.astype(np.int64),
        mean_y=my + oy,
        mean_x=mx + ox,
        m2_yy=np.bincount(inv, weights=dy * dy, minlength=n),
        m2_xx=np.bincount(inv, weights=dx * dx, minlength=n),
        m2_xy=np.bincount(inv, weights=dy * dx, minlength=n),
        bbox=np.stack(
            [
                np.minimum.reduceat(rows, starts) + oy,
                np.minimum.reduceat(cols, starts) + ox,
                np.maximum.reduceat(rows, starts) + oy + 1,
                np.maximum.reduceat(cols, starts) + ox + 1,
            ],
            axis=1,
        ).astype(np.int64),
        mean_v=mean_v,
        m2_v=_ref_group_sum(dv * dv, inv, n),
        min_v=np.minimum.reduceat(pix, starts, axis=0),
        max_v=np.maximum.reduceat(pix, starts, axis=0),
        perimeter=np.bincount(border_inv, weights=shares, minlength=n),
        class_counts=class_counts,
    )


# ---- comparison ------------------------------------------------------------------------------


def assert_identical(ours: Partial, ref: Partial) -> None:
    """Every column: same dtype, shape and bytes (floats compared bit for bit)."""
    for name, want in ref._asdict().items():
        got = getattr(ours, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), name


def label_image(rng: np.random.Generator, shape, density: float, ids: str, dtype) -> np.ndarray:
    """Blobs (touching, with holes and ragged edges) labelled with dense, sparse or large ids."""
    smooth = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.7, 2.5))
    fg = smooth > np.quantile(smooth, 1 - density)
    labels, n = ndi.label(fg, structure=np.ones((3, 3)) if rng.random() < 0.5 else None)
    cut = rng.random(shape) < 0.03  # split some objects: touching labels, several runs a row
    labels[cut & (labels > 0)] = rng.integers(1, n + 2, int((cut & (labels > 0)).sum()))
    if ids == "sparse":
        table = np.r_[0, np.sort(rng.choice(10**6, n + 1, replace=False)) + 1]
        labels = table[labels]
    elif ids == "large":
        labels = np.where(labels > 0, labels + 2**16 + int(rng.integers(0, 2**20)), 0)
    return labels.astype(dtype)


IMAGE_DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, bool]


def intensity(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    if dtype is bool:
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -(2**20)), min(info.max, 2**20), shape, endpoint=True).astype(
        dtype
    )


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    n_channels=st.integers(1, 3),
    density=st.floats(0.05, 0.95),
    ids=st.sampled_from(["dense", "sparse", "large"]),
    label_dtype=st.sampled_from([np.uint32, np.int32, np.int64, np.uint64]),
    image_dtype=st.sampled_from(IMAGE_DTYPES),
    with_classes=st.booleans(),
    with_core=st.booleans(),
)
def test_partial_stats_is_bit_identical_to_the_reference(
    seed, h, w, n_channels, density, ids, label_dtype, image_dtype, with_classes, with_core
) -> None:
    rng = np.random.default_rng(seed)
    labels = label_image(rng, (h, w), density, ids, label_dtype)
    image = intensity(rng, (n_channels, h, w), image_dtype)
    classes = rng.integers(0, 4, (h, w)).astype(np.uint8) if with_classes else None
    core = None
    if with_core:
        y0, y1 = sorted(rng.integers(0, h + 1, 2))
        x0, x1 = sorted(rng.integers(0, w + 1, 2))
        core = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
    origin = (int(rng.integers(0, 10**6)), int(rng.integers(0, 10**6)))
    ours = partial_stats(labels, image, origin, classes, core=core)
    assert_identical(ours, reference_partial_stats(labels, image, origin, classes, core=core))


@pytest.mark.parametrize("seed", range(3))
def test_bit_identical_on_a_large_window_with_a_core_and_strided_inputs(seed) -> None:
    rng = np.random.default_rng(seed)
    labels = label_image(rng, (300, 260), 0.3, "dense", np.uint32)
    image = intensity(rng, (260, 300, 2), np.uint8).transpose(2, 1, 0)  # (C, H, W) strided view
    classes = rng.integers(0, 3, (300, 260)).astype(np.uint8)
    core = (slice(17, 283), slice(40, 250))
    ours = partial_stats(labels, image[:, :, :], (5, 9), classes, core=core)
    assert_identical(ours, reference_partial_stats(labels, image, (5, 9), classes, core=core))
    whole = partial_stats(labels[::-1], image[0, ::-1])  # negative strides
    assert_identical(whole, reference_partial_stats(labels[::-1], image[0, ::-1]))


@pytest.mark.parametrize(
    "labels",
    [
        np.zeros((6, 5), np.uint32),  # no objects
        np.ones((1, 1), np.uint32),  # a single pixel filling the window
        np.full((4, 7), 2**32 - 1, np.uint32),  # the largest id, filling the window
        np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.uint16),  # one id in pieces
        np.array([[True, False, True], [True, True, False]]),  # bool labels
    ],
)
def test_bit_identical_on_edge_cases(labels) -> None:
    image = np.arange(labels.size, dtype=np.float64).reshape(labels.shape)
    assert_identical(partial_stats(labels, image), reference_partial_stats(labels, image))
    core = (slice(1, None), slice(0, 1))
    assert_identical(
        partial_stats(labels, image, core=core), reference_partial_stats(labels, image, core=core)
    )
    empty = (slice(1, 1), slice(0, None))
    assert len(partial_stats(labels, image, core=empty)) == 0
