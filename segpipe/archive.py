"""Archive discovery, fingerprints and image ids.

* :func:`discover` lists the images under a local folder or ``s3://bucket/prefix``
  (recursively; a single file works too). A ``*.zarr`` directory is one image and is not
  descended into. Names starting with ``.`` (``.DS_Store``, macOS ``._x.svs`` companions,
  hidden folders) are skipped. Include / exclude are fnmatch globs on the relative path
  (``*`` also crosses ``/``; a pattern without ``/`` is tried on the file name too),
  case-insensitive. Results are sorted by relative path.
* :func:`fingerprint` says whether an image changed: size + mtime (local) or size + ETag
  (object stores), or the sha256 of the content when asked.
* :func:`image_id_for` / :func:`assign_image_ids` turn relative paths into ids that are safe
  as file names and in URLs: only ``[a-z0-9._-]``, never empty, never starting with ``.``
  or containing ``/`` or ``..``, at most :data:`MAX_ID_LENGTH` characters. ``..`` and
  absolute path parts are dropped, so an id never places anything outside ``RESULTS``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segpipe.errors import ConfigError
from segpipe.io import sha256_file, url_to_fs

__all__ = [
    "ArchiveEntry",
    "DEFAULT_INCLUDE",
    "MAX_ID_LENGTH",
    "discover",
    "fingerprint",
    "image_id_for",
    "selected",
    "assign_image_ids",
]

#: Image files (and zarr directories) :func:`discover` picks up by default.
DEFAULT_INCLUDE: tuple[str, ...] = (
    "*.svs",
    "*.ndpi",
    "*.tif",
    "*.tiff",
    "*.ome.tif",
    "*.ome.tiff",
    "*.btf",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.zarr",
)
#: Longest image id :func:`image_id_for` returns.
MAX_ID_LENGTH = 96

_STRIP_SUFFIXES = (
    ".ome.tiff",
    ".ome.tif",
    ".ome.zarr",
    ".svs",
    ".ndpi",
    ".tiff",
    ".tif",
    ".btf",
    ".png",
    ".jpeg",
    ".jpg",
    ".zarr",
)
#: What an id looks like (:func:`image_id_for`): kept ids from a table are checked against it.
_SAFE_ID = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{MAX_ID_LENGTH - 1}}}")
_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}


@dataclass(frozen=True)
class ArchiveEntry:
    """One image found in an archive.

    Attributes
    ----------
    uri : str
        Full path or URL of the image (a file, or a ``.zarr`` directory).
    relpath : str
        Path relative to the archive root, ``/``-separated.
    size : int
        Bytes (for a zarr directory: 0; :func:`fingerprint` lists it).
    mtime : float or None
        Modification time (seconds since the epoch) when the filesystem reports one.
    etag : str or None
        Object-store ETag when the filesystem reports one.
    is_dir : bool
        True for a zarr directory.
    """

    uri: str
    relpath: str
    size: int
    mtime: float | None = None
    etag: str | None = None
    is_dir: bool = False


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _etag(info: dict[str, Any]) -> str | None:
    value = info.get("ETag") or info.get("etag")
    return str(value).strip('"') if value else None


def selected(relpath: str, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> bool:
    """Whether :func:`discover` keeps ``relpath`` under these globs (``include`` defaults to
    :data:`DEFAULT_INCLUDE`).

    >>> selected("a/x.tif"), selected("a/x.tif", exclude=["a/*"]), selected("notes.txt")
    (True, False, False)
    """
    return _matches(relpath, tuple(include) if include else DEFAULT_INCLUDE) and not _matches(relpath, exclude or ())


def _matches(relpath: str, patterns: Sequence[str]) -> bool:
    rel = relpath.lower()
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        pat = pattern.lower()
        if fnmatch.fnmatchcase(rel, pat) or ("/" not in pat and fnmatch.fnmatchcase(name, pat)):
            return True
    return False


def _join(root_uri: str, rel: str) -> str:
    return f"{root_uri.rstrip('/')}/{rel}"


def _hidden(part: str) -> bool:
    return part.startswith(".") and part not in (".", "..")


def _walk(fs: Any, root: str) -> Iterable[tuple[str, dict[str, Any], bool]]:
    """``(relpath, info, is_dir)`` of every file and ``*.zarr`` directory under ``root``.

    Local folders are walked folder by folder. Object stores are listed flat (one listing of
    every key): a key is taken as it is, so ``a/../../x.tif`` or ``a//x.tif`` (legal S3
    keys) are found rather than lost in a walk that cannot descend into ``..`` or ``""``.
    """
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        stack = [root]
        while stack:
            folder = stack.pop()
            for item in fs.ls(folder, detail=True):
                path = str(item["name"]).rstrip("/")
                base = path.rsplit("/", 1)[-1]
                if path == folder or base.startswith("."):
                    continue
                rel = posixpath.relpath(path, root) if root else path
                is_dir = item.get("type") == "directory"
                if is_dir and not base.lower().endswith(".zarr"):
                    stack.append(path)
                else:
                    yield rel, item, is_dir
        return
    zarrs: set[str] = set()
    prefix = f"{root}/" if root else ""
    for path, item in sorted(fs.find(root, detail=True).items()):
        path = str(path)
        if not path.startswith(prefix) or len(path) == len(prefix):
            continue
        parts = path[len(prefix):].split("/")
        for i, part in enumerate(parts):
            if _hidden(part):
                break
            if i < len(parts) - 1 and part.lower().endswith(".zarr"):
                rel = "/".join(parts[: i + 1])
                if rel not in zarrs:
                    zarrs.add(rel)
                    yield rel, {"name": prefix + rel, "type": "directory"}, True
                break
        else:
            if not path.endswith("/"):
                yield "/".join(parts), item, False


def discover(
    source: str,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[ArchiveEntry]:
    """List the images under ``source`` (see module docstring for the rules).

    Parameters
    ----------
    source : str
        Local folder, ``s3://bucket/prefix``, or a single image file / zarr directory.
    include, exclude : sequence of str, optional
        fnmatch globs on the relative path; ``include`` defaults to :data:`DEFAULT_INCLUDE`.
    storage_options : dict, optional
        fsspec options for remote sources.

    Returns
    -------
    list of ArchiveEntry
        Sorted by ``relpath``.

    Raises
    ------
    ConfigError
        When ``source`` does not exist.
    """
    include = tuple(include) if include else DEFAULT_INCLUDE
    exclude = tuple(exclude or ())
    fs, root = url_to_fs(source, storage_options)
    try:
        info = fs.info(root)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"archive source {source!r} does not exist; check the path or URL"
        ) from exc
    source = str(source)
    if info.get("type") != "directory" or root.lower().rstrip("/").endswith(".zarr"):
        name = root.rstrip("/").rsplit("/", 1)[-1]
        is_dir = info.get("type") == "directory"
        return [
            ArchiveEntry(
                source.rstrip("/"),
                name,
                int(info.get("size") or 0) if not is_dir else 0,
                _mtime(info),
                _etag(info),
                is_dir,
            )
        ]
    root = root.rstrip("/")
    entries: list[ArchiveEntry] = []
    for rel, item, is_dir in _walk(fs, root):
        if not selected(rel, include, exclude):
            continue
        entries.append(
            ArchiveEntry(
                _join(source, rel),
                rel,
                0 if is_dir else int(item.get("size") or 0),
                _mtime(item),
                _etag(item),
                is_dir,
            )
        )
    return sorted(entries, key=lambda e: e.relpath)


def fingerprint(
    entry: ArchiveEntry, content_hash: bool = False, storage_options: dict[str, Any] | None = None
) -> str:
    """A string that changes when the image changes.

    Parameters
    ----------
    entry : ArchiveEntry
        From :func:`discover`.
    content_hash : bool
        Hash the content (sha256) instead of trusting size + mtime / ETag.
    storage_options : dict, optional
        fsspec options for remote archives.

    Returns
    -------
    str
        ``"size=…;mtime=…"``, ``"size=…;etag=…"`` or ``"sha256:…"``; for a zarr directory the
        same computed over all its files.
    """
    fs, path = url_to_fs(entry.uri, storage_options)
    if entry.is_dir:
        files = sorted(fs.find(path, detail=True).items())
        if content_hash:
            digest = hashlib.sha256()
            for name, _ in files:
                digest.update(posixpath.relpath(name, path).encode() + b"\0")
                digest.update(sha256_file(name, fs).encode())
            return f"sha256:{digest.hexdigest()}"
        size = sum(int(i.get("size") or 0) for _, i in files)
        stamps = [_etag(i) or f"{_mtime(i)}" for _, i in files]
        listing = hashlib.sha256(
            "\n".join(f"{n}:{s}" for (n, _), s in zip(files, stamps, strict=True)).encode()
        )
        return f"size={size};files={len(files)};list={listing.hexdigest()[:16]}"
    if content_hash:
        return f"sha256:{sha256_file(path, fs)}"
    if entry.etag:
        return f"size={entry.size};etag={entry.etag}"
    return f"size={entry.size};mtime={entry.mtime!r}"


# --------------------------------------------------------------------------- image ids
def _short_hash(relpath: str, n: int = 8) -> str:
    return hashlib.sha256(relpath.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def _parts(relpath: str) -> list[str]:
    """Path components without empty, ``.``, ``..`` parts and drive letters."""
    parts = re.split(r"[/\\]+", str(relpath))
    return [p for p in parts if p not in ("", ".", "..") and not re.fullmatch(r"[A-Za-z]:", p)]


def _strip_suffix(name: str) -> str:
    low = name.lower()
    for suffix in _STRIP_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _raw_id(relpath: str) -> str:
    parts = _parts(relpath)
    if parts:
        parts[-1] = _strip_suffix(parts[-1])
    return "_".join(parts)


def image_id_for(relpath: str) -> str:
    """Stable, file-name- and URL-safe id for an image at ``relpath`` in its archive.

    Lowercase ASCII (accents folded), separators and other characters become ``_``, the
    image suffix is dropped, ``..`` / absolute parts are removed; too long or empty results
    get a short hash of ``relpath``.

    >>> image_id_for("slides/a b.svs")
    'slides_a_b'
    >>> image_id_for("../../etc/x.tif")
    'etc_x'
    >>> image_id_for("Ünïcode/Ça.ome.tiff")
    'unicode_ca'
    """
    text = unicodedata.normalize("NFKD", _raw_id(relpath))
    text = text.encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9._-]+", "_", text)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"_{2,}", "_", text).strip("._-")
    if not text:
        return f"image-{_short_hash(relpath)}"
    if text in _RESERVED:
        text = f"{text}_"
    if len(text) > MAX_ID_LENGTH:
        text = f"{text[: MAX_ID_LENGTH - 9].rstrip('._-')}-{_short_hash(relpath)}"
    return text


def assign_image_ids(relpaths: Iterable[str], keep: Mapping[str, str] | None = None) -> dict[str, str]:
    """Unique ids for all ``relpaths``; collisions resolved deterministically.

    When several paths map to the same :func:`image_id_for`, the one whose id is an exact
    (lossless) rendering of its path keeps it — preferring an all-lowercase path, then the
    smallest — and every other gets
    ``-<hash>`` of its own relpath appended, so adding a case- or accent-variant of a name
    never renames the plain one.

    ``keep`` maps paths to the ids they already have (the results' images table): those
    paths keep them, and the others are given ids around them. An image's id names its
    results, so adding ``x.tif`` beside an ``x.tiff`` that has the id ``x`` gives the new
    file ``x-<hash>`` instead of taking ``x`` over (the rule above prefers ``x.tif``).

    >>> assign_image_ids(["a.tif", "A.tif"])
    {'A.tif': 'a-bfbb6197', 'a.tif': 'a'}
    >>> assign_image_ids(["x.tif", "x.tiff"], keep={"x.tiff": "x"})
    {'x.tif': 'x-57fdfe2a', 'x.tiff': 'x'}
    """
    paths = sorted(set(relpaths))
    result = _kept_ids(paths, keep or {})
    groups: dict[str, list[str]] = {}
    for rel in paths:
        groups.setdefault(image_id_for(rel), []).append(rel)
    taken = set(groups) | set(result.values())
    for base, members in groups.items():
        members = [rel for rel in members if rel not in result]
        if not members:
            continue
        members.sort(key=lambda r: (_strip_suffix(r).replace("/", "_") != base, r != r.lower(), r))
        if base not in result.values():
            result[members.pop(0)] = base
        for rel in members:
            n = 8
            while True:
                stem = base[: MAX_ID_LENGTH - n - 1].rstrip("._-")
                candidate = f"{stem}-{_short_hash(rel, n)}"
                if candidate not in taken:
                    break
                n += 4
            taken.add(candidate)
            result[rel] = candidate
    return dict(sorted(result.items()))


def _kept_ids(paths: Sequence[str], keep: Mapping[str, str]) -> dict[str, str]:
    """The ids of ``keep`` that can stay: of listed paths, safe, and held by one path only."""
    holders: dict[str, list[str]] = {}
    for rel in paths:
        ident = keep.get(rel)
        if ident is not None and _SAFE_ID.fullmatch(ident) and ".." not in ident and ident not in _RESERVED:
            holders.setdefault(ident, []).append(rel)
    return {rels[0]: ident for ident, rels in holders.items() if len(rels) == 1}
