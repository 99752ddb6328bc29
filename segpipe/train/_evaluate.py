"""Evaluate a run's labels against ground-truth masks: a metrics table and a plot.

Images are matched to truth by their source path: ``truth/<relpath>.labels.tif`` (what
:func:`segpipe.synthetic.make_archive` writes) belongs to the image whose ``source_uri``
ends with ``<relpath>`` (suffixes ignored). A truth file holds instance labels when it is a
32/64-bit integer image, or when the run's model is a built-in one that finds objects
(``nuclei``, ``classical``); against a built-in semantic model (``defects``) or with
``classes`` given it is a class map; for other models, one with labels above 3 is taken as
instance labels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.errors import ConfigError, ResultsError, TableFileError
from segpipe.metrics import (
    DEFAULT_THRESHOLDS,
    confusion_matrix,
    instance_metrics,
    iou_per_class,
    semantic_metrics,
)

__all__ = ["evaluate_labels", "evaluate_run"]

TRUTH_SUFFIX = ".labels.tif"


def evaluate_labels(truth: np.ndarray, pred: np.ndarray, task: str = "instance",
                    class_names: list[str] | None = None,
                    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Flat metrics of one predicted label image (instance) or class map (semantic).

    Returns a dict of scalars: ``ap_0.5`` … ``ap_0.9``, ``precision``, ``recall``, ``f1`` (at
    IoU 0.5), ``n_true``, ``n_pred``, ``n_split``, ``n_merged``, ``mean_matched_iou``, and
    ``tp_<t>`` / ``fp_<t>`` / ``fn_<t>`` (for pooling); semantic: ``iou_<class>``,
    ``dice_<class>``, ``mean_iou``, ``pixel_accuracy``.

    Examples
    --------
    >>> t = np.zeros((6, 6), np.uint32); t[1:4, 1:4] = 1
    >>> evaluate_labels(t, t)["ap_0.5"]
    1.0
    """
    if task == "instance":
        m = instance_metrics(truth, pred, thresholds)
        row: dict[str, Any] = {f"ap_{t}": v for t, v in m["ap"].items()}
        for key in ("tp", "fp", "fn"):
            row.update({f"{key}_{t}": v for t, v in m[key].items()})
        row.update(precision=m["precision"]["0.5"] if "0.5" in m["precision"] else float("nan"),
                   recall=m["recall"].get("0.5", float("nan")), f1=m["f1"].get("0.5", float("nan")),
                   n_true=m["n_true"], n_pred=m["n_pred"], n_split=m["n_split"], n_merged=m["n_merged"],
                   mean_matched_iou=m["mean_matched_iou"])
        return row
    m = semantic_metrics(truth, pred, len(class_names) if class_names else None, class_names)
    row = {f"iou_{k}": v for k, v in m["iou"].items()}
    row.update({f"dice_{k}": v for k, v in m["dice"].items()})
    row.update(mean_iou=m["mean_iou"], pixel_accuracy=m["pixel_accuracy"],
               confusion=json.dumps(m["confusion"]))
    return row


# ------------------------------------------------------------------ matching


def _key(path: str) -> str:
    """``a/b/c.ome.tif`` → ``a/b/c`` (no scheme, no suffixes)."""
    path = path.split("://", 1)[-1].replace("\\", "/")
    head, _, name = path.rpartition("/")
    name = name.split(".")[0]
    return f"{head}/{name}" if head else name


def _truth_files(truth_dir: Path) -> dict[str, Path]:
    if not truth_dir.is_dir():
        raise ConfigError(f"{truth_dir}: ground-truth folder not found; pass the folder with <relpath>{TRUTH_SUFFIX} files")
    files = {}
    for p in sorted(truth_dir.rglob("*" + TRUTH_SUFFIX)):
        files[_key(p.relative_to(truth_dir).as_posix())] = p
    if not files:
        raise ConfigError(f"{truth_dir}: no *{TRUTH_SUFFIX} ground-truth files found")
    return files


