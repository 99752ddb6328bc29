"""Measure models on held-out synthetic images (other seeds and settings than training).

``python -m segpipe.train.heldout nuclei classical-watershed`` prints (and with ``--json``
writes) the metrics quoted in docs/models.md: for instance models AP at IoU 0.5…0.9, F1,
splits and merges pooled over the images (and per modality; ``--by-size`` adds AP@0.5 per
object-diameter bin); for semantic models
(``--kind defects``) the IoU of each class from the pooled confusion matrix.
``--kind discs`` measures instance models on :func:`disc_image`, the flat sharp-edged discs
of the project's acceptance check (a style the training renderer never produces).
``--pairs DIR`` measures on annotated images of your own (any folder of image / mask pairs
that training reads, :func:`segpipe.train.find_pairs`; instance labels or class maps):
:func:`heldout_pairs`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from segpipe.errors import ConfigError, SegpipeError
from segpipe.metrics import DEFAULT_THRESHOLDS, confusion_matrix, instance_metrics, iou_per_class

__all__ = [
    "disc_image",
    "heldout_discs",
    "heldout_defects",
    "heldout_nuclei",
    "heldout_pairs",
    "nuclei_heldout_set",
    "defects_heldout_set",
    "size_binned_counts",
]

#: The test set's own seed: never used by training (streams 1000+) or validation (2000).
HELDOUT_SEED = 20261125
#: Diameter bands (px) of the held-out images, cycled: each image has one band.
BANDS = ((10.0, 16.0), (14.0, 24.0), (20.0, 32.0), (28.0, 40.0), (10.0, 40.0))


def nuclei_heldout_set(n: int = 20, shape: int = 384, seed: int = HELDOUT_SEED) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """``n`` (image (C, Y, X), labels, modality) triples; modalities and size bands alternate."""
    from segpipe.synthetic import nuclei_sample

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        modality = ("fluorescence", "he")[i % 2]
        band = BANDS[(i // 2) % len(BANDS)]
        image, labels = nuclei_sample((shape, shape), rng, modality=modality, diameter_px=band,
                                      density=float(rng.uniform(0.2, 0.5)))
        out.append((image, labels, "brightfield" if modality == "he" else "fluorescence"))
    return out


def defects_heldout_set(n: int = 12, shape: int = 384, seed: int = HELDOUT_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (image (1, Y, X), class map) pairs, one surface after the other, uint8 and uint16."""
    from segpipe.synthetic import SURFACES, defects_sample

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        out.append(defects_sample((shape, shape), rng, dtype=(np.uint8, np.uint16)[i % 2],
                                  surface=SURFACES[i % len(SURFACES)], clean_probability=0.0))
    return out


