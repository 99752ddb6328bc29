"""Training data: image/target pairs read lazily, crops sampled class-balanced.

A *source* is a list of :class:`Item` objects; an item reads any region of its image
``(C, h, w)`` and of its target ``(h, w)`` without loading the whole image (TIFF through
``tifffile``'s Zarr view, OME-Zarr through zarr; PNG/JPEG are small and read whole). For
balanced sampling each item keeps a low-resolution index of where each class (semantic) or
each object (instance) lies, so rare classes and small objects are drawn as often as
common ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segpipe.errors import ConfigError, ImageReadError

__all__ = ["Item", "ArrayItem", "LazyItem", "folder_items", "zarr_items", "load_items"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_MASK_RE = re.compile(r"(\.labels|\.mask|_masks?|_labels?|_seg|_gt)$", re.IGNORECASE)
INDEX_SIDE = 512  # long side of the low-resolution index used for balanced sampling


@dataclass
class Item:
    """One training image with its target; subclasses implement the two readers."""

    name: str
    shape: tuple[int, int]
    n_channels: int
    modality: str
    mpp: float | None
    index: dict[int, np.ndarray] = field(default_factory=dict)  # class/object -> (n, 2) y, x
    thumb: np.ndarray | None = None  # (C, y, x) for normalisation statistics

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:  # (C, h, w)
        raise NotImplementedError

    def read_target(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:  # (h, w)
        raise NotImplementedError


@dataclass
class ArrayItem(Item):
    """An item held in memory (synthetic samples, PNG files)."""

    image: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 1)))
    target: np.ndarray = field(default_factory=lambda: np.zeros((1, 1)))

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        return _padded(self.image, y0, x0, y1, x1)

    def read_target(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        return _padded(self.target[None], y0, x0, y1, x1)[0]


@dataclass
class LazyItem(Item):
    """An item whose arrays are read region by region (zarr-like ``(C, Y, X)`` / ``(Y, X)``)."""

    image_reader: Callable[[int, int, int, int], np.ndarray] | None = None
    target_reader: Callable[[int, int, int, int], np.ndarray] | None = None

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        assert self.image_reader is not None
        return _clipped_read(self.image_reader, self.shape, y0, x0, y1, x1, self.n_channels)

    def read_target(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        assert self.target_reader is not None
        out = _clipped_read(
            lambda a, b, c, d: self.target_reader(a, b, c, d)[None],  # type: ignore[misc]
            self.shape, y0, x0, y1, x1, 1,
        )
        return out[0]


def _padded(arr: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """``arr[:, y0:y1, x0:x1]`` with zeros outside the array."""
    return _clipped_read(lambda a, b, c, d: arr[:, a:c, b:d], arr.shape[1:], y0, x0, y1, x1, arr.shape[0])


def _clipped_read(
    reader: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, ...],
    y0: int, x0: int, y1: int, x1: int, channels: int,
) -> np.ndarray:
    Y, X = int(shape[0]), int(shape[1])
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, Y), min(x1, X)
    if cy0 >= cy1 or cx0 >= cx1:
        return np.zeros((channels, y1 - y0, x1 - x0), np.float32)
    part = np.asarray(reader(cy0, cx0, cy1, cx1))
    if (cy0, cx0, cy1, cx1) == (y0, x0, y1, x1):
        return part
    out = np.zeros((channels, y1 - y0, x1 - x0), part.dtype)
    out[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = part
    return out


# ------------------------------------------------------------------ low-res index


def build_index(target_lowres: np.ndarray, stride: float, task: str, n: int = 64) -> dict[int, np.ndarray]:
    """Where each class (semantic) or object (instance; key = label) lies, in level-0 px.

    Up to ``n`` positions per key are kept, drawn evenly, so memory stays small.
    """
    index: dict[int, np.ndarray] = {}
    if task == "instance":
        slices = ndi.find_objects(target_lowres.astype(np.int64, copy=False))
        for lab, sl in enumerate(slices, start=1):
            if sl is None:
                continue
            cy = (sl[0].start + sl[0].stop - 1) / 2.0
            cx = (sl[1].start + sl[1].stop - 1) / 2.0
            index[lab] = np.array([[cy * stride, cx * stride]])
        return index
    for cls in np.unique(target_lowres):
        ys, xs = np.nonzero(target_lowres == cls)
        take = np.linspace(0, ys.size - 1, min(n, ys.size)).astype(int)
        index[int(cls)] = np.stack([ys[take], xs[take]], 1) * stride
    return index


def _thumb(reader: Callable[[int, int, int, int], np.ndarray], shape: tuple[int, int], step: int) -> np.ndarray:
    """A strided low-resolution copy read block row by block row (never the whole image)."""
    rows = []
    band = max(step, (2048 // step) * step)
    for y0 in range(0, shape[0], band):
        y1 = min(shape[0], y0 + band)
        rows.append(np.asarray(reader(y0, 0, y1, shape[1]))[..., ::step, ::step])
    return np.concatenate(rows, axis=-2)


# ------------------------------------------------------------------ files


def _open_array(path: Path) -> tuple[Any, str]:
    """A lazily sliceable array for a TIFF (zarr view) or an in-memory one for PNG/JPEG;
    returns (array, axes) with axes like "YX", "YXS", "CYX"."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile
            import zarr

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                axes = series.axes
            store = tifffile.imread(path, aszarr=True, series=0, level=0)
            arr = zarr.open(store, mode="r")
            if not hasattr(arr, "shape"):  # a group (pyramid): level 0
                arr = arr["0"]
            return arr, axes
        from PIL import Image

        with Image.open(path) as im:
            data = np.asarray(im)
        return data, "YX" if data.ndim == 2 else "YXS"
    except (OSError, ValueError, KeyError) as exc:
        raise ImageReadError(f"{path}: cannot read as an image ({exc})") from None


