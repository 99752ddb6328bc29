"""Metrics against hand-computed cases: perfect, empty, shifted, split, merged, semantic."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import segpipe.metrics as M
from segpipe.metrics import (
    confusion_matrix,
    instance_metrics,
    iou_matrix,
    match_instances,
    semantic_metrics,
)


def _two_squares() -> np.ndarray:
    truth = np.zeros((20, 20), np.uint32)
    truth[2:8, 2:8] = 1  # 36 px
    truth[10:18, 10:18] = 7  # 64 px, non-consecutive id
    return truth


def test_doctests() -> None:
    result = doctest.testmod(M, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 5


def test_perfect_prediction_any_ids() -> None:
    truth = _two_squares()
    pred = np.where(truth == 1, 50, np.where(truth == 7, 3, 0)).astype(np.int32)
    m = instance_metrics(truth, pred)
    assert m["n_true"] == m["n_pred"] == 2
    assert all(v == 1.0 for v in m["ap"].values())
    assert m["f1"]["0.9"] == 1.0 and m["mean_matched_iou"] == 1.0
    assert m["n_split"] == m["n_merged"] == 0


def test_empty_prediction() -> None:
    truth = _two_squares()
    m = instance_metrics(truth, np.zeros_like(truth))
    assert m["n_pred"] == 0
    assert m["ap"]["0.5"] == 0.0 and m["fn"]["0.5"] == 2 and m["fp"]["0.5"] == 0
    assert m["recall"]["0.5"] == 0.0 and m["precision"]["0.5"] == 0.0
    assert np.isnan(m["mean_matched_iou"])


def test_empty_truth() -> None:
    pred = _two_squares()
    m = instance_metrics(np.zeros_like(pred), pred)
    assert m["ap"]["0.5"] == 0.0 and m["fp"]["0.5"] == 2 and m["fn"]["0.5"] == 0
    both_empty = instance_metrics(np.zeros_like(pred), np.zeros_like(pred))
    assert both_empty["ap"]["0.5"] == 1.0 and both_empty["f1"]["0.5"] == 1.0


def test_shifted_by_one_pixel() -> None:
    # 6x6 square shifted by one column: intersection 30, union 42 -> IoU 5/7 = 0.714
    truth = np.zeros((12, 12), np.uint8)
    truth[2:8, 2:8] = 1
    pred = np.zeros_like(truth)
    pred[2:8, 3:9] = 1
    assert iou_matrix(truth, pred)[0, 0] == pytest.approx(30 / 42)
    m = instance_metrics(truth, pred, thresholds=(0.5, 0.7, 0.75, 0.9))
    assert m["ap"]["0.5"] == 1.0 and m["ap"]["0.7"] == 1.0
    assert m["ap"]["0.75"] == 0.0 and m["ap"]["0.9"] == 0.0
    # unmatched at 0.75: one FP and one FN -> AP = 0/(0+1+1)
    assert m["fp"]["0.75"] == 1 and m["fn"]["0.75"] == 1
    assert m["mean_matched_iou"] == pytest.approx(30 / 42)


def test_split_object() -> None:
    truth = np.zeros((10, 20), np.uint16)
    truth[2:8, 2:18] = 1  # 96 px
    pred = np.zeros_like(truth)
    pred[2:8, 2:10] = 1  # 48 px, IoU 0.5 exactly with truth
    pred[2:8, 10:18] = 2  # 48 px
    m = instance_metrics(truth, pred, thresholds=(0.5, 0.6))
    assert m["n_split"] == 1 and m["n_merged"] == 0
    # IoU 0.5 >= threshold 0.5: exactly one of the halves matches
    assert m["tp"]["0.5"] == 1 and m["fp"]["0.5"] == 1 and m["fn"]["0.5"] == 0
    assert m["ap"]["0.5"] == pytest.approx(0.5)
    assert m["tp"]["0.6"] == 0


def test_merged_objects() -> None:
    truth = np.zeros((10, 20), np.uint16)
    truth[2:8, 2:9] = 1
    truth[2:8, 11:18] = 2
    pred = np.zeros_like(truth)
    pred[2:8, 2:18] = 5  # one blob covering both plus the gap
    m = instance_metrics(truth, pred)
    assert m["n_merged"] == 1 and m["n_split"] == 0
    assert m["tp"]["0.5"] == 0 and m["ap"]["0.5"] == 0.0
    assert m["fn"]["0.5"] == 2 and m["fp"]["0.5"] == 1


def test_specks_are_not_splits() -> None:
    truth = np.zeros((20, 20), np.uint16)
    truth[2:18, 2:18] = 1  # 256 px
    pred = truth.astype(np.uint16).copy()
    pred[9:11, 9:11] = 2  # a 4 px speck inside: < 10 % of the true object
    m = instance_metrics(truth, pred)
    assert m["n_split"] == 0
    assert m["tp"]["0.5"] == 1 and m["fp"]["0.5"] == 1


def test_hungarian_prefers_more_matches() -> None:
    iou = np.array([[0.9, 0.55], [0.55, 0.0]])
    rows, cols = match_instances(iou, 0.5)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_shape_mismatch_and_bad_threshold() -> None:
    with pytest.raises(ValueError, match="shape"):
        instance_metrics(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="threshold"):
        match_instances(np.ones((1, 1)), 0.0)
    with pytest.raises(ValueError, match="integer"):
        instance_metrics(np.zeros((3, 3), float), np.zeros((3, 3), int))


def test_semantic_hand_computed() -> None:
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 2, 0]])
    cm = confusion_matrix(truth, pred, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    m = semantic_metrics(truth, pred, class_names=["bg", "a", "b", "c"])
    assert m["iou"]["bg"] == pytest.approx(2 / 4)
    assert m["iou"]["a"] == pytest.approx(2 / 3)
    assert m["iou"]["b"] == pytest.approx(2 / 3)
    assert np.isnan(m["iou"]["c"])  # absent from both: not counted in the mean
    assert m["mean_iou"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert m["dice"]["a"] == pytest.approx(0.8)
    assert m["pixel_accuracy"] == pytest.approx(6 / 8)
    with pytest.raises(ValueError, match="n_classes"):
        confusion_matrix(truth, pred, 2)


def test_many_objects_sparse() -> None:
    # 2500 objects: the sparse path must not build a dense T x P matrix per threshold
    truth = np.zeros((500, 500), np.uint32)
    yy, xx = np.mgrid[0:500, 0:500]
    truth[:] = (yy // 10) * 50 + (xx // 10) + 1
    truth[(yy % 10 == 0) | (xx % 10 == 0)] = 0
    pred = np.roll(truth, 1, axis=1)
    m = instance_metrics(truth, pred)
    assert m["n_true"] == 2500
    # 9x9 squares shifted by 1: IoU 72/90 = 0.8 (except the last column which wraps)
    assert m["tp"]["0.75"] >= 2450 and m["tp"]["0.85"] == 0
