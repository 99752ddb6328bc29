"""Worker side of ingest: the Dask task that writes a group of blocks, and what it caches.

Tasks take URLs and block coordinates, read their input themselves (the source, or the level
above from the store), write whole blocks into the store and return only a pixel count.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from segpipe import _malloc
from segpipe.ingest._core import downsample2
from segpipe.io import ImageSource, open_image, url_to_fs, zarr_store

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
    key = _source_key(uri, storage_options, token)
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


def _source_key(uri: str, storage_options: dict[str, Any] | None, token: str) -> tuple[str, str, str]:
    return uri, json.dumps(storage_options or {}, sort_keys=True, default=str), token


def _ingest_done(owner: str, uri: str, storage_options: dict[str, Any] | None, token: str) -> None:
    """The end of one image's ingest in this process: glibc's malloc thresholds back
    (:func:`segpipe._malloc.restore`) and its source out of the cache — a PNG or JPEG source
    holds every decoded pixel, and 8 cached large ones would hold gigabytes."""
    _malloc.restore(owner)
    with _SOURCES_LOCK:
        _SOURCES.pop(_source_key(uri, storage_options, token), None)


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
    array = zarr.open_array(store=store, path=str(level), mode=mode, zarr_format=3)
    # Blocks are written whole: skipping zarr's all-fill-value scan halves the write time
    # (a blank chunk is then stored, compressed to a few bytes, instead of omitted).
    return array if mode == "r" else array.with_config({"write_empty_chunks": True})


def _build_group(
    source_uri: str,
    token: str,
    zarr_url: str,
    storage_options: dict[str, Any] | None,
    block: int,
    first: int,
    top: int,
    by: int,
    bx: int,
    owner: str = "",
) -> int:
    """Dask task: write block ``(by, bx)`` of level ``top`` and every block under it down to ``first``.

    The blocks of level ``first`` (the leaves) are read from the source (``first == 0``) or
    made by :func:`downsample2` of the 2× larger region of level ``first - 1``, read from the
    store. Each block above is assembled from the 2×2-means of its (up to) four children
    while they are in memory, depth first: at any time the task holds one block per level
    and one leaf, whatever the image size. Every block is written exactly once, whole.
    ``owner`` names the ingest (glibc's malloc thresholds are raised for it, :func:`segpipe._malloc.raise_for`).
    Returns the number of level-``first`` pixels written.
    """
    arrays = [_open_level(zarr_url, lvl, storage_options, "r+") for lvl in range(first, top + 1)]
    if first == 0:
        source = _cached_source(source_uri, storage_options, token)
    else:
        above = _open_level(zarr_url, first - 1, storage_options, "r")
    done = 0

    def build(level: int, y: int, x: int) -> np.ndarray | None:
        """Write block (y, x) of ``level``; return its 2×2 mean (None on the top level)."""
        nonlocal done
        array = arrays[level - first]
        ly, lx = array.shape[1:]
        y0, x0 = y * block, x * block
        if y0 >= ly or x0 >= lx:
            return None
        y1, x1 = min(y0 + block, ly), min(x0 + block, lx)
        if level == first:
            if first == 0:
                data = source.read_region(0, y0, x0, y1, x1)
            else:
                py, px = above.shape[1:]
                data = downsample2(
                    np.asarray(above[:, 2 * y0 : min(2 * y1, py), 2 * x0 : min(2 * x1, px)])
                )
            done += (y1 - y0) * (x1 - x0)
        else:
            data = np.empty((array.shape[0], y1 - y0, x1 - x0), array.dtype)
            half = block // 2
            for dy in (0, 1):
                for dx in (0, 1):
                    piece = build(level - 1, 2 * y + dy, 2 * x + dx)
                    if piece is not None:
                        oy, ox = dy * half, dx * half
                        data[:, oy : oy + piece.shape[1], ox : ox + piece.shape[2]] = piece
        array[:, y0:y1, x0:x1] = data
        return downsample2(data) if level < top else None

    _malloc.raise_for(owner)
    build(top, by, bx)
    return done


def _n_threads(client: Any) -> int:
    """Threads that run tasks: the cluster's, or this machine's cores for dask's default."""
    import os

    if client is not None:
        from segpipe.cluster import worker_threads

        try:
            return worker_threads(client)
        except Exception:
            pass
    return os.cpu_count() or 1


def _run(calls: list[tuple[Any, ...]], client: Any) -> None:
    """Run :func:`_build_group` once per argument tuple: on ``client``, else with dask's
    default scheduler — or, for a single task without a client, right here (a one-block
    image: no graph to build for one call)."""
    import dask

    if not calls:
        return
    if client is None and len(calls) == 1:
        _build_group(*calls[0])
        return
    build = dask.delayed(_build_group, pure=False)
    tasks = [build(*args) for args in calls]
    if client is None:
        dask.compute(*tasks)
    else:
        client.gather(client.compute(tasks))