def _region_reader(arr: Any, axes: str, path: Path) -> tuple[Callable[[int, int, int, int], np.ndarray], tuple[int, int], int]:
    """(reader returning (C, h, w), (Y, X), C) for an array with ``axes``."""
    axes = axes.upper().replace("I", "").replace("Q", "")
    shape = tuple(int(s) for s in arr.shape)
    if len(axes) != len(shape):  # squeezed dims; trust the shape
        axes = {2: "YX", 3: "YXS" if shape[-1] in (3, 4) else "CYX"}.get(len(shape), axes)
    if "Y" not in axes or "X" not in axes or len(shape) > 3 + axes.count("T") + axes.count("Z"):
        raise ImageReadError(f"{path}: unsupported axes {axes} with shape {shape}")
    ya, xa = axes.index("Y"), axes.index("X")
    other = [i for i in range(len(shape)) if i not in (ya, xa)]
    n_ch = int(np.prod([shape[i] for i in other])) if other else 1

    def read(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        sl: list[Any] = [slice(None)] * len(shape)
        sl[ya], sl[xa] = slice(y0, y1), slice(x0, x1)
        part = np.asarray(arr[tuple(sl)])
        part = np.moveaxis(part, [ya, xa], [-2, -1])
        return part.reshape(-1, part.shape[-2], part.shape[-1])

    return read, (shape[ya], shape[xa]), n_ch


def _modality(thumb: np.ndarray) -> str:
    if thumb.shape[0] == 3 and thumb.dtype == np.uint8:
        return "brightfield"
    return "fluorescence" if np.median(thumb) < np.percentile(thumb, 99) * 0.3 else "grey"


def _mpp(path: Path) -> float | None:
    try:
        from segpipe.io import open_image

        src = open_image(str(path))
        try:
            return src.mpp
        finally:
            src.close()
    except Exception:  # noqa: BLE001 - a missing pixel size is not an error here
        return None


def find_pairs(folder: Path, masks: Path | None = None) -> list[tuple[Path, Path]]:
    """Image/mask pairs in ``folder``.

    A mask of ``a/b.tif`` is, in this order: ``masks/a/b.labels.tif`` (when ``masks`` is
    given: a tree mirroring the images, as ``make_archive`` writes its truth), a sibling
    ``b.labels.*`` / ``b_mask(s).*`` / ``b_label(s).*`` / ``b_seg.*`` / ``b_gt.*``, or
    ``../masks/b.*`` / ``../labels/b.*`` next to an ``images/`` folder.
    """
    if not folder.is_dir():
        raise ConfigError(f"{folder}: training data folder not found; pass a folder of images and masks")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = []
    for img in files:
        stem = img.name[: -len(img.suffix)]
        if stem.lower().endswith(".ome"):
            stem = stem[:-4]
        if _MASK_RE.search(stem) or img.parent.name.lower() in ("masks", "labels"):
            continue
        cands: list[Path] = []
        if masks is not None:
            rel = img.relative_to(folder)
            cands += [masks / (str(rel) + ".labels.tif"), masks / rel.parent / (stem + ".labels.tif")]
        for tag in (".labels", "_mask", "_masks", "_label", "_labels", "_seg", "_gt"):
            cands += [img.with_name(stem + tag + s) for s in IMAGE_SUFFIXES]
        for sub in ("masks", "labels"):
            cands += [img.parent.parent / sub / (stem + s) for s in IMAGE_SUFFIXES]
        mask = next((c for c in cands if c.is_file()), None)
        if mask is not None:
            pairs.append((img, mask))
    if not pairs:
        raise ConfigError(
            f"{folder}: no image/mask pairs found; name masks <image>.labels.tif, <image>_mask.png "
            "or put them in a masks/ folder beside images/"
        )
    return pairs


def _finish_item(item: Item, target_thumb: np.ndarray, step: int, task: str, n_classes: int | None, mask_name: str) -> Item:
    if task == "semantic" and n_classes is not None and target_thumb.size and int(target_thumb.max()) >= n_classes:
        raise ConfigError(
            f"{mask_name}: class value {int(target_thumb.max())} but only {n_classes} classes; "
            "pass --classes with one name per value"
        )
    item.index = build_index(target_thumb, step, task)
    return item


def folder_items(folder: Path, task: str, n_classes: int | None = None, masks: Path | None = None) -> list[Item]:
    """Items for every image/mask pair under ``folder`` (see :func:`find_pairs`)."""
    items: list[Item] = []
    for img, mask in find_pairs(folder, masks):
        iarr, iaxes = _open_array(img)
        marr, maxes = _open_array(mask)
        iread, ishape, n_ch = _region_reader(iarr, iaxes, img)
        mread, mshape, m_ch = _region_reader(marr, maxes, mask)
        if ishape != mshape or m_ch != 1:
            raise ConfigError(
                f"{mask}: mask shape {mshape} x {m_ch} channel(s) does not match image {img} "
                f"shape {ishape}; a mask needs the image's height and width and one channel"
            )
        step = max(1, int(np.ceil(max(ishape) / INDEX_SIDE)))
        thumb = _thumb(iread, ishape, step)
        tthumb = _thumb(mread, mshape, step)[0]
        item = LazyItem(
            name=str(img), shape=ishape, n_channels=n_ch, modality=_modality(thumb),
            mpp=_mpp(img), thumb=thumb, image_reader=iread,
            target_reader=lambda a, b, c, d, r=mread: r(a, b, c, d)[0],
        )
        items.append(_finish_item(item, tthumb, step, task, n_classes, str(mask)))
    return items


def zarr_items(path: Path, task: str, label_name: str | None, n_classes: int | None = None) -> list[Item]:
    """Items for an OME-Zarr image with ``labels/<label_name>`` (or a folder of them)."""
    import zarr

    paths = [path] if (path / "zarr.json").exists() or (path / ".zattrs").exists() else sorted(path.glob("*.zarr"))
    items: list[Item] = []
    for p in paths:
        try:
            group = zarr.open_group(str(p), mode="r")
            names = list(group["labels"].group_keys()) if "labels" in group else []
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(f"{p}: cannot open as OME-Zarr ({exc})") from None
        name = label_name or (names[0] if len(names) == 1 else None)
        if name is None or name not in names:
            raise ConfigError(f"{p}: choose the labels to train on with label_name; found {names}")
        image, labels = group["0"], group[f"labels/{name}/0"]
        meta = dict(group.attrs).get("segpipe", {})
        shape = (int(image.shape[-2]), int(image.shape[-1]))
        if tuple(labels.shape[-2:]) != shape:
            raise ConfigError(f"{p}/labels/{name}: shape {labels.shape} does not match image shape {image.shape}")
        iread = lambda a, b, c, d, im=image: np.asarray(im[..., a:c, b:d]).reshape(-1, c - a, d - b)  # noqa: E731
        tread = lambda a, b, c, d, lb=labels: np.asarray(lb[a:c, b:d])  # noqa: E731
        step = max(1, int(np.ceil(max(shape) / INDEX_SIDE)))
        thumb = _thumb(iread, shape, step)
        item = LazyItem(
            name=str(p), shape=shape, n_channels=int(np.prod(image.shape[:-2])),
            modality=meta.get("modality") or _modality(thumb), mpp=meta.get("mpp"),
            thumb=thumb, image_reader=iread, target_reader=tread,
        )
        tthumb = _thumb(lambda a, b, c, d, r=tread: r(a, b, c, d)[None], shape, step)[0]
        items.append(_finish_item(item, tthumb, step, task, n_classes, str(p)))
    if not items:
        raise ConfigError(f"{path}: no .ome.zarr images found")
    return items


def array_item(name: str, image: np.ndarray, target: np.ndarray, task: str, modality: str, mpp: float | None = None) -> ArrayItem:
    """An in-memory item from ``image (C, Y, X)`` and ``target (Y, X)``."""
    if image.shape[1:] != target.shape:
        raise ConfigError(f"{name}: target shape {target.shape} does not match image shape {image.shape}")
    step = max(1, int(np.ceil(max(target.shape) / INDEX_SIDE)))
    item = ArrayItem(
        name=name, shape=target.shape, n_channels=image.shape[0], modality=modality, mpp=mpp,
        thumb=image[:, ::step, ::step], image=image, target=target,
    )
    item.index = build_index(target[::step, ::step], step, task)
    return item


def load_items(data: str, task: str, n_classes: int | None, label_name: str | None = None, masks: str | None = None) -> list[Item]:
    """Items of a folder of pairs or OME-Zarr image(s) (synthetic data is handled elsewhere)."""
    path = Path(data)
    if not path.exists():
        raise ConfigError(f"{data}: training data not found; pass a folder, an .ome.zarr or synthetic:<kind>")
    if path.suffix == ".zarr" or any(path.glob("*.zarr")):
        return zarr_items(path, task, label_name, n_classes)
    return folder_items(path, task, n_classes, Path(masks) if masks else None)
