"""Pack a finished run's per-image table files into one file per table.

Each image of a run writes its own row file (``images/<image_id>/<run_id>.parquet``) and
regions file (``regions/<image_id>/<run_id>.parquet``): that is what makes an image's
results appear atomically, alone, whatever happens to the others. But a query opens every
file, about 1 ms each here, so 10 000 small images took ~20 s a query. At the end of a run
(under the results lock) :func:`pack_run` copies the run's files into
``images/_packed/<run_id>.parquet`` and ``regions/_packed/<run_id>.parquet`` and then
removes them: queries then open a file per run, not per image.

What readers do (``_read.py``), so that no step of a pack — or a crash between two — loses
or duplicates a row:

* **images** — rows are read from the per-image files and the packed ones, then one row is
  kept per ``(image_id, run_id)`` (a run writes one row per image: a copy in both places is
  the same row).
* **regions** — an image's visible rows (its latest ``done`` run) come from its own file
  while that exists, else from that run's packed file (rows of that image only): never both.

Regions files larger than :data:`PACK_MAX_BYTES` (whole slides) stay where they are: their
open costs nothing next to their reading. Rows of a packed regions file that are no longer
visible (their image was redone by a later run) are dropped when a later pack finds that
less than half of the file's images are still visible (:func:`_vacuum`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from segpipe.tables._schemas import IMAGES_SCHEMA, REGIONS_SCHEMA
from segpipe.tables._store import (
    arrow_fs,
    atomic_local_file,
    check_id,
    is_local,
    list_parquet,
    resolve,
)

__all__ = ["PACKED_FOLDER", "PACK_MAX_BYTES", "PackSummary", "pack_run"]

#: Folder (under ``tables/images/`` and ``tables/regions/``) of the packed per-run files;
#: its leading ``_`` keeps it apart from the image folders (image ids start alphanumeric).
PACKED_FOLDER = "_packed"
#: Regions files up to this size are packed; larger ones (whole slides) stay on their own.
PACK_MAX_BYTES = 8 << 20
_ROW_GROUP = 1 << 17  # rows per row group of a packed regions file


@dataclass
class PackSummary:
    """What :func:`pack_run` did: files packed and removed per table, packed files vacuumed."""

    images: int = 0
    regions: int = 0
    vacuumed: int = 0


def packed_path(root: str, table: str, run_id: str) -> str:
    """``<root>/tables/<table>/_packed/<run_id>.parquet``."""
    return f"{root}/tables/{table}/{PACKED_FOLDER}/{run_id}.parquet"


def pack_run(
    results: str | os.PathLike[str], run_id: str, image_ids: Iterable[str],
    storage_options: dict[str, Any] | None = None,
) -> PackSummary:  # fmt: skip
    """Pack the row and regions files ``run_id`` wrote for ``image_ids`` (see the module).

    Call it when the run is finished, holding the results lock: each packed file is written
    whole (atomically) before the files it holds are removed. Images without files, and
    regions files larger than :data:`PACK_MAX_BYTES`, are left as they are. Fewer than two
    files of a table: nothing to gain, nothing is done for it.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    run_id : str
        The finished run.
    image_ids : iterable of str
        The images the run wrote rows for (done or failed).
    storage_options : dict, optional
        fsspec options for remote results.

    Returns
    -------
    PackSummary
    """
    check_id(run_id, "run_id")
    ids = sorted({check_id(i, "image_id") for i in image_ids})
    fs, root = resolve(results, storage_options)
    summary = PackSummary()
    for table, schema in (("images", IMAGES_SCHEMA), ("regions", REGIONS_SCHEMA)):
        listed = _sizes(fs, f"{root}/tables/{table}")
        limit = PACK_MAX_BYTES if table == "regions" else None
        files = {i: p for i, p in ((i, f"{root}/tables/{table}/{i}/{run_id}.parquet") for i in ids)
                 if p in listed and (limit is None or listed[p] <= limit)}  # fmt: skip
        target = packed_path(root, table, run_id)
        if len(files) > 1 or (files and target in listed):
            parts: list[tuple[Sequence[str], pc.Expression | None]] = [(list(files.values()), None)]
            if target in listed:  # packed before, stopped before every file was removed
                parts.append(([target], ~pc.field("image_id").isin(sorted(files))))
            _write_packed(fs, target, schema, parts)
            setattr(summary, table, _remove(fs, list(files.values())))
    summary.vacuumed = _vacuum(fs, root, keep_run=run_id)
    return summary


def _sizes(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, int]:
    """Every file under ``folder`` and its size: one listing (a few requests on S3, where a
    request per file would take minutes for 10 000 images)."""
    fs.invalidate_cache(folder)
    try:
        found = fs.find(folder, detail=True)
    except FileNotFoundError:
        return {}
    return {path: int(info.get("size") or 0) for path, info in found.items()}


def _batches(fs: fsspec.AbstractFileSystem, schema: pa.Schema,
             parts: Sequence[tuple[Sequence[str], pc.Expression | None]]) -> Iterator[pa.RecordBatch]:
    """The rows of each part's files as ``schema`` (with the part's filter), streamed: memory
    holds a few batches, not the files (a packed file being vacuumed can be gigabytes)."""
    for paths, keep in parts:
        if paths:
            dataset = pads.dataset(list(paths), schema=schema, format="parquet", filesystem=arrow_fs(fs))
            yield from dataset.to_batches(filter=keep, batch_size=_ROW_GROUP)


def _write_packed(fs: fsspec.AbstractFileSystem, path: str, schema: pa.Schema,
                  parts: Sequence[tuple[Sequence[str], pc.Expression | None]]) -> int:
    """Stream the rows of ``parts`` (files, filter) into the Parquet file ``path`` in row
    groups of ``_ROW_GROUP`` rows, made visible whole at the end (:func:`atomic_local_file`:
    on disk before the files it holds are removed); returns the rows written."""
    n = 0
    with atomic_local_file(fs, path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            pending: list[pa.RecordBatch] = []

            def flush() -> None:
                nonlocal n, pending
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=_ROW_GROUP)
                n += sum(b.num_rows for b in pending)
                pending = []

            for batch in _batches(fs, schema, parts):
                pending.append(batch)
                if sum(b.num_rows for b in pending) >= _ROW_GROUP:
                    flush()
            if pending or n == 0:
                flush()
    return n


def _remove(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> int:
    """Remove ``paths`` (packed copies exist), then their folders left empty (local)."""
    fs.rm(list(paths))
    if is_local(fs):
        for folder in sorted({p.rsplit("/", 1)[0] for p in paths}):
            with contextlib.suppress(OSError):  # not empty: another run's file is there
                os.rmdir(folder)
    else:
        for folder in {p.rsplit("/", 1)[0] for p in paths}:
            fs.invalidate_cache(folder)
    return len(paths)


def _vacuum(fs: fsspec.AbstractFileSystem, root: str, keep_run: str) -> int:
    """Rewrite (or remove) older packed regions files of which less than half the images
    are still visible; returns how many were rewritten or removed."""
    from segpipe.tables._read import _images_table, _visible_region_files  # the reader's rules

    folder = f"{root}/tables/regions/{PACKED_FOLDER}"
    older = [p for p in list_parquet(fs, folder) if p != f"{folder}/{keep_run}.parquet"]
    if not older:
        return 0
    visible = _visible_region_files(fs, root, _images_table(fs, root).to_pylist()).packed
    changed = 0
    for path in older:
        held = set(pq.read_table(path, columns=["image_id"], filesystem=arrow_fs(fs)).column(0).unique().to_pylist())
        keep = held & set(visible.get(path, ()))
        if len(keep) * 2 >= len(held):
            continue
        if keep:
            _write_packed(fs, path, REGIONS_SCHEMA, [([path], pc.field("image_id").isin(sorted(keep)))])
        else:
            fs.rm_file(path)
        changed += 1
    return changed
