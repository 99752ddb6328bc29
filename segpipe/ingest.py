"""Source image → OME-Zarr (Zarr v3, OME-NGFF 0.5) multiscale image, block by block on Dask.

Layout written (see docs/architecture.md): arrays ``0``, ``1``, … of shape ``(C, Y, X)``,
chunks ``(C, chunk, chunk)``, optional shards ``(C, shard, shard)``, zstd compression; each
level halves the one above (2×2 mean, rounded; an odd last row/column is averaged over the
pixels that exist) until the long side is at most ``min_size``. Attributes ``ome`` (NGFF 0.5
multiscales + omero channels) and ``segpipe`` (mpp, modality, source_uri, channel_names, …);
``segpipe.complete = true`` is written last, so :func:`is_complete` tells a finished ingest
from one a crash interrupted (which the next ingest removes and rewrites).

Work is split into one Dask task per output block (the shard when sharded, else the chunk).
A level-0 task receives the source URL and block coordinates, opens the source itself (one
open :class:`~segpipe.io.ImageSource` cached per worker process), reads its region and
writes its block into the store; a lower-level task reads the 2× larger region of the level
above *from the store*. Tasks return only a pixel count. No process ever holds a whole level.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segpipe.errors import ConfigError, ImageReadError
from segpipe.io import ImageSource, open_image, remove, url_to_fs, zarr_store

__all__ = [
    "IngestSpec",
    "ImageMeta",
    "ingest_image",
    "read_meta",
    "is_complete",
    "level_shapes_for",
    "downsample2",
]

_COMPRESSIONS = ("zstd", "blosc", "none")


@dataclass(frozen=True)
class IngestSpec:
    """How an image is laid out in its OME-Zarr store.

    Parameters
    ----------
    chunk : int
        Chunk side in pixels (even, ≥ 16); chunks are ``(C, chunk, chunk)``.
    shard : int or None
        Shard side in pixels, a multiple of ``chunk``; None writes unsharded arrays.
    compression : str
        ``"zstd"`` (default), ``"blosc"`` (blosc-zstd with byte shuffle) or ``"none"``.
    min_size : int
        Levels are added while the long side of the last level exceeds this.
    """

    chunk: int = 1024
    shard: int | None = None
    compression: str = "zstd"
    min_size: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.chunk, int) or self.chunk < 16 or self.chunk % 2:
            raise ConfigError(
                f"IngestSpec.chunk={self.chunk!r}: use an even number ≥ 16, e.g. 1024"
            )
        if self.shard is not None and (
            not isinstance(self.shard, int) or self.shard < self.chunk or self.shard % self.chunk
        ):
            raise ConfigError(
                f"IngestSpec.shard={self.shard!r}: use a multiple of chunk={self.chunk} (or None)"
            )
        if self.compression not in _COMPRESSIONS:
            raise ConfigError(
                f"IngestSpec.compression={self.compression!r}: use one of {', '.join(_COMPRESSIONS)}"
            )
        if not isinstance(self.min_size, int) or self.min_size < 1:
            raise ConfigError(f"IngestSpec.min_size={self.min_size!r}: use a positive integer")

    @property
    def block(self) -> int:
        """Side of the unit of work: the shard when sharded, else the chunk."""
        return self.shard or self.chunk


@dataclass
class ImageMeta:
    """What the rest of the pipeline needs to know about an ingested image."""

    zarr_url: str
    shape: tuple[int, int]
    n_channels: int
    dtype: np.dtype
    mpp: float | None
    modality: str
    levels: list[tuple[int, int]]
    channel_names: list[str] = field(default_factory=list)
    chunk: int = 1024
    shard: int | None = None
    source_uri: str = ""


# --------------------------------------------------------------------------- pure core
def level_shapes_for(shape: tuple[int, int], min_size: int = 1024) -> list[tuple[int, int]]:
    """Pyramid sizes: halve (rounding up) until the long side is at most ``min_size``.

    >>> level_shapes_for((2503, 1979), 600)
    [(2503, 1979), (1252, 990), (626, 495), (313, 248)]
    """
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > min_size:
        y, x = shapes[-1]
        shapes.append(((y + 1) // 2, (x + 1) // 2))
    return shapes


def downsample2(block: np.ndarray) -> np.ndarray:
    """2×2 mean of a ``(C, Y, X)`` block; an odd last row / column averages what exists.

    Integers are rounded half up and keep their dtype; floats are averaged in float32.

    >>> downsample2(np.array([[[0, 2, 5], [2, 4, 7]]], np.uint8))
    array([[[2, 6]]], dtype=uint8)
    """
    _, y, x = block.shape
    if y % 2 or x % 2:
        block = np.pad(block, ((0, 0), (0, y % 2), (0, x % 2)), mode="edge")
    if np.issubdtype(block.dtype, np.integer):
        acc = {1: np.uint16, 2: np.uint32}.get(block.dtype.itemsize, np.int64)
        total = block[:, 0::2, 0::2].astype(acc)
        for dy, dx in ((1, 0), (0, 1), (1, 1)):
            total += block[:, dy::2, dx::2]
        total += 2
        total //= 4
        return total.astype(block.dtype)
    total = block[:, 0::2, 0::2].astype(np.float32)
    for dy, dx in ((1, 0), (0, 1), (1, 1)):
        total += block[:, dy::2, dx::2]
    total *= 0.25
    return total.astype(block.dtype)


def _blocks(shape: tuple[int, int], block: int) -> Iterator[tuple[int, int, int, int]]:
    ny, nx = shape
    for y0 in range(0, ny, block):
        for x0 in range(0, nx, block):
            yield y0, x0, min(y0 + block, ny), min(x0 + block, nx)


# --------------------------------------------------------------------------- worker side
_SOURCES: OrderedDict[tuple[str, str, str], ImageSource] = OrderedDict()
_SOURCES_LOCK = threading.Lock()
_MAX_OPEN_SOURCES = 8


def _cached_source(
    uri: str, storage_options: dict[str, Any] | None, token: str = ""
) -> ImageSource:
    """One open ImageSource per (uri, options, token) per process (small LRU).

    ``token`` (size + mtime / ETag, taken by the driver) makes a long-lived worker reopen a
    source that changed since it was cached instead of reading through stale handles.
    Evicted sources are dropped, not closed: another thread may still be reading them.
    """
    key = (uri, json.dumps(storage_options or {}, sort_keys=True, default=str), token)
    with _SOURCES_LOCK:
        src = _SOURCES.get(key)
        if src is not None:
            _SOURCES.move_to_end(key)
            return src
    src = open_image(uri, storage_options)
    with _SOURCES_LOCK:
        _SOURCES[key] = src
        while len(_SOURCES) > _MAX_OPEN_SOURCES:
            _SOURCES.popitem(last=False)
    return src


def _source_token(uri: str, storage_options: dict[str, Any] | None) -> str:
    """Size + mtime / ETag of ``uri``: part of the worker cache key."""
    fs, path = url_to_fs(uri, storage_options)
    try:
        info = fs.info(path)
    except Exception:
        return ""
    stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{stamp}"


def _open_level(
    zarr_url: str, level: int, storage_options: dict[str, Any] | None, mode: str
) -> Any:
    import zarr

    store = zarr_store(zarr_url, storage_options, read_only=mode == "r")
    array = zarr.open_array(store=store, path=str(level), mode=mode)
    # Blocks are written whole: skipping zarr's all-fill-value scan halves the write time
    # (a blank chunk is then stored, compressed to a few bytes, instead of omitted).
    return array if mode == "r" else array.with_config({"write_empty_chunks": True})


def _copy_block(
    source_uri: str,
    token: str,
    zarr_url: str,
    storage_options: dict[str, Any] | None,
    y0: int,
    x0: int,
    y1: int,
    x1: int,
) -> int:
    """Dask task: read source level 0 ``[y0:y1, x0:x1]`` and write it into array ``0``."""
    data = _cached_source(source_uri, storage_options, token).read_region(0, y0, x0, y1, x1)
    _open_level(zarr_url, 0, storage_options, "r+")[:, y0:y1, x0:x1] = data
    return int(data.shape[1] * data.shape[2])


def _reduce_block(
    zarr_url: str,
    storage_options: dict[str, Any] | None,
    level: int,
    y0: int,
    x0: int,
    y1: int,
    x1: int,
) -> int:
    """Dask task: 2×2-mean the matching region of ``level - 1`` into ``level`` ``[y0:y1, x0:x1]``."""
    above = _open_level(zarr_url, level - 1, storage_options, "r")
    py, px = above.shape[1:]
    parent = np.asarray(above[:, 2 * y0 : min(2 * y1, py), 2 * x0 : min(2 * x1, px)])
    out = downsample2(parent)
    _open_level(zarr_url, level, storage_options, "r+")[:, y0:y1, x0:x1] = out
    return int(out.shape[1] * out.shape[2])


def _run(tasks: list[Any], client: Any) -> None:
    import dask

    if not tasks:
        return
    if client is None:
        dask.compute(*tasks)
    else:
        client.gather(client.compute(tasks))


# --------------------------------------------------------------------------- driver
def _compressors(name: str) -> Any:
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "zstd":
        return ZstdCodec(level=1)  # ~4x faster than level 3, ~10% larger on camera data
    if name == "blosc":
        return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    return None


def _ome_attrs(src: ImageSource, levels: list[tuple[int, int]], name: str) -> dict[str, Any]:
    unit = {"unit": "micrometer"} if src.mpp is not None else {}
    base = src.mpp if src.mpp is not None else 1.0
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, base * 2**i, base * 2**i]}
            ],
        }
        for i in range(len(levels))
    ]
    if np.issubdtype(src.dtype, np.integer):
        hi = float(np.iinfo(src.dtype).max)
    else:
        hi = 1.0
    colours = ["FF0000", "00FF00", "0000FF"] if src.modality == "brightfield" else None
    channels = [
        {
            "label": label,
            "color": colours[i] if colours else "FFFFFF",
            "active": True,
            "window": {"min": 0.0, "max": hi, "start": 0.0, "end": hi},
        }
        for i, label in enumerate(src.channel_names)
    ]
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", **unit},
                    {"name": "x", "type": "space", **unit},
                ],
                "datasets": datasets,
            }
        ],
        "omero": {"channels": channels, "rdefs": {"model": "color" if colours else "greyscale"}},
    }


def ingest_image(
    source_uri: str,
    zarr_url: str,
    spec: IngestSpec | None = None,
    client: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> ImageMeta:
    """Write ``source_uri`` as an OME-Zarr multiscale image at ``zarr_url``.

    Anything already at ``zarr_url`` (e.g. a store a crash left half-written) is removed
    first; ``segpipe.complete = true`` is the last thing written.

    Parameters
    ----------
    source_uri : str
        Any image :func:`segpipe.io.open_image` reads (local path or URL).
    zarr_url : str
        Target store, local path or URL, e.g. ``RESULTS/images/<image_id>.ome.zarr``.
    spec : IngestSpec, optional
        Chunk / shard / compression / pyramid depth.
    client : distributed.Client, optional
        Where the block tasks run; None uses dask's default (local threaded) scheduler.
    storage_options : dict, optional
        fsspec options for remote source / target URLs.

    Returns
    -------
    ImageMeta
    """
    import dask
    import zarr

    spec = spec or IngestSpec()
    with open_image(source_uri, storage_options) as src:
        levels = level_shapes_for(src.level_shapes[0], spec.min_size)
        c = src.n_channels
        remove(zarr_url, storage_options)
        store = zarr_store(zarr_url, storage_options)
        root = zarr.create_group(store=store, zarr_format=3, overwrite=True)
        for i, (ly, lx) in enumerate(levels):
            root.create_array(
                str(i),
                shape=(c, ly, lx),
                dtype=src.dtype,
                chunks=(c, spec.chunk, spec.chunk),
                shards=(c, spec.shard, spec.shard) if spec.shard else None,
                compressors=_compressors(spec.compression),
                fill_value=0,
                dimension_names=("c", "y", "x"),
            )
        name = source_uri.rstrip("/").rsplit("/", 1)[-1]
        own = {
            "mpp": src.mpp,
            "modality": src.modality,
            "source_uri": str(source_uri),
            "channel_names": list(src.channel_names),
            "chunk": spec.chunk,
            "shard": spec.shard,
            "complete": False,
        }
        root.attrs.update({"ome": _ome_attrs(src, levels, name), "segpipe": own})
        meta = ImageMeta(
            zarr_url=str(zarr_url),
            shape=levels[0],
            n_channels=c,
            dtype=np.dtype(src.dtype),
            mpp=src.mpp,
            modality=src.modality,
            levels=levels,
            channel_names=list(src.channel_names),
            chunk=spec.chunk,
            shard=spec.shard,
            source_uri=str(source_uri),
        )
    copy = dask.delayed(_copy_block, pure=False)
    token = _source_token(str(source_uri), storage_options)
    _run(
        [
            copy(str(source_uri), token, str(zarr_url), storage_options, *b)
            for b in _blocks(levels[0], spec.block)
        ],
        client,
    )
    reduce = dask.delayed(_reduce_block, pure=False)
    for level in range(1, len(levels)):
        _run(
            [
                reduce(str(zarr_url), storage_options, level, *b)
                for b in _blocks(levels[level], spec.block)
            ],
            client,
        )
    root = zarr.open_group(store=zarr_store(zarr_url, storage_options), mode="r+")
    root.attrs["segpipe"] = {**own, "complete": True}
    return meta


def read_meta(zarr_url: str, storage_options: dict[str, Any] | None = None) -> ImageMeta:
    """Read the :class:`ImageMeta` of an image written by :func:`ingest_image`.

    Raises
    ------
    ImageReadError
        When ``zarr_url`` is missing or is not a segpipe OME-Zarr image.
    """
    import zarr

    try:
        root = zarr.open_group(
            store=zarr_store(zarr_url, storage_options, read_only=True), mode="r"
        )
        own = dict(root.attrs["segpipe"])
        paths = [d["path"] for d in root.attrs["ome"]["multiscales"][0]["datasets"]]
        arrays = [root[p] for p in paths]
    except Exception as exc:
        raise ImageReadError(
            f"{zarr_url}: not a segpipe OME-Zarr image ({type(exc).__name__}: {exc}); "
            "ingest the source again"
        ) from exc
    c, y, x = arrays[0].shape
    shard = own.get("shard")
    return ImageMeta(
        zarr_url=str(zarr_url),
        shape=(int(y), int(x)),
        n_channels=int(c),
        dtype=np.dtype(arrays[0].dtype),
        mpp=own.get("mpp"),
        modality=str(own.get("modality")),
        levels=[(int(a.shape[1]), int(a.shape[2])) for a in arrays],
        channel_names=list(own.get("channel_names") or []),
        chunk=int(own.get("chunk") or arrays[0].chunks[1]),
        shard=int(shard) if shard else None,
        source_uri=str(own.get("source_uri", "")),
    )


def is_complete(zarr_url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """True when ``zarr_url`` holds an image whose ingest finished (``segpipe.complete``)."""
    import zarr

    try:
        root = zarr.open_group(
            store=zarr_store(zarr_url, storage_options, read_only=True), mode="r"
        )
        return bool(dict(root.attrs.get("segpipe") or {}).get("complete") is True)
    except Exception:
        return False
