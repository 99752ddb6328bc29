"""Reading the results tables: image states, pruning, the read-only DuckDB connection."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.dataset as pads

from segpipe.errors import ImageNotFoundError, ResultsError
from segpipe.tables._diagnose import REQUIRED, bad_file_error, split_own
from segpipe.tables._schemas import IMAGES_SCHEMA, REGIONS_SCHEMA, RUNS_SCHEMA
from segpipe.tables._store import (
    arrow_fs,
    check_id,
    is_local,
    list_parquet,
    require_results,
    resolve,
    results_path,
)

_SCHEMAS = {"images": IMAGES_SCHEMA, "runs": RUNS_SCHEMA, "regions": REGIONS_SCHEMA}

#: The names under which :func:`open_results` registers the regions datasets (the images'
#: own files, the packed ones); DuckDB names them in the error of a scan that failed (see
#: :func:`read_errors`).
_REGIONS_SOURCES = ("_regions_src", "_regions_packed_src")


def table_files(
    fs: fsspec.AbstractFileSystem, root: str, table: str, sub: str | None = None
) -> list[str]:
    """The Parquet files of ``table`` (under ``tables/<table>[/<sub>]``) named as segpipe
    names them; others (a copy ``run1 (1).parquet``, another tool's ``summary.parquet``) are
    left out with a warning: their rows were never segpipe's, and reading them would add
    duplicated or foreign rows."""
    folder = f"{root}/tables/{table}"
    own, strays = split_own(root, table, list_parquet(fs, folder + (f"/{sub}" if sub else "")))
    if strays:
        warnings.warn(
            f"ignoring {len(strays)} file(s) in {results_path(fs, folder)} that segpipe does not "
            f"write, e.g. {results_path(fs, strays[0])}; move them elsewhere",
            stacklevel=4,
        )
    return own


def read_files(fs: fsspec.AbstractFileSystem, root: str, table: str, paths: list[str]) -> pa.Table:
    """Read Parquet files into one table cast to the ``table``'s schema (missing columns as null).

    Raises
    ------
    TableFileError
        A file cannot be read as part of the table (empty, truncated, not Parquet, columns
        of another type, rows without an id): the error names it. The files are looked at
        one by one only after the read failed.
    """
    schema = _SCHEMAS[table]
    if not paths:
        return schema.empty_table()
    dataset = pads.dataset(paths, schema=schema, format="parquet", filesystem=arrow_fs(fs))
    try:
        data = dataset.to_table()
    except (pa.ArrowException, OSError) as exc:
        raise bad_file_error(fs, root, paths, schema, table, exc) from exc
    if any(data.column(name).null_count for name in REQUIRED[table]):
        raise bad_file_error(fs, root, paths, schema, table)
    return data


def _images_table(
    fs: fsspec.AbstractFileSystem, root: str, image_id: str | None = None
) -> pa.Table:
    """The images table: every row, one per ``(image_id, run_id)`` (a row can be both in its
    image's folder and in its run's packed file for a moment, see ``_pack.py``).

    With ``image_id``: the rows in that image's folder only — those of runs not packed,
    which include the image's current run (runs are packed when they are finished).
    """
    table = read_files(fs, root, "images", table_files(fs, root, "images", image_id))
    return table if image_id else _one_per_run(table)


def _one_per_run(table: pa.Table) -> pa.Table:
    """``table`` with the first row of each ``(image_id, run_id)``."""
    first: dict[tuple[str, str], int] = {}
    keys = zip(table.column("image_id").to_pylist(), table.column("run_id").to_pylist(), strict=True)
    for n, key in enumerate(keys):
        first.setdefault(key, n)
    return table if len(first) == table.num_rows else table.take(sorted(first.values()))


def _order_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Latest row = last written (``updated_at``), ties broken by run id."""
    stamp = row.get("updated_at") or row.get("finished_at") or row.get("started_at")
    return (stamp is not None, stamp.timestamp() if stamp is not None else 0.0, row["run_id"])


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Map columns (lists of pairs in Arrow's Python form) as dicts."""
    if row.get("timings") is not None:
        row = {**row, "timings": dict(row["timings"])}
    return row


def _latest(
    rows: list[dict[str, Any]], statuses: tuple[str, ...] | None
) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if statuses is not None and row["status"] not in statuses:
            continue
        have = latest.get(row["image_id"])
        if have is None or _order_key(row) > _order_key(have):
            latest[row["image_id"]] = row
    return latest


def image_states(
    results: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The current state of every image: its latest row whose status is not ``skipped``.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL. A folder without ``tables/`` (a first
        run) has no states.
    storage_options : dict, optional
        fsspec options for remote results.

    Returns
    -------
    dict of str to dict
        ``image_id`` → the row (all ``IMAGES_SCHEMA`` columns). An image is up to date when
        its state has ``status == "done"`` and the same fingerprint, model, model_sha256 and
        config_hash; a ``running`` state means a run crashed while working on it.

    Raises
    ------
    TableFileError
        A file of the images table cannot be read (it is named): planning cannot tell
        that image's state.
    """
    fs, root = resolve(results, storage_options)
    rows = _images_table(fs, root).to_pylist()
    return {k: _plain(v) for k, v in _latest(rows, ("running", "done", "failed")).items()}


def latest_done(
    results: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """``image_id`` → the image's latest ``done`` row (the one whose regions are visible)."""
    fs, root = resolve(results, storage_options)
    latest = _latest(_images_table(fs, root).to_pylist(), ("done",))
    return {k: _plain(v) for k, v in latest.items()}


def has_older_regions(
    results: str | os.PathLike[str],
    image_id: str,
    keep_run_id: str,
    storage_options: dict[str, Any] | None = None,
) -> bool:
    """Whether :func:`prune_regions` would find anything to remove: a file in the image's
    regions folder other than ``<keep_run_id>.parquet`` (older runs, temp files).

    One listing, no table read: a first run of an image skips the pruning's checks.
    """
    check_id(image_id, "image_id")
    fs, root = resolve(results, storage_options)
    return bool(_older_region_files(fs, root, image_id, keep_run_id))


def _older_region_files(fs: fsspec.AbstractFileSystem, root: str, image_id: str, keep_run_id: str) -> list[str]:
    """The files in an image's regions folder other than ``<keep_run_id>.parquet`` (freshly listed)."""
    folder = f"{root}/tables/regions/{image_id}"
    fs.invalidate_cache(folder)
    try:
        found = fs.find(folder)
    except FileNotFoundError:
        return []
    keep = f"{folder}/{keep_run_id}.parquet"
    return [p for p in found if p != keep]


def prune_regions(
    results: str | os.PathLike[str],
    image_id: str,
    keep_run_id: str,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Remove an image's region files of every run but ``keep_run_id``.

    Call it after the image's ``done`` row for ``keep_run_id`` is written, before that run is
    packed (:func:`~segpipe.tables.pack_run`): the files removed are invisible already (older
    done runs, crashed or failed runs, leftover temp files). Rows of older runs packed with
    other images' stay in their packed file, invisible, until a later pack vacuums it.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    image_id : str
        The image.
    keep_run_id : str
        The run whose regions stay; it must be the image's latest ``done`` row.
    storage_options : dict, optional
        fsspec options for remote results.

    Returns
    -------
    list of str
        URLs of the files removed.

    Raises
    ------
    ImageNotFoundError
        No row of ``image_id`` exists.
    ResultsError
        ``keep_run_id`` is not the image's latest done run (nothing is removed).
    """
    check_id(image_id, "image_id")
    fs, root = resolve(results, storage_options)
    rows = _images_table(fs, root, image_id).to_pylist()
    if not rows:
        raise ImageNotFoundError(f"image {image_id!r} has no rows in {results}/tables/images")
    done = _latest(rows, ("done",)).get(image_id)
    if done is None or done["run_id"] != keep_run_id:
        have = None if done is None else done["run_id"]
        raise ResultsError(
            f"refusing to prune regions of {image_id!r}: its latest done run is {have!r}, "
            f"not {keep_run_id!r}; write the done row first"
        )
    removed = _older_region_files(fs, root, image_id, keep_run_id)
    for path in removed:
        fs.rm_file(path)
    if not is_local(fs):
        fs.invalidate_cache(f"{root}/tables/regions/{image_id}")
    return [results_path(fs, p) for p in removed]


@dataclass
class _VisibleRegions:
    """Where the rows of each image's latest done run are (see ``_pack.py``)."""

    files: list[str]  # the images' own regions files
    packed: dict[str, list[str]]  # packed file → the images whose rows are read from it
    missing: list[str]  # regions files of done images found nowhere

    def paths(self) -> list[str]:
        return self.files + list(self.packed)

    def packed_keys(self) -> pa.Table:
        """``(image_id, run_id)`` of the rows to read from the packed files."""
        pairs = [(i, p.rsplit("/", 1)[-1].removesuffix(".parquet")) for p, ids in self.packed.items() for i in ids]
        return pa.table({"image_id": pa.array([i for i, _ in pairs], pa.string()),
                         "run_id": pa.array([r for _, r in pairs], pa.string())})  # fmt: skip


def _visible_region_files(fs: fsspec.AbstractFileSystem, root: str, rows: list[dict[str, Any]]) -> _VisibleRegions:
    """The regions of each image's latest done run: its own file while that exists, else the
    run's packed file — never both, so a row is neither lost nor read twice. ``rows``: the
    images table's rows (``to_pylist``)."""
    from segpipe.tables._pack import packed_path

    done = _latest(rows, ("done",))
    existing = set(list_parquet(fs, f"{root}/tables/regions"))
    visible = _VisibleRegions([], {}, [])
    for image_id, row in sorted(done.items()):
        path = f"{root}/tables/regions/{image_id}/{row['run_id']}.parquet"
        packed = packed_path(root, "regions", row["run_id"])
        if path in existing:
            visible.files.append(path)
        elif packed in existing:
            visible.packed.setdefault(packed, []).append(image_id)
        else:
            visible.missing.append(path)
    return visible


def image_regions(
    fs: fsspec.AbstractFileSystem, root: str, image_id: str, run_id: str, columns: list[str]
) -> pa.Table | None:
    """``columns`` of an image's regions in one run, where :func:`_visible_region_files`
    finds them: the image's own file, else its rows of the run's packed file; None when
    neither exists."""
    import pyarrow.parquet as pq

    from segpipe.tables._pack import packed_path

    try:
        with fs.open(f"{root}/tables/regions/{image_id}/{run_id}.parquet", "rb") as f:
            return pq.read_table(f, columns=columns)
    except FileNotFoundError:
        pass
    try:
        with fs.open(packed_path(root, "regions", run_id), "rb") as f:
            return pq.read_table(f, columns=columns, filters=[("image_id", "=", image_id)])
    except FileNotFoundError:
        return None


def _visible_regions(
    fs: fsspec.AbstractFileSystem, root: str, rows: list[dict[str, Any]]
) -> tuple[pads.Dataset | pa.Table, pads.Dataset | pa.Table, pa.Table]:
    """(the images' own visible regions files, the packed files holding the others, the
    ``(image_id, run_id)`` keys to read from those)."""
    visible = _visible_region_files(fs, root, rows)
    if visible.missing:
        warnings.warn(
            f"{len(visible.missing)} done image(s) have no regions file, e.g. {visible.missing[0]}; "
            "their regions are not shown",
            stacklevel=3,
        )

    def dataset(paths: list[str]) -> pads.Dataset | pa.Table:
        if not paths:
            return REGIONS_SCHEMA.empty_table()
        return pads.dataset(paths, schema=REGIONS_SCHEMA, format="parquet", filesystem=arrow_fs(fs))

    return dataset(visible.files), dataset(list(visible.packed)), visible.packed_keys()


@contextmanager
def read_errors(
    results: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> Iterator[None]:
    """Run queries of an :func:`open_results` connection: a bad regions file becomes a
    one-line :class:`~segpipe.errors.TableFileError` naming it.

    The ``regions`` view is scanned lazily, by the query that uses it, so DuckDB's error of
    a file it cannot read comes from the query; only then are the files looked at.

    Examples
    --------
    >>> con = open_results("results/")  # doctest: +SKIP
    >>> with read_errors("results/"):  # doctest: +SKIP
    ...     n = con.sql("select count(*) from regions").fetchone()
    """
    try:
        yield
    except duckdb.Error as exc:
        if not any(f"'{name}'" in str(exc) for name in _REGIONS_SOURCES):
            raise
        fs, root = resolve(results, storage_options)
        paths = _visible_region_files(fs, root, _images_table(fs, root).to_pylist()).paths()
        raise bad_file_error(fs, root, paths, REGIONS_SCHEMA, "regions", exc) from exc


def open_results(
    results: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Open a results folder as a read-only in-memory DuckDB connection.

    Views:

    * ``regions`` — one row per region of each image's latest ``done`` run; files of
      crashed, failed or superseded runs are never read.
    * ``images`` — one row per image and run (status running / done / failed / skipped).
    * ``images_latest`` — each image's current state (latest non-skipped row).
    * ``runs`` — one row per run.

    The tables are read through pyarrow (local files or fsspec, e.g. s3fs), so no DuckDB
    extension is needed. ``images`` and ``runs`` are loaded at open time; ``regions`` is
    scanned lazily (only the columns a query needs). The connection is a snapshot: reopen
    to see later runs. File system access is disabled and the configuration locked, so SQL
    cannot write (``COPY ... TO``), read other files or attach databases; in-memory tables
    may be created and vanish with the connection.

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    storage_options : dict, optional
        fsspec options for remote results (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).

    Returns
    -------
    duckdb.DuckDBPyConnection

    Raises
    ------
    ResultsError
        ``results`` has no ``tables/`` folder.
    TableFileError
        A file of the images or runs table cannot be read (it is named); a bad regions file
        fails the query that scans it: run queries inside :func:`read_errors` for that
        error to name the file too.

    Examples
    --------
    >>> con = open_results("results/")  # doctest: +SKIP
    >>> con.sql("select class, count(*) from regions group by class").show()  # doctest: +SKIP
    """
    fs, root = resolve(results, storage_options)
    require_results(fs, root, results)
    images = _images_table(fs, root)
    runs = read_files(fs, root, "runs", table_files(fs, root, "runs"))
    rows = images.to_pylist()
    own, packed, packed_keys = _visible_regions(fs, root, rows)
    latest = _latest(rows, ("running", "done", "failed"))
    images_latest = pa.Table.from_pylist(list(latest.values()), schema=IMAGES_SCHEMA)

    con = duckdb.connect(":memory:")
    own_src, packed_src = _REGIONS_SOURCES
    for name, obj in (
        (own_src, own),
        (packed_src, packed),
        ("_regions_packed_keys", packed_keys),
        ("_images_src", images),
        ("_images_latest_src", images_latest),
        ("_runs_src", runs),
    ):
        con.register(name, obj)
    con.execute(f"CREATE VIEW regions AS SELECT * FROM {own_src} UNION ALL "
                f"SELECT p.* FROM {packed_src} p SEMI JOIN _regions_packed_keys k "
                "ON p.image_id = k.image_id AND p.run_id = k.run_id")  # fmt: skip
    con.execute("CREATE VIEW images AS SELECT * FROM _images_src ORDER BY image_id, updated_at")
    con.execute("CREATE VIEW images_latest AS SELECT * FROM _images_latest_src ORDER BY image_id")
    con.execute("CREATE VIEW runs AS SELECT * FROM _runs_src ORDER BY started_at, run_id")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con
