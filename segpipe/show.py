"""``segpipe show``: a PNG of an image with its label contours coloured by class.

The whole image is drawn from the highest-resolution pyramid level that fits ``max_size``
(so a 100k-pixel slide costs one small level read); a ``region`` is drawn at full
resolution from level 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.errors import ConfigError, ImageNotFoundError, ResultsError, TableFileError
from segpipe.io import is_remote, join_url, url_to_fs, zarr_store
from segpipe.labels import image_zarr_url, label_names

__all__ = ["render_overlay", "overlay_images", "class_colors", "PALETTE", "MAX_REGION_PIXELS"]

#: Contour colours, given to classes in sorted order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 48, 48), (48, 220, 48), (64, 140, 255), (255, 200, 0),
    (220, 64, 255), (0, 220, 220), (255, 128, 0), (160, 255, 160),
)  # fmt: skip
#: Contour colour of labels missing from the regions table.
UNKNOWN_COLOR = (255, 255, 255)
#: Largest full-resolution crop drawn (pixels), to keep memory bounded.
MAX_REGION_PIXELS = 8192 * 8192


def class_colors(classes: list[str] | set[str]) -> dict[str, tuple[int, int, int]]:
    """Colour of each class name: the palette in sorted-name order (cycled)."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(sorted(classes))}


def _known_images(results: str, storage_options: dict[str, Any] | None) -> list[str]:
    fs, path = url_to_fs(join_url(str(results), "images"), storage_options)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except (FileNotFoundError, OSError):
        return []
    return sorted(n[: -len(".ome.zarr")] for n in names if n.endswith(".ome.zarr"))


def _open_image(results: str, image_id: str, storage_options: dict[str, Any] | None) -> Any:
    import zarr

    url = image_zarr_url(str(results), image_id)
    try:
        group = zarr.open_group(store=zarr_store(url, storage_options, read_only=True), mode="r")
        multiscales = (group.attrs.get("ome") or {}).get("multiscales") or group.attrs.get(
            "multiscales"
        )
        if not multiscales:
            raise KeyError("multiscales")
    except (FileNotFoundError, KeyError, ValueError) as exc:
        known = _known_images(str(results), storage_options)
        hint = (
            f"known: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''}"
            if known
            else "no images yet"
        )
        raise ImageNotFoundError(f"image {image_id!r} is not in {results} ({hint})") from exc
    return group, [d["path"] for d in multiscales[0]["datasets"]]


def _to_rgb(data: np.ndarray) -> np.ndarray:
    """``(C, Y, X)`` any dtype → ``(Y, X, 3)`` uint8 (percentile stretch unless 8-bit)."""
    data = np.asarray(data)
    c = data.shape[0]
    chans = (
        [data[0]] * 3
        if c == 1
        else [data[0], data[1], np.zeros_like(data[0])]
        if c == 2
        else list(data[:3])
    )
    out = np.empty(data.shape[1:] + (3,), np.uint8)
    for i, ch in enumerate(chans):
        out[..., i] = _stretch(ch)
    return out


def _stretch(ch: np.ndarray) -> np.ndarray:
    """One channel as uint8: itself when 8-bit, else stretched between its 1st and 99.8th percentile."""
    if ch.dtype == np.uint8:
        return ch
    ch = ch.astype(np.float32)
    lo, hi = np.percentile(ch, (1.0, 99.8)) if ch.size else (0.0, 1.0)
    return np.clip((ch - lo) / max(float(hi - lo), 1e-6) * 255, 0, 255).astype(np.uint8)


def _shrunk(data: np.ndarray, max_size: int) -> np.ndarray:
    """``(C, Y, X)`` → uint8 ``(min(C, 3), y, x)`` with the long side ``max_size`` (bilinear).

    Each channel is stretched and shrunk on its own before any RGB copy is made: a grey image
    is resized once, not three times.
    """
    from PIL import Image

    scale = max_size / max(data.shape[1:])
    size = (max(1, round(data.shape[2] * scale)), max(1, round(data.shape[1] * scale)))
    return np.stack([np.asarray(Image.fromarray(_stretch(ch)).resize(size, Image.Resampling.BILINEAR))
                     for ch in data[:3]])  # fmt: skip


