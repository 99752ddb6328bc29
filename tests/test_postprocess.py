"""Probabilities → labels for binary, semantic and instance models."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segpipe.errors import ModelError
from segpipe.models import BUILTIN_CARDS
from segpipe.models.testing import tiny_card
from segpipe.postprocess import CONNECTIVITY, Segmentation, remove_small, to_labels

CC = BUILTIN_CARDS["classical"]
WATERSHED = BUILTIN_CARDS["classical-watershed"]


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def two_touching_discs() -> tuple[np.ndarray, np.ndarray]:
    a, b = disc((60, 80), 30, 25, 13), disc((60, 80), 30, 48, 13)
    assert (a & b).any()  # they overlap: one connected component
    return a, b


def test_binary_cc_known_labels() -> None:
    probs = np.zeros((1, 10, 12), np.float32)
    probs[0, 1:4, 1:4] = 0.9
    probs[0, 6:9, 2:10] = 0.8
    probs[0, 1:3, 8:10] = 0.4  # below the threshold
    seg = to_labels(probs, CC)
    assert isinstance(seg, Segmentation) and seg.classes is None and seg.boundary is None
    assert seg.labels.dtype == np.uint32 and seg.labels.shape == (10, 12)
    assert seg.n_objects == 2
    assert set(np.unique(seg.labels[1:4, 1:4])) == {1} and set(
        np.unique(seg.labels[6:9, 2:10])
    ) == {2}
    assert seg.labels[1:3, 8:10].max() == 0


def test_four_connectivity() -> None:
    assert CONNECTIVITY == 1
    probs = np.zeros((1, 6, 6), np.float32)
    probs[0, 0:3, 0:3] = probs[0, 3:6, 3:6] = 1.0  # touching at a corner only
    assert to_labels(probs, CC).n_objects == 2


def test_min_size_removes_fragments() -> None:
    probs = np.zeros((1, 10, 10), np.float32)
    probs[0, 1:4, 1:4] = 1.0
    probs[0, 7, 7] = 1.0  # 1 px < min_size 4
    labels = to_labels(probs, CC).labels
    assert labels.max() == 1 and labels[7, 7] == 0
    np.testing.assert_array_equal(remove_small(np.array([[3, 3, 0, 7]]), 1), [[1, 1, 0, 2]])


def test_watershed_splits_two_touching_discs() -> None:
    a, b = two_touching_discs()
    probs = (a | b)[None].astype(np.float32)
    assert to_labels(probs, CC).n_objects == 1
    labels = to_labels(probs, WATERSHED).labels
    assert labels.max() == 2
    for d in (a, b):
        ids, counts = np.unique(labels[d], return_counts=True)
        assert counts.max() / d.sum() > 0.9  # each disc is (mostly) one object
    assert labels[30, 25] != labels[30, 48]


def test_watershed_keeps_every_component() -> None:
    probs = np.zeros((1, 40, 40), np.float32)
    probs[0, 2:4, 2:30] = 1.0  # a thin line: flat distance plateau
    probs[0, 20:35, 20:35] = 1.0
    labels = to_labels(probs, WATERSHED).labels
    assert labels[3, 10] > 0 and labels[25, 25] > 0 and labels[3, 10] != labels[25, 25]


def test_semantic_components_never_mix_classes() -> None:
    card = tiny_card("semantic", postprocess={"min_size": 2})
    rng = np.random.default_rng(0)
    probs = ndi.gaussian_filter(rng.random((4, 64, 64)), (0, 2, 2)).astype(np.float32)
    seg = to_labels(probs, card)
    assert seg.classes is not None and seg.classes.dtype == np.uint8
    assert seg.labels.max() > 5
    for lab in range(1, int(seg.labels.max()) + 1):
        assert len(np.unique(seg.classes[seg.labels == lab])) == 1
    assert (seg.classes[seg.labels == 0] == 0).all()
    assert ((seg.labels > 0) == (seg.classes > 0)).all()


def test_semantic_adjacent_classes_are_separate_objects() -> None:
    probs = np.zeros((4, 8, 8), np.float32)
    probs[0] = 1
    probs[:, 2:6, 1:4] = [[[0]], [[1]], [[0]], [[0]]]  # scratch
    probs[:, 2:6, 4:7] = [[[0]], [[0]], [[0]], [[1]]]  # stain, touching the scratch
    seg = to_labels(probs, tiny_card("semantic"))
    assert seg.labels.max() == 2
    assert set(np.unique(seg.classes)) == {0, 1, 3}
    assert seg.labels[3, 2] != seg.labels[3, 5]


def instance_probs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fg = a | b
    edge = (fg & ~ndi.binary_erosion(fg)) | (a & b)
    edge = ndi.binary_dilation(edge) & fg
    probs = np.zeros((3, *fg.shape), np.float32)
    probs[2] = np.where(edge, 0.8, 0.0)
    probs[1] = np.where(fg & ~edge, 0.9, 0.1 * fg)
    probs[0] = 1 - probs[1] - probs[2]
    return probs


def test_instance_watershed_splits_two_touching_discs() -> None:
    a, b = two_touching_discs()
    probs = instance_probs(a, b)
    seg = to_labels(probs, tiny_card("instance"))
    assert seg.labels.max() == 2
    assert seg.labels[30, 25] != seg.labels[30, 48] and seg.labels[30, 25] > 0
    fg = a | b
    assert ((seg.labels > 0) == fg).mean() > 0.98  # objects fill the mask, boundaries included
    assert seg.classes is not None and ((seg.classes == 1) == (seg.labels > 0)).all()
    np.testing.assert_array_equal(seg.boundary, probs[2])


def test_instance_min_size_and_seedless_regions() -> None:
    probs = np.zeros((3, 30, 30), np.float32)
    probs[0] = 1
    probs[:, 5:15, 5:15] = [[[0.1]], [[0.2]], [[0.7]]]  # foreground, no confident interior
    probs[:, 20:22, 20:22] = [[[0.0]], [[1.0]], [[0.0]]]  # 4 px: below min_size 10
    seg = to_labels(probs, tiny_card("instance", postprocess={"min_size": 10}))
    assert seg.labels.max() == 1 and seg.labels[10, 10] == 1 and seg.labels[21, 21] == 0


def test_bad_input() -> None:
    with pytest.raises(ModelError, match="unknown postprocess keys"):
        to_labels(np.zeros((3, 4, 4)), tiny_card("instance", postprocess={"treshold": 0.5}))
    with pytest.raises(ModelError, match=r"\(3, H, W\)"):
        to_labels(np.zeros((1, 4, 4)), tiny_card("instance"))
    with pytest.raises(ModelError, match="mode"):
        to_labels(np.zeros((1, 4, 4)), tiny_card("binary", postprocess={"mode": "magic"}))


def test_empty_input() -> None:
    probs = np.zeros((3, 16, 16), np.float32)
    probs[0] = 1.0  # all background
    seg = to_labels(probs, tiny_card("instance"))
    assert seg.labels.max() == 0 and seg.labels.dtype == np.uint32
