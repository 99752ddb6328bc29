"""Reader registry: :func:`open_image` picks a reader by magic bytes (directories: zarr)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segpipe.errors import ImageReadError, UnsupportedImageError
from segpipe.io._fsutil import url_to_fs
from segpipe.io._pil import PilSource, is_jpeg, is_png
from segpipe.io._source import ImageSource
from segpipe.io._tiff import TiffSource, is_tiff
from segpipe.io._zarr import ZarrSource

__all__ = ["open_image", "register_reader", "READERS"]


@dataclass(frozen=True)
class Reader:
    """A registered reader: ``sniff(head_bytes)`` says whether ``opener(uri, options)`` applies."""

    name: str
    sniff: Callable[[bytes], bool]
    opener: Callable[[str, dict[str, Any] | None], ImageSource]


#: File readers tried in order on the first bytes of a file (zarr directories are separate).
READERS: dict[str, Reader] = {}


def register_reader(
    name: str,
    sniff: Callable[[bytes], bool],
    opener: Callable[[str, dict[str, Any] | None], ImageSource],
) -> None:
    """Register a file reader for :func:`open_image` (later registrations are tried last)."""
    READERS[name] = Reader(name, sniff, opener)


register_reader("tiff", is_tiff, TiffSource)
register_reader("png", is_png, PilSource)
register_reader("jpeg", is_jpeg, PilSource)


def open_image(uri: str, storage_options: dict[str, Any] | None = None) -> ImageSource:
    """Open an image lazily: TIFF family, PNG, JPEG, or a zarr / OME-Zarr directory.

    Parameters
    ----------
    uri : str
        Local path or URL (``s3://bucket/key``); a ``.zarr`` directory for zarr images.
    storage_options : dict, optional
        fsspec options for remote URLs (ignored for local paths).

    Returns
    -------
    ImageSource
        Regions read on demand with :meth:`ImageSource.read_region`, channel-first.

    Raises
    ------
    ImageReadError
        Missing, empty, truncated or corrupt file.
    ImageTooLargeError
        The header declares more than ``MAX_PIXELS`` pixels.
    UnsupportedImageError
        Not an image format segpipe reads, or an unsupported dtype / channel layout.

    Examples
    --------
    >>> with open_image("slide.svs") as src:  # doctest: +SKIP
    ...     tile = src.read_region(0, 0, 0, 512, 512)   # (3, 512, 512) uint8
    """
    uri = str(uri)
    fs, path = url_to_fs(uri, storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise ImageReadError(f"{uri}: file not found; check the path") from exc
    except Exception as exc:
        raise ImageReadError(f"{uri}: cannot access ({type(exc).__name__}: {exc})") from exc
    if info.get("type") == "directory":
        return ZarrSource(uri, storage_options)
    if info.get("size") == 0:
        raise ImageReadError(f"{uri}: file is empty (0 bytes); the copy is incomplete")
    try:
        with fs.open(path, "rb") as fh:
            head = fh.read(64)
    except Exception as exc:
        raise ImageReadError(f"{uri}: cannot read ({type(exc).__name__}: {exc})") from exc
    for reader in READERS.values():
        if reader.sniff(head):
            return reader.opener(uri, storage_options)
    raise UnsupportedImageError(
        f"{uri}: not a supported image (starts with {head[:8]!r}); segpipe reads "
        f"{', '.join(READERS)} files and zarr / OME-Zarr directories"
    )
