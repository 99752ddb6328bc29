"""``segpipe query``: run SQL on a results folder and print or save the answer."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from segpipe.errors import ConfigError
from segpipe.tables._read import open_results, read_errors
from segpipe.tables._store import is_local, resolve

Format = Literal["table", "csv", "json", "parquet"]
FORMATS = ("table", "csv", "json", "parquet")


def _cell(value: Any) -> Any:
    """A JSON/CSV-friendly Python value (NaN → None, times → ISO 8601, decimals → int or
    float: DuckDB's ``sum`` of an integer column is a HUGEINT, which Arrow gives as Decimal)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):
        return int(value) if value.is_finite() and value == value.to_integral_value() else _cell(float(value))
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, list):
        return [_cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _cell(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts, with map columns (Arrow gives lists of pairs) as dicts."""
    rows = table.to_pylist()
    maps = [f.name for f in table.schema if pa.types.is_map(f.type)]
    for row in rows:
        for name in maps:
            if row[name] is not None:
                row[name] = dict(row[name])
    return rows


def _text(value: Any, short: bool = False) -> str:
    """A cell as text; ``short`` rounds floats to 4 significant digits (for the screen)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if short else repr(value)
    if isinstance(value, dict) and short:
        return ", ".join(f"{k}: {_text(v, True)}" for k, v in value.items())
    if isinstance(value, list) and short:
        return "[" + ", ".join(_text(v, True) for v in value) + "]"
    if isinstance(value, (list, dict)):
        return json.dumps(_cell(value))
    if isinstance(value, datetime) and short:
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def render_table(table: pa.Table, title: str | None = None, max_rows: int = 100) -> Any:
    """A ``rich.table.Table`` of an Arrow table (numbers right-aligned, nulls dimmed).

    Parameters
    ----------
    table : pyarrow.Table
        Query result.
    title : str, optional
        Title shown above the table.
    max_rows : int
        Rows shown; the caption says how many were left out.

    Returns
    -------
    rich.table.Table
    """
    from rich.table import Table

    shown = table.slice(0, max_rows)
    caption = f"{table.num_rows} row{'s' if table.num_rows != 1 else ''}"
    if table.num_rows > max_rows:
        caption += f" (first {max_rows} shown)"
    out = Table(title=title, caption=caption, header_style="bold")
    for field in table.schema:
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
        out.add_column(field.name, justify="right" if numeric else "left", overflow="fold")
    for row in _rows(shown):
        out.add_row(
            *(
                ("[dim]NULL[/dim]" if v is None else _text(v, short=True).replace("[", r"\["))
                for v in row.values()
            )
        )
    return out


def _execute(
    con: duckdb.DuckDBPyConnection, sql: str, results: str | os.PathLike[str],
    storage_options: dict[str, Any] | None,
) -> pa.Table:  # fmt: skip
    try:
        with read_errors(results, storage_options):  # a bad regions file: named, not "query failed"
            relation = con.sql(sql)
            return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as exc:
        message = " ".join(str(exc).split())
        hint = (
            " (the views are regions, images, images_latest, runs)" if "Catalog" in message else ""
        )
        raise ConfigError(f"query failed: {message}{hint}") from exc


def _inside(fs_path: str, folder: str) -> bool:
    return fs_path == folder or fs_path.startswith(folder.rstrip("/") + "/")


#: What segpipe writes in a results folder: an answer must not land in it.
_OWNED = ("tables", "images", "reports", ".segpipe.lock", ".segpipe.lock.guard")


def _real(fs: Any, path: str) -> str:
    """A local path with ``..`` and symbolic links resolved (others as they are)."""
    return os.path.realpath(path) if is_local(fs) else path


def run_query(
    results: str | os.PathLike[str],
    sql: str,
    fmt: Format = "table",
    output: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    max_rows: int = 100,
) -> pa.Table:
    """Run ``sql`` on a results folder (views ``regions``, ``images``, ``images_latest``, ``runs``).

    Parameters
    ----------
    results : str or PathLike
        Results folder, local path or ``s3://`` URL.
    sql : str
        DuckDB SQL; one statement.
    fmt : {"table", "csv", "json", "parquet"}
        ``table`` prints a rich table (plain text when ``output`` is given), ``csv`` a header
        and rows, ``json`` an array of objects (NaN as null, times ISO 8601), ``parquet`` a
        Parquet file (``output`` required).
    output : str or PathLike, optional
        File to write (local or fsspec URL, same ``storage_options``); stdout when absent.
        A path inside what segpipe keeps in ``RESULTS`` (tables, images, reports, the lock)
        is refused, ``..`` and symbolic links resolved.
    storage_options : dict, optional
        fsspec options for remote results and output.
    max_rows : int
        Rows shown by the ``table`` format.

    Returns
    -------
    pyarrow.Table
        The full answer.

    Raises
    ------
    ResultsError
        ``results`` is not a results folder.
    TableFileError
        A file under ``RESULTS/tables`` the answer needs cannot be read (it is named).
    ConfigError
        Unknown ``fmt``, missing ``output`` for parquet, output inside segpipe's outputs, or a
        SQL error (DuckDB's message, on one line).
    """
    if not sql.strip():
        raise ConfigError('no SQL given; e.g. "select image_id, count(*) from regions group by 1"')
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {FORMATS}")
    if fmt == "parquet" and output is None:
        raise ConfigError("--format parquet needs --output FILE.parquet")
    if output is not None:
        out_fs, out_path = resolve(output, storage_options)
        res_fs, res_root = resolve(results, storage_options)
        target, root = _real(out_fs, out_path), _real(res_fs, res_root)
        if type(out_fs) is type(res_fs) and any(_inside(target, f"{root}/{part}") for part in _OWNED):
            raise ConfigError(f"--output {output} is inside what segpipe keeps in {results} "
                              f"({', '.join(_OWNED)}); write elsewhere")  # fmt: skip
    con = open_results(results, storage_options)
    try:
        table = _execute(con, sql, results, storage_options)
    finally:
        con.close()

    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        out_fs.pipe(out_path, buf.getvalue())
        return table
    if fmt == "table":
        from rich.console import Console

        rendered = render_table(table, max_rows=max_rows)
        if output is None:
            Console().print(rendered)
            return table
        text_io = io.StringIO()
        Console(file=text_io, width=200, no_color=True, force_terminal=False).print(rendered)
        text = text_io.getvalue()
    elif fmt == "csv":
        text_io = io.StringIO()
        writer = csv.writer(text_io, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in _rows(table):
            writer.writerow([_text(v) for v in row.values()])
        text = text_io.getvalue()
    else:
        text = json.dumps([_cell(r) for r in _rows(table)], indent=1) + "\n"
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        out_fs.pipe(out_path, text.encode())
    return table