def _label_info(
    results: str, image_id: str, storage_options: dict[str, Any] | None
) -> tuple[str | None, dict[int, str]]:
    """(label name of the image's latest done row, label → class) from the tables."""
    from segpipe.tables import open_results, read_errors

    try:
        con = open_results(results, storage_options)
    except TableFileError:  # a bad table file is named, not drawn around
        raise
    except ResultsError:  # no tables: the labels are drawn without classes
        return None, {}
    try:
        with read_errors(results, storage_options):
            uri = con.execute(
                "select labels_uri from images where image_id = ? and status = 'done' "
                "order by updated_at desc limit 1",
                [image_id],
            ).fetchone()
            rows = con.execute(
                "select label, class from regions where image_id = ?", [image_id]
            ).fetchall()
    finally:
        con.close()
    name = uri[0].rstrip("/").rsplit("/", 1)[-1] if uri and uri[0] else None
    return name, {int(label): str(cls) for label, cls in rows}


def _resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if labels.shape == shape:
        return labels
    yy = (np.arange(shape[0]) * labels.shape[0] // shape[0]).clip(0, labels.shape[0] - 1)
    xx = (np.arange(shape[1]) * labels.shape[1] // shape[1]).clip(0, labels.shape[1] - 1)
    return labels[np.ix_(yy, xx)]


def _draw_contours(
    rgb: np.ndarray, labels: np.ndarray, classes: Mapping[int, str],
    palette: Mapping[str, tuple[int, int, int]] | None = None,
) -> tuple[np.ndarray, dict[str, tuple[int, int, int]]]:  # fmt: skip
    """Label contours drawn in their class's colour; the colours of the classes drawn.

    ``palette``: the colour of each class (e.g. one for a whole report, so that a class has
    one colour in every picture); default :func:`class_colors` of every class in
    ``classes``, not only those drawn, so a crop keeps the image's colours."""
    from skimage.segmentation import find_boundaries

    out = rgb.copy()
    edges = find_boundaries(labels, mode="inner") & (labels > 0)
    if not edges.any():
        return out, {}
    ids = labels[edges]
    present = {classes.get(int(i), "region") for i in np.unique(ids)}
    colors = dict(palette or {})
    missing = (set(classes.values()) | present) - colors.keys()
    if missing:  # every class has a colour before any lookup (a crop may lack some)
        colors.update({c: v for c, v in class_colors(missing | colors.keys()).items() if c in missing})
    if len(present) == 1:
        only = present.pop()
        out[edges] = colors[only]
        return out, {only: colors[only]}
    keys = np.array(sorted(classes), dtype=np.int64)
    names = sorted(colors)
    code = np.array([names.index(classes[k]) for k in keys], dtype=np.int64)
    lut = np.array([colors[n] for n in names] + [UNKNOWN_COLOR], np.uint8)
    pos = np.searchsorted(keys, ids).clip(0, max(len(keys) - 1, 0))
    found = keys[pos] == ids if len(keys) else np.zeros(ids.shape, bool)
    out[edges] = lut[np.where(found, code[pos], len(names))]
    return out, {c: colors[c] for c in sorted(present)}


def overlay_images(
    results: str | os.PathLike[str],
    image_id: str,
    region: tuple[int, int, int, int] | None = None,
    label_name: str | None = None,
    max_size: int = 1024,
    label_classes: Mapping[int, str] | None = None,
    storage_options: dict[str, Any] | None = None,
    palette: Mapping[str, tuple[int, int, int]] | None = None,
) -> tuple[Any, Any, dict[str, tuple[int, int, int]]]:
    """The image and the image with label contours, as PIL images, plus the class colours.

    Parameters are those of :func:`render_overlay`; ``label_classes`` (label → class)
    overrides the lookup in the ``regions`` table, and ``palette`` (class → colour) the
    colours (default :func:`class_colors` of the image's classes).

    Returns
    -------
    (PIL.Image.Image, PIL.Image.Image, dict of str to (r, g, b))
        Plain RGB image, RGB image with contours, colour of each class drawn.
    """
    import zarr
    from PIL import Image

    results = str(results)
    group, paths = _open_image(results, image_id, storage_options)
    shapes = [tuple(group[p].shape[-2:]) for p in paths]
    if region is None:
        level = next((i for i, s in enumerate(shapes) if max(s) <= max_size), len(shapes) - 1)
        y0, x0, (y1, x1) = 0, 0, shapes[level]
    else:
        level = 0
        y0, x0, y1, x1 = (int(v) for v in region)
        y0, x0 = max(y0, 0), max(x0, 0)
        y1, x1 = min(y1, shapes[0][0]), min(x1, shapes[0][1])
        if y1 <= y0 or x1 <= x0:
            raise ConfigError(
                f"region {region} is empty inside image {image_id!r} of shape {shapes[0]}"
            )
        if (y1 - y0) * (x1 - x0) > MAX_REGION_PIXELS:
            raise ConfigError(
                f"region {region} is larger than {MAX_REGION_PIXELS} pixels; pick a smaller one"
            )
    data = group[paths[level]][..., y0:y1, x0:x1].reshape((-1, y1 - y0, x1 - x0))
    if region is None and max(data.shape[1:]) > max_size:
        # shrink first, then draw: contours one thumbnail pixel wide, on 10× fewer pixels
        data = _shrunk(data, max_size)
    rgb = _to_rgb(data)

    zarr_url = image_zarr_url(results, image_id)
    names = label_names(zarr_url, storage_options)
    if label_name is not None and label_name not in names:
        raise ConfigError(f"image {image_id!r} has no label image {label_name!r} (has {names})")
    table_name, table_classes = (
        _label_info(results, image_id, storage_options)
        if label_classes is None or label_name is None
        else (None, {})
    )
    if label_name is None and table_name in names:
        name: str | None = table_name
    else:
        name = label_name or (names[0] if names else None)
    colors: dict[str, tuple[int, int, int]] = {}
    overlay = rgb
    if name is not None:
        lab_group = zarr.open_group(
            store=zarr_store(join_url(zarr_url, "labels", name), storage_options, read_only=True),
            mode="r",
        )
        lab_paths = [d["path"] for d in lab_group.attrs["ome"]["multiscales"][0]["datasets"]]
        lab_shapes = [tuple(lab_group[p].shape) for p in lab_paths]
        lvl = next((i for i, s in enumerate(lab_shapes) if s == shapes[level]), None)
        if lvl is None:  # pyramids differ: sample the closest finer level
            lvl = max((i for i, s in enumerate(lab_shapes) if s[0] >= shapes[level][0]), default=0)
        fy = lab_shapes[lvl][0] / shapes[level][0]
        fx = lab_shapes[lvl][1] / shapes[level][1]
        labels = np.asarray(
            lab_group[lab_paths[lvl]][
                int(y0 * fy) : int(np.ceil(y1 * fy)), int(x0 * fx) : int(np.ceil(x1 * fx))
            ]
        )
        labels = _resize_nearest(labels, rgb.shape[:2])
        classes = dict(label_classes) if label_classes is not None else table_classes
        overlay, colors = _draw_contours(rgb, labels, classes, palette)

    return Image.fromarray(rgb), Image.fromarray(overlay), colors


def render_overlay(
    results: str | os.PathLike[str],
    image_id: str,
    out_png: str | os.PathLike[str],
    region: tuple[int, int, int, int] | None = None,
    label_name: str | None = None,
    max_size: int = 1024,
    storage_options: dict[str, Any] | None = None,
) -> Path | str:
    """Write a PNG of an image with its label contours coloured by class.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    image_id : str
        The image (``RESULTS/images/<image_id>.ome.zarr``).
    out_png : str or PathLike
        PNG file to write: a local path (folders are created) or a URL such as
        ``s3://bucket/results/reports/run/a.png`` (written with ``storage_options``).
    region : (y0, x0, y1, x1), optional
        A level-0 crop drawn at full resolution; the whole image when absent, from the
        highest-resolution level whose long side is at most ``max_size``.
    label_name : str, optional
        Label image to draw; when absent, the one the image's latest done row names
        (``labels_uri``), else the first registered one (none: the image only).
    max_size : int
        Longest side of a whole-image PNG.
    storage_options : dict, optional
        fsspec options for remote results.

    Returns
    -------
    pathlib.Path or str
        The PNG written (a ``Path`` for local files, the URL otherwise).

    Raises
    ------
    ImageNotFoundError
        ``image_id`` has no OME-Zarr in ``results``.
    """
    _, drawn, _ = overlay_images(
        results, image_id, region=region, label_name=label_name, max_size=max_size,
        storage_options=storage_options,
    )  # fmt: skip
    # the file's extension picks the format (.jpg, .tif, .webp …); PNG when it names none
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(str(out_png)).suffix.lower(), "PNG")
    if fmt == "JPEG":
        drawn = drawn.convert("RGB")  # no alpha in JPEG
    if is_remote(str(out_png)):  # e.g. s3://bucket/results/reports/<run>/<image>.png
        import io

        buf = io.BytesIO()
        drawn.save(buf, format=fmt)
        fs, path = url_to_fs(str(out_png), storage_options)
        fs.pipe(path, buf.getvalue())
        return str(out_png)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    drawn.save(out, format=fmt)
    return out