def _image_rows(results: str, storage_options: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One dict per image: image_id, source_uri, image_uri, labels_uri, model."""
    rows: list[dict[str, Any]] = []
    try:
        from segpipe.tables import latest_done

        rows = [dict(r) for r in latest_done(results, storage_options).values()]
    except TableFileError:
        raise  # a damaged table file is named, not silently replaced by the image stores
    except (ImportError, ResultsError, OSError):
        rows = []
    if rows:
        return rows
    import fsspec
    import zarr

    fs, root = fsspec.core.url_to_fs(str(results), **(storage_options or {}))
    for path in sorted(fs.glob(f"{root.rstrip('/')}/images/*.ome.zarr")):
        url = path if "://" not in str(results) else f"{str(results).split('://')[0]}://{path}"
        group = zarr.open_group(url, mode="r", storage_options=storage_options if "://" in url else None)
        meta = dict(group.attrs).get("segpipe", {})
        image_id = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".ome.zarr")
        rows.append({"image_id": image_id, "source_uri": meta.get("source_uri", ""), "image_uri": url,
                     "labels_uri": None, "model": None})
    return rows


def _open_labels(row: dict[str, Any], results: str, model: str | None,
                 storage_options: dict[str, Any] | None) -> np.ndarray:
    import zarr

    from segpipe.pipeline import image_url

    remote = "://" in str(results)
    opts = storage_options if remote else None
    # the image in the folder given, not the URI the row recorded: a local one is relative
    # to where the run was started, and the folder may have moved since
    image_uri = image_url(str(results), row["image_id"])
    if model is None and row.get("labels_uri"):
        model = str(row["labels_uri"]).rstrip("/").rsplit("/", 1)[-1]
    group = zarr.open_group(image_uri, mode="r", storage_options=opts)
    names = list(group["labels"].group_keys()) if "labels" in group else []
    name = model if model in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise ResultsError(f"{image_uri}: no labels/{model} (found {names}); pass model= one of them")
    return np.asarray(group[f"labels/{name}/0"][...])


def _class_map(labels: np.ndarray, row: dict[str, Any], results: str, classes: list[str],
               storage_options: dict[str, Any] | None) -> np.ndarray:
    """Semantic prediction: each label's class (from the regions table) painted per pixel."""
    from segpipe.tables import open_results, read_errors

    con = open_results(results, storage_options)
    try:
        with read_errors(results, storage_options):  # a bad regions file: named
            pairs = con.execute("select label, class from regions where image_id = ?", [row["image_id"]]).fetchall()
    finally:
        con.close()
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
    index = {c: i for i, c in enumerate(classes)}
    for lab, cls in pairs:
        if int(lab) < lut.size:
            lut[int(lab)] = index.get(cls, 0)
    return lut[labels]


# ------------------------------------------------------------------ run


def evaluate_run(results: str | os.PathLike[str], truth_dir: str | os.PathLike[str],
                 out: str | os.PathLike[str] | None = None, *, model: str | None = None,
                 classes: list[str] | None = None, storage_options: dict[str, Any] | None = None,
                 thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Compare a run's label images with ground-truth masks.

    Parameters
    ----------
    results : str or PathLike
        Results folder (local or ``s3://``) with ``images/<id>.ome.zarr/labels/...``.
    truth_dir : str or PathLike
        Local folder of ``<relpath>.labels.tif`` masks (instance labels or class maps).
    out : str or PathLike, optional
        Where to write ``metrics.parquet``, ``metrics.csv`` and ``metrics.png``; default
        ``<results>/evaluation`` for local results, nothing written for remote ones.
    model : str, optional
        Label image name under ``labels/`` (default: the run's labels).
    classes : list of str, optional
        Class names of a semantic model (default: ``DEFECT_CLASSES`` when the truth is a
        class map).
    storage_options : dict, optional
        fsspec options for remote results.
    thresholds : tuple of float
        IoU thresholds of the AP columns.

    Returns
    -------
    dict
        ``images`` (one metrics dict per matched image), ``summary`` (pooled over images:
        AP per threshold from summed TP/FP/FN, or IoU per class from the summed confusion
        matrix), ``unmatched`` (truth files without an image), and the written ``table``,
        ``csv`` and ``plot`` paths (None when nothing was written).

    Raises
    ------
    ConfigError
        No truth files, or no image matches any truth file.
    """
    import tifffile

    truth = _truth_files(Path(truth_dir))
    rows = _image_rows(str(results), storage_options)
    by_key = {}
    for row in rows:
        by_key[_key(str(row.get("source_uri") or ""))] = row
    images: list[dict[str, Any]] = []
    unmatched: list[str] = []
    pooled_cm: np.ndarray | None = None
    task_seen = set()
    for key, tpath in truth.items():
        row = next((r for k, r in by_key.items() if k == key or k.endswith("/" + key)), None)
        if row is None:
            unmatched.append(str(tpath))
            continue
        t = tifffile.imread(tpath)
        pred = _open_labels(row, str(results), model, storage_options)
        if t.shape != pred.shape:
            raise ResultsError(f"{tpath}: truth shape {t.shape} differs from the labels of image {row['image_id']} {pred.shape}")
        task = _model_task(row)
        instance = t.dtype in (np.uint32, np.int32, np.uint64, np.int64) or classes is None and (
            task != "semantic" if task else int(t.max(initial=0)) > 3)  # fmt: skip
        base = {"image_id": row["image_id"], "source_uri": row.get("source_uri"), "truth": str(tpath),
                "task": "instance" if instance else "semantic"}
        if instance:
            images.append({**base, **evaluate_labels(t, pred, "instance", thresholds=thresholds)})
        else:
            names = classes or _defect_classes()
            cmap = _class_map(pred, row, str(results), names, storage_options)
            cm = confusion_matrix(t, cmap, len(names))
            pooled_cm = cm if pooled_cm is None else pooled_cm + cm
            images.append({**base, **evaluate_labels(t, cmap, "semantic", names)})
        task_seen.add(base["task"])
    if not images:
        raise ConfigError(f"{truth_dir}: no truth file matches an image of {results}; "
                          "truth/<relpath>.labels.tif must mirror the archive's relative paths")
    summary = _summary(images, thresholds, pooled_cm, classes or _defect_classes())
    written = _write(images, summary, out, results)
    return {"images": images, "summary": summary, "unmatched": unmatched, **written}


def _model_task(row: dict[str, Any]) -> str | None:
    """The task of the built-in model that made a row's labels (None for other models): a
    uint16 truth mask with 3 objects is an instance mask for ``nuclei``, not a class map."""
    from segpipe.models import BUILTIN_CARDS

    card = BUILTIN_CARDS.get(str(row.get("model") or ""))
    return None if card is None else str(card.task)


def _defect_classes() -> list[str]:
    try:
        from segpipe.synthetic import DEFECT_CLASSES

        return list(DEFECT_CLASSES)
    except ImportError:
        return ["background", "scratch", "pit", "stain"]


def _summary(images: list[dict[str, Any]], thresholds: tuple[float, ...], cm: np.ndarray | None,
             classes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    inst = [r for r in images if r["task"] == "instance"]
    if inst:
        for t in (f"{v:g}" for v in thresholds):
            tp = sum(r[f"tp_{t}"] for r in inst)
            fp = sum(r[f"fp_{t}"] for r in inst)
            fn = sum(r[f"fn_{t}"] for r in inst)
            out[f"ap_{t}"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
            if t == "0.5":
                out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
                out["precision"] = tp / (tp + fp) if tp + fp else float("nan")
                out["recall"] = tp / (tp + fn) if tp + fn else float("nan")
        out["n_true"] = sum(r["n_true"] for r in inst)
        out["n_pred"] = sum(r["n_pred"] for r in inst)
        out["n_split"] = sum(r["n_split"] for r in inst)
        out["n_merged"] = sum(r["n_merged"] for r in inst)
    if cm is not None:
        iou = iou_per_class(cm)
        out.update({f"iou_{c}": float(v) for c, v in zip(classes, iou, strict=True)})
        out["mean_iou"] = float(np.nanmean(iou))
    return out


def _write(images: list[dict[str, Any]], summary: dict[str, Any], out: Any, results: Any) -> dict[str, Any]:
    if out is None:
        if "://" in str(results):
            return {"table": None, "csv": None, "plot": None}
        out = Path(results) / "evaluation"
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in [*images, summary]:
        keys += [k for k in r if k not in keys]
    all_rows = [*images, {"image_id": "ALL", "task": "pooled", **summary}]
    cols = {}
    for k in ["image_id", "task", *[k for k in keys if k not in ("image_id", "task")]]:
        vals = [r.get(k) for r in all_rows]
        if all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            cols[k] = pa.array([float(v) if v is not None else None for v in vals], pa.float64())
        else:
            cols[k] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    table = pa.table(cols)
    pq.write_table(table, out / "metrics.parquet")
    pacsv.write_csv(table, out / "metrics.csv")
    plot = _plot(images, summary, out / "metrics.png")
    return {"table": str(out / "metrics.parquet"), "csv": str(out / "metrics.csv"), "plot": str(plot)}


def _plot(images: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> Path:
    """AP against the IoU threshold (instance) and IoU per class (semantic), with PIL."""
    from PIL import Image, ImageDraw

    w, h, m = 640, 400, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([m, m, w - m, h - m], outline="black")
    for i in range(6):
        y = h - m - i * (h - 2 * m) / 5
        d.line([m - 4, y, m, y], fill="black")
        d.text((8, y - 6), f"{i / 5:.1f}", fill="black")
    ap = sorted((float(k[3:]), v) for k, v in summary.items() if k.startswith("ap_"))
    bars = [(k[4:], v) for k, v in summary.items() if k.startswith("iou_")]
    if ap:
        d.text((m, 15), f"AP vs IoU threshold (pooled, black; per image, grey)  AP@0.5={ap[0][1]:.3f}", fill="black")
        lo, hi = ap[0][0], max(ap[-1][0], ap[0][0] + 1e-6)

        def xy(t: float, v: float) -> tuple[float, float]:
            return m + (t - lo) / (hi - lo) * (w - 2 * m), h - m - v * (h - 2 * m)

        for r in images:
            pts = [xy(t, float(r.get(f"ap_{t:g}", 0.0))) for t, _ in ap]
            if len(pts) > 1:
                d.line(pts, fill=(170, 170, 170), width=1)
        pts = [xy(t, v) for t, v in ap]
        if len(pts) > 1:
            d.line(pts, fill="black", width=3)
        for t, _ in ap:
            d.text((xy(t, 0)[0] - 10, h - m + 6), f"{t:g}", fill="black")
    elif bars:
        d.text((m, 15), "IoU per class (pooled)", fill="black")
        bw = (w - 2 * m) / max(1, len(bars))
        for i, (name, v) in enumerate(bars):
            v = 0.0 if not np.isfinite(v) else v
            x0 = m + i * bw + 8
            d.rectangle([x0, h - m - v * (h - 2 * m), x0 + bw - 16, h - m], fill=(60, 110, 200))
            d.text((x0, h - m + 6), f"{name} {v:.2f}", fill="black")
    img.save(path)
    return path
