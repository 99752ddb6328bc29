"""Writing the results tables: region files, image rows, run rows (all atomic)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from segpipe.errors import ConfigError
from segpipe.tables._schemas import (
    IMAGE_STATUSES,
    IMAGES_SCHEMA,
    REGIONS_SCHEMA,
    REQUIRED_REGION_COLUMNS,
    RUN_STATUSES,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
)
from segpipe.tables._store import check_id, is_local, resolve, results_path, write_parquet_atomic


def _version() -> str:
    from segpipe import __version__

    return __version__


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _timestamp(value: Any, key: str) -> datetime | None:
    """A timezone-aware UTC datetime from a datetime, ISO string or epoch seconds."""
    if value is None:
        return None
    if isinstance(value, np.datetime64):
        value = value.astype("datetime64[us]").item()
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ConfigError(f"{key}={value!r} is not an ISO 8601 time") from exc
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = datetime.fromtimestamp(float(value), timezone.utc)
    if not isinstance(value, datetime):
        raise ConfigError(f"{key}={value!r} is not a time; pass a datetime")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _row_table(row: Mapping[str, Any], schema: pa.Schema, what: str) -> pa.Table:
    unknown = sorted(set(row) - set(schema.names))
    if unknown:
        raise ConfigError(f"unknown {what} column(s) {unknown}; valid ones are {schema.names}")
    values: dict[str, Any] = {}
    for field in schema:
        value = row.get(field.name)
        if isinstance(value, np.generic):
            value = value.item()
        if pa.types.is_timestamp(field.type):
            value = _timestamp(value, field.name)
        elif pa.types.is_map(field.type) and value is not None:
            value = [(str(k), float(v)) for k, v in dict(value).items()]
        elif field.name == "config" and value is not None and not isinstance(value, str):
            value = json.dumps(value, sort_keys=True, default=str)
        elif isinstance(value, float) and pa.types.is_integer(field.type) and value.is_integer():
            value = int(value)
        values[field.name] = [value]
    try:
        return pa.Table.from_pydict(values, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {what} row for {dict(row)!r}: {exc}") from exc


def _with_defaults(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out.setdefault("segpipe_version", _version())
    if out.get("updated_at") is None:
        out["updated_at"] = _now()
    return out


def init_results(
    results: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> str:
    """Create ``RESULTS/tables/`` (idempotent) so that an empty results folder is valid.

    Writes ``RESULTS/tables/segpipe.json`` (``{"schema_version": ...}``), which also makes
    the folder recognisable on object stores, where empty folders do not exist.

    Returns
    -------
    str
        URL of the ``tables`` folder.
    """
    fs, root = resolve(results, storage_options)
    marker = f"{root}/tables/segpipe.json"
    if is_local(fs):
        os.makedirs(f"{root}/tables", exist_ok=True)
    if not fs.exists(marker):
        fs.pipe(marker, json.dumps({"schema_version": SCHEMA_VERSION}).encode())
    return results_path(fs, f"{root}/tables")


def write_image_row(
    results: str | os.PathLike[str],
    row: Mapping[str, Any],
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write (or atomically replace) an image's row for one run.

    The file is ``RESULTS/tables/images/<image_id>/<run_id>.parquet``; writing ``running``
    at the start and ``done`` / ``failed`` at the end of the same run replaces the row.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    row : mapping
        Column values; ``image_id``, ``run_id`` and ``status`` (running / done / failed /
        skipped) are required, the others (see ``IMAGES_SCHEMA``) default to null.
        ``segpipe_version`` and ``updated_at`` are filled in when absent.
    storage_options : dict, optional
        fsspec options for remote results.

    Returns
    -------
    str
        URL of the file written.
    """
    row = _with_defaults(row)
    image_id = check_id(row.get("image_id"), "image_id")  # type: ignore[arg-type]
    run_id = check_id(row.get("run_id"), "run_id")  # type: ignore[arg-type]
    if row.get("status") not in IMAGE_STATUSES:
        raise ConfigError(f"image status {row.get('status')!r} is not one of {IMAGE_STATUSES}")
    table = _row_table(row, IMAGES_SCHEMA, "images")
    fs, root = resolve(results, storage_options)
    path = f"{root}/tables/images/{image_id}/{run_id}.parquet"
    write_parquet_atomic(fs, path, table, compression="none")  # one row
    return results_path(fs, path)


#: Folder (under ``tables/images/``) of the per-run batch files of ``skipped`` rows; its
#: leading ``_`` keeps it apart from the image folders (image ids start alphanumeric).
SKIPPED_FOLDER = "_skipped"


def write_skipped_rows(
    results: str | os.PathLike[str],
    run_id: str,
    rows: list[Mapping[str, Any]],
    storage_options: dict[str, Any] | None = None,
) -> str | None:
    """Write all ``skipped`` rows of one run as ONE file, ``tables/images/_skipped/<run_id>.parquet``.

    A run records every unchanged image it left alone; one file per run instead of one per
    image keeps reruns of big archives cheap. Skipped rows never change the visibility of
    regions (only ``done`` rows do), so batching them cannot expose half-written outputs.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    run_id : str
        The run; every row must carry it.
    rows : list of mapping
        Image rows with ``status == "skipped"`` (see :func:`write_image_row`).
    storage_options : dict, optional
        fsspec options for remote results.

    Returns
    -------
    str or None
        URL of the file written; None when ``rows`` is empty (nothing is written).
    """
    check_id(run_id, "run_id")
    if not rows:
        return None
    tables = []
    for row in rows:
        row = _with_defaults(row)
        check_id(row.get("image_id"), "image_id")  # type: ignore[arg-type]
        if row.get("run_id") != run_id or row.get("status") != "skipped":
            raise ConfigError(
                f"skipped-rows batch of run {run_id!r} got a row with run_id={row.get('run_id')!r}, "
                f"status={row.get('status')!r}; only this run's skipped rows belong in it"
            )
        tables.append(_row_table(row, IMAGES_SCHEMA, "images"))
    fs, root = resolve(results, storage_options)
    path = f"{root}/tables/images/{SKIPPED_FOLDER}/{run_id}.parquet"
    write_parquet_atomic(fs, path, pa.concat_tables(tables))
    return results_path(fs, path)


