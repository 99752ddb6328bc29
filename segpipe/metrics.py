"""Segmentation metrics: semantic (IoU, Dice, accuracy) and instance (AP, F1, splits, merges).

Pure numpy / scipy; every function takes label arrays of equal shape.

Semantic metrics are computed from a confusion matrix ``cm[true, pred]``.

Instance metrics follow the StarDist / Cellpose convention: true and predicted objects are
matched one-to-one (Hungarian assignment on the IoU matrix, only pairs with IoU ≥ the
threshold may match; for thresholds ≥ 0.5 such matches are unique anyway), then

* ``TP`` = matched pairs, ``FP`` = unmatched predicted objects, ``FN`` = unmatched true objects,
* ``AP@t = TP / (TP + FP + FN)``, ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``,
  ``F1 = 2 TP / (2 TP + FP + FN)``.

Splits and merges use *significant overlap*: a (true, predicted) pair overlaps significantly
when their intersection covers at least ``overlap`` (default 0.5) of the **smaller** object's
area and at least ``min_cover`` (default 0.1) of the **larger** object's area. The first
condition says the smaller piece lies mostly inside the other object; the second ignores
specks. Then

* a true object is **split** when ≥ 2 predicted objects overlap it significantly,
* a predicted object is **merged** when it overlaps ≥ 2 true objects significantly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

__all__ = [
    "DEFAULT_THRESHOLDS",
    "confusion_matrix",
    "iou_per_class",
    "dice_per_class",
    "pixel_accuracy",
    "semantic_metrics",
    "overlap_table",
    "iou_matrix",
    "match_instances",
    "split_merge_counts",
    "instance_metrics",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def _check_pair(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(
            f"truth shape {truth.shape} != prediction shape {pred.shape}; "
            "compare label images of the same size"
        )
    for name, arr in (("truth", truth), ("pred", pred)):
        if arr.dtype.kind not in "iub":
            raise ValueError(f"{name} has dtype {arr.dtype}; pass integer label images")
        if arr.size and arr.dtype.kind == "i" and arr.min() < 0:
            raise ValueError(f"{name} has negative labels; labels must be >= 0")
    return truth, pred


# --------------------------------------------------------------------------- semantic


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Confusion matrix ``cm[t, p]`` = number of pixels of true class t predicted as p.

    Parameters
    ----------
    truth, pred : (...) integer ndarray
        Class maps of the same shape, values in ``0 .. n_classes-1``.
    n_classes : int, optional
        Number of classes; default ``max(truth.max(), pred.max()) + 1``.

    Returns
    -------
    cm : (K, K) int64 ndarray

    Examples
    --------
    >>> confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    array([[1, 0, 0],
           [0, 1, 1],
           [0, 0, 1]])
    """
    truth, pred = _check_pair(truth, pred)
    t = truth.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    top = int(max(t.max(initial=0), p.max(initial=0))) + 1
    k = top if n_classes is None else int(n_classes)
    if top > k:
        raise ValueError(f"labels go up to {top - 1} but n_classes={k}; raise n_classes")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union per class from a confusion matrix; NaN where a class is absent
    from both truth and prediction.

    Examples
    --------
    >>> iou_per_class(np.array([[2, 0], [1, 1]]))
    array([0.66666667, 0.5       ])
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """Dice (F1) per class, ``2 TP / (2 TP + FP + FN)``; NaN where a class is absent from both.

    Examples
    --------
    >>> dice_per_class(np.array([[2, 0], [1, 1]]))
    array([0.8       , 0.66666667])
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def pixel_accuracy(cm: np.ndarray) -> float:
    """Fraction of pixels whose class is right (NaN for an empty matrix).

    Examples
    --------
    >>> pixel_accuracy(np.array([[2, 0], [1, 1]]))
    0.75
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


