"""Image readers and storage helpers.

``open_image(uri)`` opens TIFF-family files (BigTIFF pyramids, SVS, NDPI, OME-TIFF), zarr /
OME-Zarr, PNG and JPEG lazily, locally or on object stores through fsspec, and returns an
:class:`ImageSource` whose regions are channel-first ``(C, Y, X)``. The ``*_url`` helpers make
a local path and ``s3://bucket/key`` behave the same for every module that touches storage.
"""

from segpipe.io._fsutil import (
    exists,
    is_remote,
    join_url,
    move,
    open_binary,
    remove,
    sha256_file,
    strip_protocol,
    url_to_fs,
    zarr_store,
)
from segpipe.io._registry import READERS, open_image, register_reader
from segpipe.io._source import MAX_CHANNELS, MAX_PIXELS, ImageSource, modality_for, target_dtype

__all__ = [
    "ImageSource",
    "open_image",
    "register_reader",
    "READERS",
    "MAX_PIXELS",
    "MAX_CHANNELS",
    "modality_for",
    "target_dtype",
    "url_to_fs",
    "join_url",
    "is_remote",
    "strip_protocol",
    "open_binary",
    "zarr_store",
    "exists",
    "remove",
    "move",
    "sha256_file",
]