def disc_image(side: int = 2300, seed: int = 0, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Grey uint8 flat discs and their ground truth, drawn exactly like the acceptance check.

    Background 20, ``n`` discs of value 170 with radius² in [36, 196) at uniform centres,
    Gaussian noise σ = 5 (``slide()`` in the project's ``check_contract.py``, same RNG calls;
    its default ``side=2300, seed=0, n=120`` gives the same pixels). Overlapping discs fuse
    into one bright blob, so the truth is the connected components of the disc union.

    Returns
    -------
    image : (Y, X) uint8 ndarray
    truth : (Y, X) int32 ndarray
        Instance labels.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    img = np.full((side, side), 20, np.float32)
    for cy, cx in rng.integers(20, side - 20, (n, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(36, 196)] = 170
    truth = ndi.label(img > 100)[0].astype(np.int32)
    img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    return img, truth


def heldout_discs(models: list[str], side: int = 2300, seed: int = 0, n: int = 120,
                  mpp: float = 0.5) -> dict[str, dict[str, float]]:
    """AP@0.5, precision, recall and counts of each model on :func:`disc_image` (at ``mpp``)."""
    import torch

    from segpipe.models import load_model
    from segpipe.predict import segment_array

    torch.set_num_threads(1)
    image, truth = disc_image(side, seed, n)
    result = {}
    for name in models:
        model = load_model(name, device="cpu")
        pred = segment_array(image, model=model, mpp=mpp)
        m = instance_metrics(truth, pred)
        result[name] = {"ap_0.5": float(m["ap"]["0.5"]), "precision_0.5": float(m["precision"]["0.5"]),
                        "recall_0.5": float(m["recall"]["0.5"]), "n_true": float(m["n_true"]),
                        "n_pred": float(m["n_pred"])}
    return result


def heldout_pairs(models: list[str], folder: str) -> dict[str, dict[str, Any]]:
    """Metrics of each model on the annotated image / mask pairs in ``folder``.

    Any folder that training reads (:func:`segpipe.train.find_pairs`: ``x.tif`` with
    ``x.labels.tif``, ``images/`` with ``masks/`` …). Each image goes through
    :func:`segpipe.predict.segment_array_full` whole, with its pixel size when the file has
    one. Models that find objects (masks are instance labels): AP at IoU 0.5…0.9, F1,
    splits and merges pooled over the images; semantic models (masks are class maps): the
    IoU of each class from the pooled confusion matrix. ``images`` gives each file's AP@0.5
    or mean IoU.
    """
    from pathlib import Path

    import torch

    from segpipe.models import load_model
    from segpipe.predict import segment_array_full
    from segpipe.train._data import folder_items

    torch.set_num_threads(1)
    # training's own reader of pairs (and its checks); the task only shapes its sampling index
    data = [(item.name, item.read(0, 0, *item.shape), item.read_target(0, 0, *item.shape), item.mpp)
            for item in folder_items(Path(folder), "instance")]
    result: dict[str, dict[str, Any]] = {}
    for name in models:
        model = load_model(name, device="cpu")
        segs = [segment_array_full(image, model=model, mpp=mpp) for _, image, _, mpp in data]
        if model.card.task == "semantic":
            k = len(model.card.classes)
            cms = [confusion_matrix(truth, seg.classes, k) for (_, _, truth, _), seg in zip(data, segs, strict=True)]
            iou = iou_per_class(np.sum(cms, axis=0))
            result[name] = {f"iou_{c}": float(v) for c, v in zip(model.card.classes, iou, strict=True)}
            result[name]["mean_iou"] = float(np.nanmean(iou))
            per_image = [float(np.nanmean(iou_per_class(cm))) for cm in cms]
        else:
            rows = [instance_metrics(truth, seg.labels) for (_, _, truth, _), seg in zip(data, segs, strict=True)]
            result[name] = _pool(rows)
            per_image = [float(r["ap"]["0.5"]) for r in rows]
        result[name]["images"] = dict(zip([p for p, *_ in data], per_image, strict=True))
    return result


def _pool(rows: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in (f"{v:g}" for v in DEFAULT_THRESHOLDS):
        tp = sum(r["tp"][t] for r in rows)
        fp = sum(r["fp"][t] for r in rows)
        fn = sum(r["fn"][t] for r in rows)
        out[f"ap_{t}"] = tp / max(1, tp + fp + fn)
        if t == "0.5":
            out["f1_0.5"] = 2 * tp / max(1, 2 * tp + fp + fn)
            out["precision_0.5"] = tp / max(1, tp + fp)
            out["recall_0.5"] = tp / max(1, tp + fn)
    out["n_true"] = float(sum(r["n_true"] for r in rows))
    out["n_pred"] = float(sum(r["n_pred"] for r in rows))
    out["n_split"] = float(sum(r["n_split"] for r in rows))
    out["n_merged"] = float(sum(r["n_merged"] for r in rows))
    return out


#: Edges (px, equivalent diameter) of the size bins of :func:`size_binned_counts`.
SIZE_EDGES = (0.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, np.inf)


def size_binned_counts(truth: np.ndarray, pred: np.ndarray, edges: tuple[float, ...] = SIZE_EDGES,
                       threshold: float = 0.5) -> np.ndarray:
    """TP, FP, FN per object-size bin after one-to-one matching at IoU ``threshold``.

    A true object (TP or FN) falls in the bin of its own equivalent diameter
    ``2 * sqrt(area / pi)``; an unmatched prediction (FP) in the bin of its diameter.

    Returns
    -------
    (len(edges) - 1, 3) int64 ndarray
        Columns TP, FP, FN.

    Examples
    --------
    >>> t = np.zeros((40, 40), int); t[2:6, 2:6] = 1; t[10:30, 10:30] = 2
    >>> p = np.zeros_like(t); p[10:30, 10:31] = 5
    >>> size_binned_counts(t, p, (0.0, 10.0, 100.0)).tolist()
    [[0, 0, 1], [1, 0, 0]]
    """
    from segpipe.metrics import match_instances, overlap_table

    _, _, inter, t_area, p_area = overlap_table(truth, pred)
    inter = inter.toarray()
    iou = inter / np.maximum(t_area[:, None] + p_area[None, :] - inter, 1.0)
    mr, mc = match_instances(iou, threshold)
    t_bin = np.digitize(2 * np.sqrt(t_area / np.pi), edges[1:-1])
    p_bin = np.digitize(2 * np.sqrt(p_area / np.pi), edges[1:-1])
    t_hit = np.zeros(t_area.size, bool)
    p_hit = np.zeros(p_area.size, bool)
    t_hit[mr], p_hit[mc] = True, True
    k = len(edges) - 1
    out = np.zeros((k, 3), np.int64)
    out[:, 0] = np.bincount(t_bin[t_hit], minlength=k)
    out[:, 1] = np.bincount(p_bin[~p_hit], minlength=k)
    out[:, 2] = np.bincount(t_bin[~t_hit], minlength=k)
    return out


def _size_table(counts: np.ndarray, edges: tuple[float, ...] = SIZE_EDGES) -> dict[str, dict[str, float]]:
    out = {}
    for (tp, fp, fn), lo, hi in zip(counts.tolist(), edges[:-1], edges[1:], strict=True):
        out[f"{lo:g}-{hi:g}px"] = {"ap_0.5": tp / max(1, tp + fp + fn), "tp": tp, "fp": fp, "fn": fn,
                                   "recall_0.5": tp / max(1, tp + fn)}
    return out


def heldout_nuclei(models: list[str], n: int = 20, shape: int = 384,
                   by_size: bool = False, seed: int = HELDOUT_SEED) -> dict[str, dict[str, Any]]:
    """Pooled instance metrics of each model on :func:`nuclei_heldout_set` (no pixel size:
    the images go in as they are, as a file without a pixel size would); with ``by_size``
    also AP@0.5 per equivalent-diameter bin (:func:`size_binned_counts`). Another ``seed``
    than :data:`HELDOUT_SEED` draws a second set of the same kind, e.g. to choose between
    models without looking at the test set."""
    import torch

    from segpipe.models import load_model
    from segpipe.normalize import image_stats
    from segpipe.predict import segment_array

    torch.set_num_threads(1)
    data = nuclei_heldout_set(n, shape, seed)
    result: dict[str, dict[str, Any]] = {}
    for name in models:
        model = load_model(name, device="cpu")
        rows = []
        sizes = {"fluorescence": np.zeros((len(SIZE_EDGES) - 1, 3), np.int64)}
        sizes["brightfield"] = sizes["fluorescence"].copy()
        for image, truth, modality in data:
            # statistics of the source pixels, as the pipeline computes them from a pyramid level
            stats = image_stats(image, model.card, modality)
            pred = segment_array(image, model=model, modality=modality, stats=stats)
            rows.append({**instance_metrics(truth, pred), "modality": modality})
            if by_size:
                sizes[modality] += size_binned_counts(truth, pred)
        result[name] = {
            "all": _pool(rows),
            "fluorescence": _pool([r for r in rows if r["modality"] == "fluorescence"]),
            "he": _pool([r for r in rows if r["modality"] == "brightfield"]),
        }
        if by_size:
            result[name]["by_size"] = {
                "all": _size_table(sizes["fluorescence"] + sizes["brightfield"]),
                "fluorescence": _size_table(sizes["fluorescence"]),
                "he": _size_table(sizes["brightfield"]),
            }
    return result


def heldout_defects(models: list[str], n: int = 12, shape: int = 384,
                    seed: int = HELDOUT_SEED) -> dict[str, dict[str, float]]:
    """Per-class IoU (pooled confusion matrix) of each semantic model on :func:`defects_heldout_set`
    (``seed``: as for :func:`heldout_nuclei`)."""
    import torch

    from segpipe.models import load_model
    from segpipe.normalize import prepare, stats_from_image
    from segpipe.predict import default_grid, predict_window

    torch.set_num_threads(1)
    data = defects_heldout_set(n, shape, seed)
    result = {}
    for name in models:
        model = load_model(name, device="cpu")
        k = len(model.card.classes)
        cm = np.zeros((k, k), np.int64)
        for image, truth in data:
            stats = stats_from_image(image, model.card, "grey")
            probs = predict_window(model, prepare(image, stats, model.card, "grey"), grid=default_grid(model.card))
            cm += confusion_matrix(truth, probs.argmax(0), k)
        iou = iou_per_class(cm)
        result[name] = {f"iou_{c}": float(v) for c, v in zip(model.card.classes, iou, strict=True)}
        result[name]["mean_iou_defects"] = float(np.nanmean(iou[1:]))
        result[name]["pixel_accuracy"] = float(np.trace(cm) / cm.sum())
    return result


#: Images measured when ``--n`` is not given, per ``--kind``.
DEFAULT_N = {"nuclei": 20, "defects": 12, "discs": 120}


def _count(text: str) -> int:
    """``--n``: a whole number ≥ 1 (argparse prints the usage and this one-line reason)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        defaults = ", ".join(f"{k} {v}" for k, v in DEFAULT_N.items())
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value} (leave it out for the default: {defaults})")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m segpipe.train.heldout MODEL [MODEL ...] [--kind nuclei|defects]``.

    A bad model or folder is one line on stderr and exit status 2, no traceback.
    """
    p = argparse.ArgumentParser(prog="python -m segpipe.train.heldout")
    p.add_argument("models", nargs="+", help="built-in names or weights files")
    p.add_argument("--kind", choices=("nuclei", "defects", "discs"), default="nuclei")
    p.add_argument("--pairs", default=None, metavar="DIR",
                   help="measure on your own annotated images instead: a folder of image / mask pairs "
                        "(x.tif + x.labels.tif, images/ + masks/, ...; instance labels or class maps)")  # fmt: skip
    p.add_argument("--n", type=_count, default=None,
                   help="number of held-out images, at least 1 (default: nuclei 20, defects 12, discs 120)")
    p.add_argument("--json", default=None, help="also write the metrics to this file")
    p.add_argument("--by-size", action="store_true", help="nuclei: also AP@0.5 per object-size bin")
    p.add_argument("--seed", type=int, default=HELDOUT_SEED,
                   help=f"seed of the nuclei / defects images (default {HELDOUT_SEED}, the test set; "
                        "another one draws a selection set)")  # fmt: skip
    args = p.parse_args(argv)
    n = DEFAULT_N[args.kind] if args.n is None else args.n
    folders = [m for m in args.models if os.path.isdir(m)]
    try:
        if folders:  # e.g. `heldout my_annotated/`: a folder of pairs given as a model
            raise ConfigError(f"{folders[0]}: a folder, not a model (a built-in name or a weights file); "
                              f"to measure a model on the images in it: --pairs {folders[0]} MODEL")
        if args.pairs:
            res: dict[str, Any] = heldout_pairs(args.models, args.pairs)
        elif args.kind == "nuclei":
            res = heldout_nuclei(args.models, n=n, by_size=args.by_size, seed=args.seed)
        elif args.kind == "discs":
            res = heldout_discs(args.models, n=n)
        else:
            res = heldout_defects(args.models, n=n, seed=args.seed)
    except SegpipeError as exc:  # an unknown model, a missing folder, a bad weights file
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
