"""Label images as OME-NGFF 0.5 ``labels/<name>/`` pyramids inside an OME-Zarr image.

Layout inside ``RESULTS/images/<image_id>.ome.zarr`` (Zarr v3)::

    labels/                 attributes {"ome": {"version": "0.5", "labels": ["nuclei", ...]}}
    labels/<name>/          attributes {"ome": {"version": "0.5", "multiscales": [...],
                                                "image-label": {"colors": [...], "source": ...}}}
    labels/<name>/0, 1, …   (Y, X) uint32 arrays, fill value 0, level k is 2**k smaller

Two steps, so a label image is never listed half-written:

1. :func:`create_label_array` makes level ``0`` (empty: absent chunks read as 0 and
   background chunks are never stored), which the engine fills block by block.
2. :func:`finalize_labels` builds the lower levels from the level above, block by block
   (nearest-neighbour: a label id is never averaged with its neighbours), writes the
   metadata and only then registers the name in ``labels/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segpipe.errors import ConfigError, ImageNotFoundError
from segpipe.io import join_url, zarr_store

__all__ = [
    "create_label_array",
    "finalize_labels",
    "label_names",
    "open_label_level",
    "image_zarr_url",
    "MIN_LEVEL_SIZE",
]

#: Lower levels are added until the long side is at most this many pixels (as for images).
MIN_LEVEL_SIZE = 1024
NGFF_VERSION = "0.5"


def image_zarr_url(results: str, image_id: str) -> str:
    """URL of an image's OME-Zarr in a results folder: ``RESULTS/images/<image_id>.ome.zarr``."""
    return join_url(str(results), "images", f"{image_id}.ome.zarr")


def _open_group(url: str, storage_options: dict[str, Any] | None, mode: str = "r") -> Any:
    import zarr

    store = zarr_store(url, storage_options, read_only=mode == "r")
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3 if mode != "r" else None)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise ImageNotFoundError(
            f"{url} is not a zarr group; ingest the image (segpipe.ingest) first"
        ) from exc


def _ome(group: Any) -> dict[str, Any]:
    return dict(group.attrs.get("ome") or {})


def create_label_array(
    zarr_url: str,
    name: str,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    shards: tuple[int, int] | None = None,
    dtype: str = "uint32",
    storage_options: dict[str, Any] | None = None,
    check_image: bool = True,
) -> Any:
    """Create (or replace) level ``0`` of label image ``name``; return it for writing.

    The array has fill value 0 and is written with ``write_empty_chunks=False``, so chunks
    that hold only background cost nothing on disk. The label is not listed in
    ``labels/`` until :func:`finalize_labels` runs; re-creating a listed label (a rerun)
    unlists it and drops its old levels.

    Parameters
    ----------
    zarr_url : str
        The OME-Zarr image (local path or URL), e.g. ``RESULTS/images/<id>.ome.zarr``.
    name : str
        Label image name, e.g. ``"nuclei"``.
    shape : (Y, X) tuple of int
        Level-0 size of the image.
    chunks : (cy, cx) tuple of int
        Chunk shape (use the image's level-0 chunks).
    shards : (sy, sx) tuple of int, optional
        Shard shape, a multiple of ``chunks``; writers must then own whole shards.
    dtype : str
        Integer dtype of the ids (``uint32`` by default).
    storage_options : dict, optional
        fsspec options for remote stores.
    check_image : bool
        Check first that the image exists (a caller that has just read it can skip the
        round trip).

    Returns
    -------
    zarr.Array
        ``(Y, X)`` level 0, zero everywhere.
    """
    import zarr

    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"label name {name!r} must be a plain name such as 'nuclei'")
    if np.dtype(dtype).kind not in "ui":
        raise ConfigError(f"label dtype {dtype!r} must be an integer type such as 'uint32'")
    if len(shape) != 2 or len(chunks) != 2 or (shards is not None and len(shards) != 2):
        raise ConfigError(f"label shape {shape}, chunks {chunks}, shards {shards} must be (Y, X)")
    if check_image:
        _open_group(zarr_url, storage_options)  # the image must exist
    fresh = {"version": NGFF_VERSION, "labels": []}
    labels = zarr.open_group(  # a new labels group is created with its attributes
        store=zarr_store(join_url(zarr_url, "labels"), storage_options),
        mode="a",
        zarr_format=3,
        attributes={"ome": fresh},
    )
    # a rerun replaces the label: unlist it first, so that listed always means complete
    listed = [n for n in _ome(labels).get("labels", []) if n != name]
    ome = {"version": NGFF_VERSION, "labels": listed}
    if _ome(labels) != ome:  # written only when it changes (not for a new group)
        labels.attrs["ome"] = ome
    # each node through a store rooted at it: zarr then checks one parent, not the whole chain
    label_url = join_url(zarr_url, "labels", name)
    zarr.create_group(store=zarr_store(label_url, storage_options), overwrite=True, zarr_format=3)
    return zarr.create_array(
        store=zarr_store(join_url(label_url, "0"), storage_options),
        zarr_format=3,
        shape=tuple(int(s) for s in shape),
        chunks=tuple(int(c) for c in chunks),
        shards=None if shards is None else tuple(int(s) for s in shards),
        dtype=dtype,
        fill_value=0,
        compressors=zarr.codecs.ZstdCodec(level=3),
        dimension_names=("y", "x"),
        config={"write_empty_chunks": False},
    )


