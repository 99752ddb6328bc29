"""The :class:`ImageSource` base class and the rules every reader shares.

Rules (one place, so every format behaves the same):

* **dtype** — uint8, uint16 and float32 are kept. bool becomes uint8; int8, int16 and
  float16 become float32 (lossless); uint32, int32 and float64 become float32 (exact up to
  2**24 / float32 precision — fine for intensities). Anything else (complex, 64-bit
  integers, structured) raises :class:`~segpipe.errors.UnsupportedImageError`.
* **channels** — regions are channel-first ``(C, Y, X)``; 1 … :data:`MAX_CHANNELS`
  channels. An alpha channel of an RGBA or grey+alpha image is dropped (it is transparency,
  not signal).
* **orientation** — regions and :attr:`~ImageSource.level_shapes` are the picture as viewers
  show it: a JPEG's or PNG's EXIF Orientation is applied (Pillow's ``ImageOps.exif_transpose``;
  orientations 5–8 swap Y and X), from the header, before anything is decoded. A TIFF's
  Orientation tag is ignored, as OpenSlide, QuPath and tifffile do: slide coordinates match theirs.
* **modality** — 3-channel uint8 RGB → ``"brightfield"``; 1-channel uint8 → ``"grey"``;
  everything else (several non-RGB channels, or 16-bit / float data) → ``"fluorescence"``.
  "RGB" means the file says so (TIFF photometric RGB/YCbCr, PNG/JPEG colour); a 3-channel
  uint8 image whose colour model is unknown (zarr without channel names) counts as RGB, one
  whose channels are stored as separate grey planes (e.g. OME-TIFF CYX) does not.
* **size** — a level 0 larger than :data:`MAX_PIXELS` pixels is refused before anything is
  allocated (:class:`~segpipe.errors.ImageTooLargeError`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from segpipe.errors import ImageReadError, ImageTooLargeError, UnsupportedImageError

__all__ = ["ImageSource", "MAX_PIXELS", "MAX_CHANNELS", "target_dtype", "modality_for"]

#: Largest level-0 size (Y * X pixels) segpipe opens; larger declared sizes are refused.
MAX_PIXELS = 2**34
#: Largest number of channels segpipe opens.
MAX_CHANNELS = 64

#: EXIF Orientation -> (transpose, flip Y, flip X) turning the stored pixels into the
#: picture shown (as ``PIL.ImageOps.exif_transpose``); other values: as stored.
_ORIENTATIONS = {
    1: (False, False, False),
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}

_KEEP = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)}
_CONVERT = {
    np.dtype(np.bool_): np.dtype(np.uint8),
    np.dtype(np.int8): np.dtype(np.float32),
    np.dtype(np.int16): np.dtype(np.float32),
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.uint32): np.dtype(np.float32),
    np.dtype(np.int32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float32),
}


def target_dtype(dtype: Any, uri: str) -> np.dtype:
    """Return the dtype segpipe stores for a source ``dtype`` (see module docstring).

    Raises
    ------
    UnsupportedImageError
        For complex, 64-bit integer and other dtypes segpipe does not handle.
    """
    dt = np.dtype(dtype)
    if dt.byteorder not in "=|":
        dt = dt.newbyteorder("=")
    if dt in _KEEP:
        return dt
    if dt in _CONVERT:
        return _CONVERT[dt]
    raise UnsupportedImageError(
        f"{uri}: pixel type {np.dtype(dtype)} is not supported; "
        "convert the image to uint8, uint16 or float32"
    )


def modality_for(n_channels: int, dtype: Any, rgb: bool | None = None) -> str:
    """Return ``"brightfield"``, ``"grey"`` or ``"fluorescence"`` (see module docstring).

    >>> modality_for(3, "uint8"), modality_for(3, "uint8", rgb=False), modality_for(1, "uint16")
    ('brightfield', 'fluorescence', 'fluorescence')
    """
    if np.dtype(dtype) == np.uint8 and n_channels == 3 and rgb is not False:
        return "brightfield"
    if np.dtype(dtype) == np.uint8 and n_channels == 1:
        return "grey"
    return "fluorescence"


def check_size(shape: tuple[int, int], uri: str, limit: int = MAX_PIXELS) -> None:
    """Raise :class:`ImageTooLargeError` when ``shape`` (Y, X) exceeds ``limit`` pixels."""
    y, x = int(shape[0]), int(shape[1])
    if y <= 0 or x <= 0:
        raise ImageReadError(f"{uri}: image declares an empty size {y} x {x}; the file is corrupt")
    if y * x > limit:
        raise ImageTooLargeError(
            f"{uri}: image declares {y} x {x} = {y * x} pixels, more than the limit of {limit}; "
            "the header is corrupt or the image must be split before ingest"
        )


#: Resolutions (dots per inch) that image tools write when they know nothing about the
#: pixel size: 1 (unit-less), the screen defaults 72 and 96.
DEFAULT_DPI = (1.0, 72.0, 96.0)
#: Relative tolerance for :data:`DEFAULT_DPI`: a PNG stores pixels per metre (72 dpi is
#: 2835 px/m = 72.009 dpi) and JPEG / TIFF may state pixels per cm (28 px/cm = 71.12 dpi).
_DPI_TOLERANCE = 0.015


def mpp_from_resolution(pixels_per_unit: float, unit_um: float) -> float | None:
    """µm per pixel from a file's resolution (``pixels_per_unit`` pixels per ``unit_um`` µm).

    None when the value is not a pixel size: not positive, or within 1.5 % of one of the
    tool defaults :data:`DEFAULT_DPI`, however the file's unit expresses it.

    Examples
    --------
    >>> mpp_from_resolution(50800, 25400)  # 50 800 dpi
    0.5
    >>> mpp_from_resolution(2835, 1e6), mpp_from_resolution(28, 1e4)  # 72 dpi in px/m, px/cm
    (None, None)
    """
    try:
        ppu, unit = float(pixels_per_unit), float(unit_um)
    except (TypeError, ValueError):
        return None
    if not (ppu > 0 and unit > 0) or not np.isfinite(ppu / unit):
        return None
    dpi = ppu * 25400.0 / unit
    if any(abs(dpi / d - 1.0) <= _DPI_TOLERANCE for d in DEFAULT_DPI):
        return None
    return unit / ppu


def check_channels(n: int, uri: str) -> None:
    """Raise :class:`UnsupportedImageError` for 0 or more than :data:`MAX_CHANNELS` channels."""
    if not 1 <= n <= MAX_CHANNELS:
        raise UnsupportedImageError(
            f"{uri}: {n} channels is not supported (1 to {MAX_CHANNELS}); "
            "split the channels into separate images"
        )


class ImageSource:
    """A lazily read, possibly multi-resolution image.

    Attributes
    ----------
    uri : str
        Where the image was opened from.
    level_shapes : list of (Y, X)
        Size of each pyramid level; level 0 is full resolution, later levels are smaller.
    n_channels : int
        Channels of every region returned.
    dtype : numpy.dtype
        uint8, uint16 or float32.
    mpp : float or None
        µm per pixel at level 0, None when the file does not say.
    channel_names : list of str
    modality : str
        ``"brightfield"`` | ``"fluorescence"`` | ``"grey"``.
    orientation : int
        The file's EXIF Orientation (1: as stored), already applied to
        ``level_shapes`` and to every region.

    Subclasses implement :meth:`_read` on the pixels as stored (and optionally
    :meth:`_close`) and pass the stored level shapes; this class checks arguments, applies
    the orientation, converts dtypes and turns failures into :class:`ImageReadError` naming
    the file and region. Reads are serialised per source with a lock (file handles are shared).
    An ``ImageSource`` pickles as "open this URI again", never as its open handles.
    """

    def __init__(
        self,
        uri: str,
        level_shapes: Sequence[tuple[int, int]],
        n_channels: int,
        dtype: Any,
        mpp: float | None,
        channel_names: Sequence[str] | None = None,
        modality: str | None = None,
        storage_options: dict[str, Any] | None = None,
        rgb: bool | None = None,
        orientation: int = 1,
    ) -> None:
        self.uri = str(uri)
        ok = isinstance(orientation, int) and orientation in _ORIENTATIONS
        self.orientation = int(orientation) if ok else 1
        swap = _ORIENTATIONS[self.orientation][0]
        self.level_shapes = [(int(y), int(x))[:: -1 if swap else 1] for y, x in level_shapes]
        if not self.level_shapes:
            raise ImageReadError(f"{uri}: no image data found in the file")
        check_size(self.level_shapes[0], self.uri)
        check_channels(int(n_channels), self.uri)
        self.n_channels = int(n_channels)
        self.dtype = target_dtype(dtype, self.uri)
        self.mpp = float(mpp) if mpp is not None and np.isfinite(mpp) and mpp > 0 else None
        names = [str(n) for n in (channel_names or [])]
        if len(names) != self.n_channels:
            names = default_channel_names(self.n_channels, self.dtype, rgb)
        self.channel_names = names
        self.modality = modality or modality_for(self.n_channels, self.dtype, rgb)
        self.storage_options = storage_options
        self._lock = threading.RLock()
        self._closed = False

    # -- public API -------------------------------------------------------------------
    @property
    def n_levels(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_shapes)

    def read_region(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Read the half-open region ``[y0:y1, x0:x1]`` of ``level``.

        Returns
        -------
        (C, y1 - y0, x1 - x0) ndarray of :attr:`dtype`

        Raises
        ------
        ValueError
            When the level or region is outside the image.
        ImageReadError
            When the pixel data cannot be read or decoded (names the file and region).
        """
        if self._closed:
            raise ValueError(f"{self.uri}: read_region on a closed ImageSource; open it again")
        if not 0 <= level < len(self.level_shapes):
            raise ValueError(
                f"{self.uri}: level {level} does not exist (levels 0..{len(self.level_shapes) - 1})"
            )
        ly, lx = self.level_shapes[level]
        if not (0 <= y0 <= y1 <= ly and 0 <= x0 <= x1 <= lx):
            raise ValueError(
                f"{self.uri}: region y {y0}:{y1}, x {x0}:{x1} is outside level {level} "
                f"of size {ly} x {lx}"
            )
        if y0 == y1 or x0 == x1:
            return np.zeros((self.n_channels, y1 - y0, x1 - x0), self.dtype)
        swap, flip_y, flip_x = _ORIENTATIONS[self.orientation]
        sy0, sy1 = (ly - y1, ly - y0) if flip_y else (y0, y1)  # the region as stored
        sx0, sx1 = (lx - x1, lx - x0) if flip_x else (x0, x1)
        if swap:
            sy0, sy1, sx0, sx1 = sx0, sx1, sy0, sy1
        try:
            with self._lock:
                data = self._read(level, sy0, sx0, sy1, sx1)
        except ImageReadError:
            raise
        except Exception as exc:  # decoders raise anything: report one line naming the file
            raise ImageReadError(
                f"{self.uri}: cannot read level {level} region y {y0}:{y1}, x {x0}:{x1} "
                f"({type(exc).__name__}: {_one_line(exc)}); the file is truncated or corrupt"
            ) from exc
        if swap:
            data = data.transpose(0, 2, 1)
        data = data[:, :: -1 if flip_y else 1, :: -1 if flip_x else 1]
        expected = (self.n_channels, y1 - y0, x1 - x0)
        if data.shape != expected:
            raise ImageReadError(
                f"{self.uri}: level {level} region y {y0}:{y1}, x {x0}:{x1} decoded to shape "
                f"{data.shape}, expected {expected}; the file is corrupt"
            )
        if data.dtype != self.dtype:
            data = data.astype(self.dtype)
        return np.ascontiguousarray(data)

    def level_mpp(self, level: int) -> float | None:
        """µm per pixel at ``level`` (level-0 mpp scaled by the level's width ratio)."""
        if self.mpp is None:
            return None
        return self.mpp * self.level_shapes[0][1] / self.level_shapes[level][1]

    def close(self) -> None:
        """Release file handles; further reads raise."""
        if not self._closed:
            self._closed = True
            self._close()

    # -- subclass hooks ---------------------------------------------------------------
    def _read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        """Release resources (override)."""

    # -- conveniences -----------------------------------------------------------------
    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        from segpipe.io._registry import open_image

        return (open_image, (self.uri, self.storage_options))

    def __repr__(self) -> str:
        y, x = self.level_shapes[0]
        return (
            f"{type(self).__name__}({self.uri!r}, {y}x{x}, levels={len(self.level_shapes)}, "
            f"C={self.n_channels}, {self.dtype}, mpp={self.mpp}, {self.modality})"
        )


def default_channel_names(n: int, dtype: Any, rgb: bool | None = None) -> list[str]:
    """``["red", "green", "blue"]`` for uint8 RGB, ``["grey"]`` for one channel, else ``c0..``."""
    if modality_for(n, dtype, rgb) == "brightfield":
        return ["red", "green", "blue"]
    if n == 1:
        return ["grey"]
    return [f"c{i}" for i in range(n)]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
