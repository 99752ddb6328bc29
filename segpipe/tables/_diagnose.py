"""Which table file is bad: the layout segpipe writes, and the search for the file behind a
failed read.

A read of the tables never checks its files first (a query would pay one footer read per
file); only once Arrow or DuckDB has failed does :func:`bad_file_error` look for the file
that made it fail, so that the user gets one line naming that file and what is wrong with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from segpipe.errors import TableFileError
from segpipe.tables._store import arrow_fs, results_path

#: Columns every row of a table has: a file without them was not written by segpipe.
REQUIRED = {
    "images": ("image_id", "run_id", "status"),
    "runs": ("run_id",),
    "regions": ("image_id", "run_id", "label"),
}

_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}"
#: The names segpipe gives its table files, relative to ``RESULTS/tables`` (see
#: ``_write.py``); temp files are hidden (``.name.uuid.tmp``) and never end in ``.parquet``.
_OWN = {
    "images": re.compile(rf"images/(?:{_ID}|_skipped|_packed)/{_ID}\.parquet"),
    "runs": re.compile(rf"runs/{_ID}\.parquet"),
    "regions": re.compile(rf"regions/(?:{_ID}|_packed)/{_ID}\.parquet"),
}


def split_own(root: str, table: str, paths: Iterable[str]) -> tuple[list[str], list[str]]:
    """``paths`` split into (files named as segpipe names its ``table`` files, the others)."""
    own, strays = [], []
    pattern, prefix = _OWN[table], f"{root}/tables/"
    for path in paths:
        rel = path[len(prefix):] if path.startswith(prefix) else path
        (own if pattern.fullmatch(rel) else strays).append(path)
    return own, strays


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _footer_problem(
    fs: fsspec.AbstractFileSystem, path: str, schema: pa.Schema, table: str
) -> tuple[str | None, list[str]]:
    """(what is wrong with the file's footer or columns, or None; columns of another type)."""
    try:
        with arrow_fs(fs).open_input_file(path) as f:
            if f.size() == 0:
                return "empty file (0 bytes), not a Parquet file", []
            found = pq.ParquetFile(f).schema_arrow
    except FileNotFoundError:
        return None, []  # removed since the listing
    except (pa.ArrowException, OSError):
        return "not a Parquet file (truncated or corrupt)", []
    missing = [c for c in REQUIRED[table] if c not in found.names]
    if missing:
        columns = f"column{'s' * (len(missing) > 1)} {', '.join(missing)}"
        return f"not a segpipe {table} table file (no {columns})", []
    names = set(found.names)
    return None, [f.name for f in schema if f.name in names and found.field(f.name).type != f.type]


def _data_problem(
    fs: fsspec.AbstractFileSystem, path: str, schema: pa.Schema, table: str,
    columns: list[str] | None,
) -> str | None:  # fmt: skip
    """What goes wrong reading the file's rows as the ``table`` table (``columns`` only)."""
    try:
        dataset = pads.dataset([path], schema=schema, format="parquet", filesystem=arrow_fs(fs))
        data = dataset.to_table(columns=columns)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        if columns and len(columns) < len(schema):
            name = columns[0]
            return (f"not a segpipe {table} table file (column {name} cannot be read as "
                    f"{schema.field(name).type}: {_one_line(exc)})")  # fmt: skip
        return f"corrupt Parquet data ({_one_line(exc)})"
    nulls = [c for c in REQUIRED[table] if c in data.column_names and data.column(c).null_count]
    if nulls:
        return f"not a segpipe {table} table file (rows without {', '.join(nulls)})"
    return None


def find_bad_file(
    fs: fsspec.AbstractFileSystem, paths: list[str], schema: pa.Schema, table: str,
    message: str = "",
) -> tuple[str, str] | None:  # fmt: skip
    """The first of ``paths`` that cannot be read as the ``table`` table, and why.

    Files the error ``message`` names are looked at first. Footers first (one small read per
    file), then the columns whose type differs from ``schema``, then, only if that found
    nothing, every file's rows.
    """
    order = sorted(paths, key=lambda p: f"'{p}'" not in message)
    retyped: dict[str, list[str]] = {}
    for path in order:
        problem, columns = _footer_problem(fs, path, schema, table)
        if problem:
            return path, problem
        if columns:
            retyped[path] = columns
    for path, columns in retyped.items():
        for name in columns:
            problem = _data_problem(fs, path, schema, table, [name])
            if problem:
                return path, problem
    for path in order:
        problem = _data_problem(fs, path, schema, table, None)
        if problem:
            return path, problem
    return None


def bad_file_error(
    fs: fsspec.AbstractFileSystem, root: str, paths: list[str], schema: pa.Schema, table: str,
    exc: BaseException | None = None,
) -> TableFileError:  # fmt: skip
    """A one-line :class:`TableFileError` naming the file of ``paths`` behind a failed read of
    ``table`` (``exc``; None: the rows read lack required values) and what is wrong with it."""
    message = "" if exc is None else _one_line(exc)
    found = find_bad_file(fs, paths, schema, table, message)
    folder = results_path(fs, f"{root}/tables/{table}")
    if found is None:
        what = message or f"rows without {', '.join(REQUIRED[table])}"
        return TableFileError(f"cannot read the {table} table in {folder}: {what}")
    path, problem = found
    return TableFileError(
        f"{results_path(fs, path)}: {problem}; restore it or move it out of {folder}"
    )