def _level_shapes(shape: tuple[int, int], n_levels: int | None) -> list[tuple[int, int]]:
    shapes = [tuple(int(s) for s in shape)]
    while (len(shapes) < n_levels) if n_levels else max(shapes[-1]) > MIN_LEVEL_SIZE:
        y, x = shapes[-1]
        if max(y, x) <= 1:
            break
        shapes.append((math.ceil(y / 2), math.ceil(x / 2)))
    return shapes  # type: ignore[return-value]


def _downsample_block(
    label_url: str,
    level: int,
    y0: int,
    x0: int,
    y1: int,
    x1: int,
    storage_options: dict[str, Any] | None,
) -> int:
    """Write ``level[y0:y1, x0:x1]`` from ``level - 1`` (every second pixel); return nonzero count."""
    import zarr

    group = zarr.open_group(store=zarr_store(label_url, storage_options), mode="r+")
    src, dst = group[str(level - 1)], group[str(level)]
    block = np.asarray(
        src[2 * y0 : min(2 * y1, src.shape[0]) : 2, 2 * x0 : min(2 * x1, src.shape[1]) : 2]
    )
    if block.any():
        dst[y0:y1, x0:x1] = block
    return int(np.count_nonzero(block))


def _blocks(shape: tuple[int, int], block: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    by, bx = block
    return [
        (y, x, min(y + by, shape[0]), min(x + bx, shape[1]))
        for y in range(0, shape[0], by)
        for x in range(0, shape[1], bx)
    ]


def _color_list(
    colors: Mapping[int, Sequence[int]] | Sequence[Mapping[str, Any]] | None,
) -> list[dict[str, Any]]:
    if colors is None:
        return [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    if isinstance(colors, Mapping):
        return [{"label-value": int(k), "rgba": [int(c) for c in v]} for k, v in colors.items()]
    return [dict(c) for c in colors]


def _property_list(
    properties: Mapping[int, Mapping[str, Any]] | Sequence[Mapping[str, Any]] | None,
) -> list[dict[str, Any]] | None:
    if properties is None:
        return None
    if isinstance(properties, Mapping):
        return [{"label-value": int(k), **dict(v)} for k, v in properties.items()]
    return [dict(p) for p in properties]


def _image_scale(image: Any) -> tuple[float | None, int | None]:
    """(µm/px at level 0, number of image levels) from the image group's attributes.

    The ``segpipe`` block written by ingest wins (``mpp: null`` means unknown); otherwise
    the first dataset's scale counts when the image's ``x`` axis has a micrometre unit.
    """
    ome = _ome(image)
    multiscales = ome.get("multiscales") or image.attrs.get("multiscales") or [{}]
    datasets = multiscales[0].get("datasets", [])
    n_levels = len(datasets) or None
    info = image.attrs.get("segpipe") or {}
    if "mpp" in info:
        return (None if info["mpp"] is None else float(info["mpp"])), n_levels
    axes = {a.get("name"): a for a in multiscales[0].get("axes", []) if isinstance(a, dict)}
    if datasets and axes.get("x", {}).get("unit") in ("micrometer", "micron"):
        for t in datasets[0].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                return float(t["scale"][-1]), n_levels
    return None, n_levels


def finalize_labels(
    zarr_url: str,
    name: str,
    source_image: str = "../../",
    colors: Mapping[int, Sequence[int]] | Sequence[Mapping[str, Any]] | None = None,
    properties: Mapping[int, Mapping[str, Any]] | Sequence[Mapping[str, Any]] | None = None,
    client: Any = None,
    storage_options: dict[str, Any] | None = None,
    base: Any = None,
    image_scale: tuple[float | None, int | None] | None = None,
) -> list[tuple[int, int]]:
    """Build the pyramid of label image ``name``, write its metadata and register it.

    Level ``k`` is level ``k - 1`` sampled at every second pixel (nearest neighbour: ids
    are never averaged). Each level is written block by block (one block per shard, or
    per chunk when unsharded), on ``client`` when given, so no level is ever whole in
    memory. The pyramid has as many levels as the image, or goes down to
    :data:`MIN_LEVEL_SIZE` pixels when the image has no multiscales metadata.

    Parameters
    ----------
    zarr_url : str
        The OME-Zarr image holding ``labels/<name>/0`` (see :func:`create_label_array`).
    name : str
        Label image name.
    source_image : str
        Relative path from the label group to its image (``image-label.source.image``).
    colors : mapping or list, optional
        ``{label_value: [r, g, b, a]}`` (0–255) or NGFF ``[{"label-value", "rgba"}]``;
        default: background 0 transparent.
    properties : mapping or list, optional
        ``{label_value: {...}}`` or NGFF ``[{"label-value", ...}]``; keep it small
        (a per-region table belongs in ``tables/regions``).
    client : distributed.Client, optional
        Run the block tasks on this cluster; in-process when absent.
    storage_options : dict, optional
        fsspec options for remote stores.
    base : zarr.Array, optional
        Level 0 of the label image, when the caller has it open (as
        :func:`create_label_array` returned it): not opened again.
    image_scale : (float or None, int or None), optional
        The image's level-0 µm/px and number of pyramid levels, when the caller knows them
        (e.g. from :func:`segpipe.ingest.read_meta`); read from the image otherwise.

    Returns
    -------
    list of (int, int)
        The ``(Y, X)`` shape of each level.
    """
    import zarr

    label_url = join_url(zarr_url, "labels", name)
    group = _open_group(label_url, storage_options, mode="r+")
    if base is None:
        try:
            base = group["0"]
        except KeyError:
            raise ConfigError(f"{label_url}/0 does not exist; call create_label_array first") from None
    mpp, n_levels = image_scale or _image_scale(_open_group(zarr_url, storage_options))
    shapes = _level_shapes(base.shape, n_levels)
    block = base.shards or base.chunks
    for level in range(1, len(shapes)):
        zarr.create_array(  # through a store rooted at the level: zarr checks one parent
            store=zarr_store(join_url(label_url, str(level)), storage_options),
            zarr_format=3,
            shape=shapes[level],
            chunks=base.chunks,
            shards=base.shards,
            dtype=base.dtype,
            fill_value=0,
            compressors=zarr.codecs.ZstdCodec(level=3),
            dimension_names=("y", "x"),
            config={"write_empty_chunks": False},
            overwrite=True,
        )
        args = [(label_url, level, *b, storage_options) for b in _blocks(shapes[level], block)]
        if client is None:
            for a in args:
                _downsample_block(*a)
        else:
            futures = [client.submit(_downsample_block, *a, pure=False) for a in args]
            client.gather(futures)

    unit = {"unit": "micrometer"} if mpp else {}
    scale0 = mpp or 1.0
    group.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [
                    {"name": "y", "type": "space", **unit},
                    {"name": "x", "type": "space", **unit},
                ],
                "datasets": [
                    {
                        "path": str(k),
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [scale0 * 2**k, scale0 * 2**k]}
                        ],
                    }
                    for k in range(len(shapes))
                ],
                "type": "nearest",
            }
        ],
        "image-label": {
            "colors": _color_list(colors),
            **({"properties": p} if (p := _property_list(properties)) else {}),
            "source": {"image": source_image},
        },
    }
    labels = zarr.open_group(
        store=zarr_store(join_url(zarr_url, "labels"), storage_options), mode="r+"
    )
    registered = list(_ome(labels).get("labels", []))
    if name not in registered:
        registered.append(name)
    labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": registered}
    return [tuple(s) for s in shapes]  # type: ignore[misc]


def label_names(zarr_url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names of the finished label images of an OME-Zarr image (``[]`` when none)."""
    import zarr

    try:
        labels = zarr.open_group(
            store=zarr_store(join_url(zarr_url, "labels"), storage_options, read_only=True),
            mode="r",
            zarr_format=3,
        )
    except (FileNotFoundError, KeyError, ValueError):
        return []
    return list(_ome(labels).get("labels", []))


def open_label_level(
    zarr_url: str, name: str, level: int = 0, storage_options: dict[str, Any] | None = None
) -> Any:
    """Open level ``level`` of label image ``name`` read-only (a ``zarr.Array`` ``(Y, X)``)."""
    group = _open_group(join_url(zarr_url, "labels", name), storage_options)
    try:
        return group[str(level)]
    except KeyError as exc:
        raise ConfigError(f"{zarr_url}/labels/{name} has no level {level}") from exc