def semantic_metrics(
    truth: np.ndarray,
    pred: np.ndarray,
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-class IoU and Dice, their means over classes present, and pixel accuracy.

    Parameters
    ----------
    truth, pred : (...) integer ndarray
        Class maps (0 = background counts as a class).
    n_classes : int, optional
        Number of classes (default: from the data, or ``len(class_names)``).
    class_names : sequence of str, optional
        Names used as keys in ``iou`` / ``dice``; default ``"0", "1", ...``.

    Returns
    -------
    dict
        ``{"iou": {name: float}, "dice": {name: float}, "mean_iou": float, "mean_dice": float,
        "pixel_accuracy": float, "confusion": list[list[int]]}``. Means skip NaN classes
        (absent from truth and prediction).

    Examples
    --------
    >>> m = semantic_metrics(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0]), class_names=["bg", "fg"])
    >>> round(m["iou"]["fg"], 3), round(m["mean_iou"], 3), m["pixel_accuracy"]
    (0.5, 0.583, 0.75)
    """
    if n_classes is None and class_names is not None:
        n_classes = len(class_names)
    cm = confusion_matrix(truth, pred, n_classes)
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names but there are {k} classes")
    iou = iou_per_class(cm)
    dice = dice_per_class(cm)
    return {
        "iou": {n: float(v) for n, v in zip(names, iou, strict=True)},
        "dice": {n: float(v) for n, v in zip(names, dice, strict=True)},
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "pixel_accuracy": pixel_accuracy(cm),
        "confusion": cm.tolist(),
    }


# --------------------------------------------------------------------------- instance


def overlap_table(
    truth: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Sparse contingency table of two label images (background 0 excluded).

    Returns
    -------
    true_ids : (T,) ndarray
        Label values of the true objects, sorted.
    pred_ids : (P,) ndarray
        Label values of the predicted objects, sorted.
    inter : (T, P) scipy.sparse.csr_matrix of float64
        Pixels shared by each pair (only overlapping pairs are stored, so thousands of
        objects cost memory in proportion to the overlaps, not T × P).
    true_area, pred_area : (T,), (P,) float64 ndarray
    """
    truth, pred = _check_pair(truth, pred)
    true_ids, t_idx = np.unique(truth.ravel(), return_inverse=True)
    pred_ids, p_idx = np.unique(pred.ravel(), return_inverse=True)
    table = sparse.coo_matrix(
        (np.ones(truth.size, dtype=np.float64), (t_idx.ravel(), p_idx.ravel())),
        shape=(true_ids.size, pred_ids.size),
    ).tocsr()  # duplicates are summed
    t_keep = np.flatnonzero(true_ids != 0)
    p_keep = np.flatnonzero(pred_ids != 0)
    true_area = np.asarray(table.sum(1)).ravel()[t_keep]
    pred_area = np.asarray(table.sum(0)).ravel()[p_keep]
    inter = table[t_keep][:, p_keep].tocsr()
    return true_ids[t_keep], pred_ids[p_keep], inter, true_area, pred_area


