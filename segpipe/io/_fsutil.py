"""fsspec helpers shared by readers, ingest, archive discovery and results writers.

A local path and ``s3://bucket/key`` behave the same everywhere. ``storage_options`` are
only handed to remote filesystems: a run whose results live on S3 while its sources are
local may pass the same options for both.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from typing import IO, Any

import fsspec
from fsspec import AbstractFileSystem

__all__ = [
    "is_remote",
    "url_to_fs",
    "join_url",
    "strip_protocol",
    "open_binary",
    "zarr_store",
    "exists",
    "remove",
    "move",
]

_LOCAL_PROTOCOLS = {"", "file", "local"}

#: Block size for random-access reads from object stores (tile reads are small and scattered;
#: s3fs' default 50 MB read-ahead would re-fetch 50 MB per seek).
REMOTE_BLOCK_SIZE = 1 << 20


def _protocol(uri: str) -> str:
    uri = str(uri)
    if "://" not in uri:
        return ""
    return uri.split("://", 1)[0].lower()


def is_remote(uri: str) -> bool:
    """Return True when ``uri`` names a non-local filesystem (``s3://``, ``gs://``, ``memory://`` …).

    >>> is_remote("s3://bucket/a.tif"), is_remote("/data/a.tif"), is_remote("file:///a")
    (True, False, False)
    """
    return _protocol(uri) not in _LOCAL_PROTOCOLS


def strip_protocol(uri: str) -> str:
    """Turn ``file:///x`` into ``/x``; leave remote URLs and plain paths as they are."""
    uri = str(uri)
    if _protocol(uri) in ("file", "local"):
        return uri.split("://", 1)[1]
    return uri


def url_to_fs(
    uri: str, storage_options: dict[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for ``uri``.

    Parameters
    ----------
    uri : str
        Local path, ``file://`` URL or remote URL such as ``s3://bucket/key``.
    storage_options : dict, optional
        Passed to the remote filesystem (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``);
        ignored for local paths.
    """
    if not is_remote(uri):  # not through url_to_fs: it reads "::" in a file name as URL chaining
        from fsspec.implementations.local import make_path_posix

        return fsspec.filesystem("file"), make_path_posix(strip_protocol(str(uri)))
    fs, path = fsspec.core.url_to_fs(str(uri), **dict(storage_options or {}))
    return fs, path


def join_url(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with ``/``, keeping the protocol.

    >>> join_url("s3://bucket/results/", "images", "a.ome.zarr")
    's3://bucket/results/images/a.ome.zarr'
    >>> join_url("/tmp/out", "tables")
    '/tmp/out/tables'
    """
    base = str(base)
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if not clean:
        return base
    if "://" in base:
        proto, rest = base.split("://", 1)
        return f"{proto}://{posixpath.join(rest.rstrip('/'), *clean)}"
    return posixpath.join(base.rstrip("/") or "/", *clean)


def sha256_file(path: str | os.PathLike[str], fs: AbstractFileSystem | None = None) -> str:
    """Hex sha256 of a local file, or of ``path`` on ``fs``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") if fs is None else fs.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_binary(uri: str, storage_options: dict[str, Any] | None = None) -> IO[bytes]:
    """Open ``uri`` for random-access binary reading (seekable file object).

    Remote files use a small block cache suited to scattered tile reads.
    """
    fs, path = url_to_fs(uri, storage_options)
    if is_remote(uri):
        return fs.open(path, "rb", block_size=REMOTE_BLOCK_SIZE, cache_type="blockcache")
    return fs.open(path, "rb")


def exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Return True when a file or directory (prefix) exists at ``uri``."""
    fs, path = url_to_fs(uri, storage_options)
    return bool(fs.exists(path))


def remove(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Remove a file or a whole directory tree at ``uri``; do nothing when it is absent."""
    fs, path = url_to_fs(uri, storage_options)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()


def move(src: str, dst: str, storage_options: dict[str, Any] | None = None) -> None:
    """Move the file or directory tree at ``src`` to ``dst``, which must not exist.

    Locally one ``rename`` (atomic, same file system); on an object store every object is
    copied (server side) and the originals deleted.

    Raises
    ------
    FileExistsError
        ``dst`` exists (nothing is moved).
    FileNotFoundError
        ``src`` does not exist.
    """
    fs, p1 = url_to_fs(src, storage_options)
    _, p2 = url_to_fs(dst, storage_options)
    if fs.exists(p2):
        raise FileExistsError(f"{dst}: exists; not moving {src} onto it")
    if not fs.exists(p1):
        raise FileNotFoundError(f"{src}: nothing to move")
    if not is_remote(src):
        os.makedirs(os.path.dirname(p2) or ".", exist_ok=True)
        os.rename(p1, p2)
        return
    # object by object: fsspec's recursive mv also tries the key prefixes ("folders") as objects
    files = [p1] if fs.isfile(p1) else fs.find(p1)
    fs.copy(files, [p2 + f[len(p1):] for f in files])  # one batch: the copies run concurrently
    fs.rm(p1, recursive=True)
    fs.invalidate_cache()


def zarr_store(
    url: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = False
) -> Any:
    """Return a zarr v3 store for ``url``: ``LocalStore`` for paths, ``FsspecStore`` for URLs.

    Parameters
    ----------
    url : str
        Local path or remote URL of the zarr hierarchy (e.g. ``s3://b/images/a.ome.zarr``).
    storage_options : dict, optional
        Remote filesystem options; ignored for local paths.
    read_only : bool
        Open the store read-only.
    """
    from zarr.storage import FsspecStore, LocalStore

    if is_remote(url):
        return FsspecStore.from_url(
            url, storage_options=dict(storage_options or {}), read_only=read_only
        )
    return LocalStore(strip_protocol(url), read_only=read_only)
