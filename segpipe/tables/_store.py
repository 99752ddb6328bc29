"""Storage helpers: fsspec resolution, atomic Parquet writes, listing table files."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from segpipe.errors import ConfigError, ResultsError

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def resolve(
    results: str | os.PathLike[str], storage_options: dict[str, Any] | None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, root)`` for a results folder URL (root without a trailing slash)."""
    from segpipe.io import url_to_fs

    fs, root = url_to_fs(os.fspath(results), storage_options)
    return fs, root.rstrip("/") or "/"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local file system."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def arrow_fs(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """The pyarrow file system for ``fs`` (native for local paths, wrapped fsspec else)."""
    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def check_id(value: str, what: str) -> str:
    """Refuse ids that are not safe as one path component."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or value in (".", ".."):
        raise ConfigError(
            f"{what} {value!r} is not a safe file name; use letters, digits, '.', '_' and '-'"
        )
    return value


def require_results(fs: fsspec.AbstractFileSystem, root: str, results: object) -> None:
    """Raise :class:`ResultsError` unless ``root/tables`` exists."""
    tables = f"{root}/tables"
    try:
        fs.invalidate_cache(tables)
        ok = fs.isdir(tables)
    except (OSError, ValueError) as exc:  # unreachable bucket, bad credentials
        raise ResultsError(f"cannot read results folder {results}: {exc}") from exc
    if not ok:
        raise ResultsError(
            f"{results} is not a segpipe results folder (no tables/ inside); "
            f"run `segpipe run SOURCE --out {results}` first"
        )


def list_parquet(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """All finished ``*.parquet`` files under ``folder`` (sorted, temp files excluded)."""
    fs.invalidate_cache(folder)
    try:
        found = fs.find(folder)
    except FileNotFoundError:
        return []
    return sorted(
        p for p in found if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith(".")
    )


@contextmanager
def atomic_local_file(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    """A local file to write that becomes ``path`` whole when the block ends without error,
    so that readers see either the old file or the whole new one.

    Locally: a hidden temp file in ``path``'s folder, fsynced, then ``os.replace``.
    Elsewhere (S3, GCS, ...): a temp file uploaded in one piece (``fs.put_file``), which object
    stores make visible when it completes. The temp file is gone either way.

    Raises
    ------
    ResultsError
        Putting the file in place failed (named, with the system's reason).
    """
    parent, name = path.rsplit("/", 1)
    local = is_local(fs)
    if local:
        os.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    else:
        handle, tmp = tempfile.mkstemp(suffix=".tmp")
        os.close(handle)
    try:
        yield tmp
        try:
            if local:
                with open(tmp, "rb+") as f:  # on disk before it replaces anything
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            else:
                fs.put_file(tmp, path)
                fs.invalidate_cache(parent)
        except OSError as exc:
            raise ResultsError(f"cannot write {path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    Locally: :func:`atomic_local_file`. Elsewhere (S3, GCS, ...): one PUT of the whole
    content (``fs.pipe``), which object stores make visible atomically.
    """
    try:
        if is_local(fs):
            with atomic_local_file(fs, path) as tmp, open(tmp, "wb") as f:
                f.write(data)
        else:
            fs.pipe(path, data)
            fs.invalidate_cache(path.rsplit("/", 1)[0])
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc}") from exc


def write_parquet_atomic(
    fs: fsspec.AbstractFileSystem, path: str, table: pa.Table, compression: str = "zstd"
) -> None:
    """Write ``table`` as Parquet to ``path`` atomically (see :func:`write_bytes_atomic`).

    ``compression="none"`` suits one-row files (an image's or a run's row): compressing
    their ~30 column chunks costs more time (~1 ms) than it saves bytes.
    """
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression)
    write_bytes_atomic(fs, path, buf.getvalue())


def results_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path`` as a URL a user can paste (protocol added back for remote file systems)."""
    if is_local(fs):
        return path
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return f"{protocol}://{path}"