def _pair_iou(
    inter: sparse.spmatrix, true_area: np.ndarray, pred_area: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    coo = sparse.coo_matrix(inter)
    i = coo.data
    iou = i / (true_area[coo.row] + pred_area[coo.col] - i)
    return coo.row, coo.col, i, iou


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every (true object, predicted object) pair, dense ``(T, P)``, ids sorted.

    Examples
    --------
    >>> iou_matrix(np.array([[1, 1, 0, 0]]), np.array([[1, 1, 1, 0]]))
    array([[0.66666667]])
    """
    _, _, inter, ta, pa = overlap_table(truth, pred)
    r, c, _, iou = _pair_iou(inter, ta, pa)
    out = np.zeros(inter.shape, dtype=np.float64)
    out[r, c] = iou
    return out


def _match_pairs(
    rows: np.ndarray, cols: np.ndarray, iou: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match candidate pairs (row, col, iou); return matched rows, cols and their IoU."""
    ok = iou >= threshold
    rows, cols, iou = rows[ok], cols[ok], iou[ok]
    if rows.size == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, np.zeros(0)
    # pairs whose row and column have a single candidate match directly (always the case
    # for threshold > 0.5); the rest go to the Hungarian assignment
    ur, rinv, rcount = np.unique(rows, return_inverse=True, return_counts=True)
    uc, cinv, ccount = np.unique(cols, return_inverse=True, return_counts=True)
    direct = (rcount[rinv] == 1) & (ccount[cinv] == 1)
    mr, mc, mi = [rows[direct]], [cols[direct]], [iou[direct]]
    if not direct.all():
        rr, cc, ii = rows[~direct], cols[~direct], iou[~direct]
        sr, ri = np.unique(rr, return_inverse=True)
        sc, ci = np.unique(cc, return_inverse=True)
        score = np.zeros((sr.size, sc.size))
        score[ri, ci] = 1.0 + ii / 2.0  # a match counts 1, IoU breaks ties
        a, b = linear_sum_assignment(score, maximize=True)
        keep = score[a, b] > 0
        a, b = a[keep], b[keep]
        mr.append(sr[a])
        mc.append(sc[b])
        mi.append(score[a, b] * 2.0 - 2.0)
    return np.concatenate(mr), np.concatenate(mc), np.concatenate(mi)


def match_instances(iou: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of true to predicted objects with IoU ≥ ``threshold``.

    The Hungarian assignment maximises first the number of matches, then the summed IoU
    (for ``threshold`` > 0.5 every candidate pair is unique, so this is the greedy matching).

    Parameters
    ----------
    iou : (T, P) ndarray
        From :func:`iou_matrix`.
    threshold : float
        Minimum IoU of a match, in (0, 1].

    Returns
    -------
    rows, cols : (M,) int ndarray
        Indices of matched true objects and their predicted partners, sorted by row.

    Examples
    --------
    >>> match_instances(np.array([[0.9, 0.6], [0.7, 0.1]]), 0.5)
    (array([0, 1]), array([1, 0]))
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold}; pass an IoU threshold in (0, 1]")
    iou = np.asarray(iou, dtype=np.float64)
    r, c = np.nonzero(iou > 0)
    mr, mc, _ = _match_pairs(r, c, iou[r, c], threshold)
    order = np.argsort(mr, kind="stable")
    return mr[order].astype(np.intp), mc[order].astype(np.intp)


def split_merge_counts(
    inter: np.ndarray | sparse.spmatrix,
    true_area: np.ndarray,
    pred_area: np.ndarray,
    overlap: float = 0.5,
    min_cover: float = 0.1,
) -> tuple[int, int]:
    """Count split true objects and merged predicted objects (see the module docstring).

    Parameters
    ----------
    inter : (T, P) ndarray or sparse matrix
        Intersections from :func:`overlap_table`.
    true_area, pred_area : (T,), (P,) ndarray
    overlap : float
        Minimum fraction of the smaller object of a pair covered by the intersection.
    min_cover : float
        Minimum fraction of the larger object of a pair covered by the intersection.

    Returns
    -------
    n_split, n_merged : int

    Examples
    --------
    >>> inter = np.array([[40.0, 40.0]])          # one true object, two halves predicted
    >>> split_merge_counts(inter, np.array([80.0]), np.array([40.0, 40.0]))
    (1, 0)
    """
    ta = np.asarray(true_area, dtype=np.float64)
    pa = np.asarray(pred_area, dtype=np.float64)
    coo = sparse.coo_matrix(inter)
    if coo.nnz == 0:
        return 0, 0
    i, r, c = coo.data, coo.row, coo.col
    small = np.minimum(ta[r], pa[c])
    large = np.maximum(ta[r], pa[c])
    sig = (i > 0) & (i >= overlap * small) & (i >= min_cover * large)
    n_split = int((np.bincount(r[sig], minlength=ta.size) >= 2).sum())
    n_merged = int((np.bincount(c[sig], minlength=pa.size) >= 2).sum())
    return n_split, n_merged


def instance_metrics(
    truth: np.ndarray,
    pred: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    overlap: float = 0.5,
    min_cover: float = 0.1,
) -> dict[str, Any]:
    """Object-level metrics of a predicted instance label image against the truth.

    Parameters
    ----------
    truth, pred : (Y, X) integer ndarray
        Instance label images, 0 = background; ids need not be consecutive.
    thresholds : sequence of float
        IoU thresholds for matching (default 0.5, 0.55, …, 0.9).
    overlap, min_cover : float
        Significant-overlap rule for splits and merges (see the module docstring).

    Returns
    -------
    dict
        ``n_true``, ``n_pred``, ``n_split``, ``n_merged``, ``mean_matched_iou`` (at 0.5, NaN if
        none) and, per threshold ``t`` formatted as ``"0.5"``, ``"0.55"`` …: ``ap[t]``, ``tp[t]``,
        ``fp[t]``, ``fn[t]``, ``precision[t]``, ``recall[t]``, ``f1[t]``. Empty truth and
        prediction give AP = F1 = 1 (nothing to find, nothing invented).

    Examples
    --------
    >>> truth = np.zeros((8, 8), np.uint16); truth[1:4, 1:4] = 1; truth[5:8, 5:8] = 2
    >>> m = instance_metrics(truth, truth)
    >>> m["ap"]["0.5"], m["f1"]["0.9"], m["n_split"], m["n_merged"]
    (1.0, 1.0, 0, 0)
    """
    _, _, inter, ta, pa = overlap_table(truth, pred)
    r, c, _, iou = _pair_iou(inter, ta, pa)
    n_true, n_pred = int(ta.size), int(pa.size)
    out: dict[str, Any] = {"n_true": n_true, "n_pred": n_pred}
    for key in ("ap", "tp", "fp", "fn", "precision", "recall", "f1"):
        out[key] = {}
    mean_iou = float("nan")
    for thr in thresholds:
        if not 0.0 < thr <= 1.0:
            raise ValueError(f"thresholds contains {thr}; IoU thresholds lie in (0, 1]")
        _, _, matched_iou = _match_pairs(r, c, iou, thr)
        tp = int(matched_iou.size)
        fp, fn = n_pred - tp, n_true - tp
        key = f"{thr:g}"
        out["tp"][key], out["fp"][key], out["fn"][key] = tp, fp, fn
        out["ap"][key] = tp / (tp + fp + fn) if (tp + fp + fn) else 1.0
        out["precision"][key] = tp / (tp + fp) if (tp + fp) else (1.0 if n_true == 0 else 0.0)
        out["recall"][key] = tp / (tp + fn) if (tp + fn) else 1.0
        out["f1"][key] = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
        if abs(thr - 0.5) < 1e-9 and tp:
            mean_iou = float(matched_iou.mean())
    out["mean_matched_iou"] = mean_iou
    out["n_split"], out["n_merged"] = split_merge_counts(inter, ta, pa, overlap, min_cover)
    return out