def write_run_row(
    results: str | os.PathLike[str],
    row: Mapping[str, Any],
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write (or atomically replace) a run's row in ``RESULTS/tables/runs/<run_id>.parquet``.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    row : mapping
        Column values (see ``RUNS_SCHEMA``); ``run_id`` and ``status`` (running / done /
        failed / partial / cancelled) are required. ``config`` may be a dict (stored as
        JSON); ``timings`` a dict of stage → seconds.
    storage_options : dict, optional
        fsspec options for remote results.

    Returns
    -------
    str
        URL of the file written.
    """
    row = _with_defaults(row)
    run_id = check_id(row.get("run_id"), "run_id")  # type: ignore[arg-type]
    if row.get("status") not in RUN_STATUSES:
        raise ConfigError(f"run status {row.get('status')!r} is not one of {RUN_STATUSES}")
    table = _row_table(row, RUNS_SCHEMA, "runs")
    fs, root = resolve(results, storage_options)
    path = f"{root}/tables/runs/{run_id}.parquet"
    write_parquet_atomic(fs, path, table, compression="none")  # one row
    return results_path(fs, path)


#: Region columns whose NaN means "unknown" (no pixel size): stored as null, so SQL
#: aggregates skip them (``avg(area_um2)`` over a mixed archive) instead of returning NaN.
NULL_WHEN_NAN = frozenset({"area_um2"})


def _region_column(name: str, values: Any, field: pa.Field) -> pa.Array:
    if pa.types.is_list(field.type):
        arr = values if isinstance(values, np.ndarray) else None
        if arr is not None and arr.ndim == 2 and arr.dtype != object:
            n, c = arr.shape
            offsets = pa.array(np.arange(0, n * c + 1, c, dtype=np.int32), pa.int32())
            flat = pa.array(np.ascontiguousarray(arr, dtype=np.float64).ravel())
            return pa.ListArray.from_arrays(offsets, flat)
        return pa.array(
            [
                None if v is None else np.asarray(v, dtype=np.float64).ravel().tolist()
                for v in values
            ],
            field.type,
        )
    if pa.types.is_string(field.type):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    if name in NULL_WHEN_NAN:
        return pa.array(np.asarray(values, dtype=np.float64), field.type, from_pandas=True)
    return pa.array(np.asarray(values)).cast(field.type, safe=True)


def regions_table(image_id: str, run_id: str, columns: Mapping[str, Any]) -> pa.Table:
    """Build the Arrow table of one image's regions (see :func:`write_regions`)."""
    check_id(image_id, "image_id")
    check_id(run_id, "run_id")
    missing = [c for c in REQUIRED_REGION_COLUMNS if c not in columns]
    if missing:
        raise ConfigError(f"regions columns {missing} missing for image {image_id!r}")
    n = len(columns["label"])
    for key, want in (("image_id", image_id), ("run_id", run_id)):
        given = {str(v) for v in columns.get(key, [])} - {""}  # "" = not filled in
        if given and given != {want}:
            raise ConfigError(f"regions column {key} holds {sorted(given)[:3]}, not {want!r}")
    extra = sorted(set(columns) - set(REGIONS_SCHEMA.names))
    if extra:
        warnings.warn(
            f"regions columns {extra} are not in segpipe.tables.REGIONS_SCHEMA; dropped",
            stacklevel=3,
        )
    arrays = []
    for field in REGIONS_SCHEMA:
        if field.name == "image_id":
            arrays.append(pa.array([image_id] * n, pa.string()))
        elif field.name == "run_id":
            arrays.append(pa.array([run_id] * n, pa.string()))
        elif field.name not in columns:
            arrays.append(pa.nulls(n, field.type))
        else:
            values = columns[field.name]
            if len(values) != n:
                raise ConfigError(
                    f"regions column {field.name} has {len(values)} rows, label has {n}"
                )
            try:
                arrays.append(_region_column(field.name, values, field))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"regions column {field.name} cannot be stored as {field.type}: {exc}"
                ) from exc
    return pa.Table.from_arrays(arrays, schema=REGIONS_SCHEMA)


def write_regions(
    results: str | os.PathLike[str],
    image_id: str,
    run_id: str,
    columns: Mapping[str, Any],
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write one image's regions for one run to ``RESULTS/tables/regions/<image_id>/<run_id>.parquet``.

    The rows stay invisible to :func:`open_results` until the image's row for ``run_id``
    is written with status ``done``.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    image_id, run_id : str
        Ids (safe file names); they fill the ``image_id`` / ``run_id`` columns.
    columns : mapping of str to array-like
        Typed columns as returned by ``segpipe.regions.finalize``: equal lengths, the
        DESIGN.md columns required, per-channel statistics as ``(N, C)`` arrays or
        sequences of sequences. Empty (length-0) columns write a typed empty file.
        Columns unknown to ``REGIONS_SCHEMA`` are dropped with a warning.
    storage_options : dict, optional
        fsspec options for remote results.

    Returns
    -------
    str
        URL of the file written.
    """
    table = regions_table(image_id, run_id, columns)
    fs, root = resolve(results, storage_options)
    path = f"{root}/tables/regions/{image_id}/{run_id}.parquet"
    write_parquet_atomic(fs, path, table)
    return results_path(fs, path)
