"""PNG and JPEG reader (whole-image formats: decoded once, on the first region read).

The header is read first (Pillow, lazily) and the declared size checked against
:data:`~segpipe.io._source.MAX_PIXELS` and Pillow's decompression-bomb limit before any
pixel is decoded. PNG pixels are decoded with imagecodecs (keeps 16-bit RGB, which Pillow
reduces to 8 bits; expands palettes); JPEG with Pillow. 1-bit and 8-bit PNGs are uint8,
16-bit PNGs uint16. Grey, grey+alpha → 1 channel; RGB, RGBA, palette, CMYK → 3 channels
(alpha is dropped: it is transparency, not signal). Such an image has a single level.
The EXIF Orientation (JPEG APP1, PNG eXIf / text chunk or XMP before the pixels) is read
with the header and applied by :class:`~segpipe.io._source.ImageSource`, so a camera photo
reads the way viewers show it.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

import numpy as np

from segpipe.errors import ImageReadError, ImageTooLargeError, UnsupportedImageError
from segpipe.io._fsutil import open_binary
from segpipe.io._source import ImageSource, check_size, mpp_from_resolution

__all__ = ["PilSource", "is_png", "is_jpeg"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> channels kept (alpha dropped)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}


def is_png(head: bytes) -> bool:
    """Return True when ``head`` starts with the PNG signature."""
    return head[:8] == _PNG_MAGIC


def is_jpeg(head: bytes) -> bool:
    """Return True when ``head`` starts with a JPEG SOI marker."""
    return head[:3] == b"\xff\xd8\xff"


class PilSource(ImageSource):
    """A PNG or JPEG image (see module docstring)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        from PIL import Image

        with open_binary(uri, storage_options) as fh:
            head = fh.read(64)
        self._png = is_png(head)
        if self._png and len(head) >= 24 and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            check_size((height, width), uri)  # before Pillow parses anything
        try:
            with open_binary(uri, storage_options) as fh, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(fh) as im:
                    width, height = im.size
                    mode = im.mode
                    dpi = im.info.get("dpi")
                    orientation = _orientation(im)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(
                f"{uri}: image declares more than the {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
                "Pillow decodes safely; convert it to a tiled TIFF"
            ) from exc
        except Exception as exc:
            raise ImageReadError(
                f"{uri}: not a readable {'PNG' if self._png else 'JPEG'} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); the file is corrupt"
            ) from exc
        check_size((height, width), uri)
        if self._png:
            if len(head) < 26 or head[12:16] != b"IHDR":
                raise ImageReadError(f"{uri}: PNG header is missing; the file is corrupt")
            bit_depth, colour = head[24], head[25]
            if colour not in _PNG_CHANNELS:
                raise UnsupportedImageError(f"{uri}: PNG colour type {colour} is not supported")
            n_channels = _PNG_CHANNELS[colour]
            dtype = np.uint16 if bit_depth == 16 else np.uint8
        else:
            if mode not in ("L", "RGB", "YCbCr", "CMYK", "I;16"):
                raise UnsupportedImageError(f"{uri}: JPEG mode {mode} is not supported")
            n_channels = 1 if mode in ("L", "I;16") else 3
            dtype = np.uint16 if mode == "I;16" else np.uint8
        self._mode = mode
        self._stored_shape = (height, width)
        self._pixels: np.ndarray | None = None
        super().__init__(
            uri,
            [(height, width)],
            n_channels,
            dtype,
            _mpp_from_dpi(dpi),
            storage_options=storage_options,
            rgb=n_channels == 3,
            orientation=orientation,
        )

    def _decode(self) -> np.ndarray:
        with open_binary(self.uri, self.storage_options) as fh:
            data = fh.read()
        if self._png:
            import imagecodecs

            arr = np.asarray(imagecodecs.png_decode(data))
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if self.n_channels == 3 and im.mode != "RGB":
                    im = im.convert("RGB")
                arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[:, :, np.newaxis]
        if arr.shape[2] in (2, 4):  # grey+alpha / RGBA: drop alpha
            arr = arr[:, :, :-1]
        expected = (*self._stored_shape, self.n_channels)
        if arr.shape != expected:
            raise ImageReadError(
                f"{self.uri}: decoded shape {arr.shape} does not match the header {expected}"
            )
        return np.ascontiguousarray(np.moveaxis(arr, 2, 0))

    def _read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = self._decode()
        return self._pixels[:, y0:y1, x0:x1]

    def _close(self) -> None:
        self._pixels = None


def _orientation(im: Any) -> Any:
    """The EXIF Orientation of an opened image from its header (1 when absent or unreadable).

    Pillow's base ``Image.getexif`` reads the EXIF found so far; ``PngImageFile.getexif``
    would decode the whole image to look for an eXIf chunk after the pixels.
    """
    from PIL import ExifTags, Image

    try:
        return Image.Image.getexif(im).get(ExifTags.Base.Orientation, 1)
    except Exception:  # a corrupt EXIF block does not make the pixels unreadable
        return 1


def _mpp_from_dpi(dpi: Any) -> float | None:
    """µm per pixel from a PNG pHYs chunk / JPEG density, when given in real units."""
    try:
        return mpp_from_resolution(float(dpi[0]), 25400.0)
    except (TypeError, ValueError, IndexError):
        return None
