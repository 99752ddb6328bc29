"""TIFF reader: BigTIFF pyramids, SVS, NDPI, OME-TIFF (SubIFDs), plain strip TIFFs.

Pyramid levels come from tifffile's largest series (its ``levels``; the first series in
pyramids, not when a thumbnail or macro image comes first); pages of other series that look
like reduced copies of level 0 are appended (generic multi-page pyramids).
When series detection fails (e.g. "incompatible keyframe" in files written by other tools)
the levels are picked from the pages and their SubIFDs directly: the largest page is level 0,
smaller pages with the same pixel type, samples, tiling and aspect ratio are the lower
levels (so SVS thumbnail, label and macro pages are never mistaken for levels). Regions are
decoded lazily — only the tiles or strips a region touches are read. A level stored in one
page (the usual case: BigTIFF / SVS / OME-TIFF pyramids, plain TIFFs) is read the way
tifffile's ``ZarrTiffStore`` reads a chunk — ``FileHandle.read_segments`` for the touched
segments, ``keyframe.decode`` for each, missing segments filled with the page's nodata value —
but straight into the region, without zarr's indexing in between; tiles that a region only
partly covers are kept (up to 16 MiB per level) for the neighbouring region, so reading a
slide block by block with blocks not aligned to the tiles (e.g. 1024² blocks, 240² SVS
tiles) decodes every tile once. Anything else (levels spread over several pages, NDPI JPEG
headers, volumes, bit-packed samples) goes through ``aszarr``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import OrderedDict
from typing import Any

import numpy as np
import tifffile

from segpipe.errors import ImageReadError, UnsupportedImageError
from segpipe.io._fsutil import open_binary
from segpipe.io._source import ImageSource, mpp_from_resolution

__all__ = ["TiffSource", "is_tiff"]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_CHANNEL_AXES = "CSQIE"  # axes that may carry channels (tifffile: Q/I = unknown/sequence)
_UNIT_TO_UM = {
    "pm": 1e-6,
    "nm": 1e-3,
    "µm": 1.0,
    "\u03bcm": 1.0,  # Greek mu
    "\\u00B5m": 1.0,  # as ImageJ writes it in its description
    "um": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "Å": 1e-4,
    "A": 1e-4,
    "in": 25400.0,
}
_SVS_MPP = re.compile(r"MPP\s*=\s*([0-9.eE+-]+)")


def is_tiff(head: bytes) -> bool:
    """Return True when ``head`` starts with a TIFF or BigTIFF signature."""
    return head[:4] in _TIFF_MAGIC


class _Level:
    """One pyramid level: a tifffile series level or page, opened as zarr on first use."""

    def __init__(
        self, obj: Any, axes: str, shape: tuple[int, ...], keep: int | None, colors: Any = None
    ) -> None:
        self.obj = obj
        self.axes = axes
        self.shape = shape
        self.keep = keep  # leading channels kept (see _kept_samples); None: all
        self.colors = colors  # see _photometric
        self._array: Any = None
        y = shape[axes.index("Y")]
        x = shape[axes.index("X")]
        self.yx = (int(y), int(x))
        self._page = _direct_page(obj, axes, shape)
        self._edges = _SegmentCache()

    def array(self) -> Any:
        if self._array is None:
            import zarr

            is_series = isinstance(self.obj, tifffile.TiffPageSeries)
            store = self.obj.aszarr(level=0) if is_series else self.obj.aszarr()
            self._array = zarr.open_array(store, mode="r")
        return self._array

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        if self._page is not None:
            data = _read_segments(self._page, y0, x0, y1, x1, self._edges)
            return self._convert(data[: self.keep])
        index: list[Any] = []
        kept = ""
        for ax, n in zip(self.axes, self.shape, strict=True):
            if ax == "Y":
                index.append(slice(y0, y1))
                kept += ax
            elif ax == "X":
                index.append(slice(x0, x1))
                kept += ax
            elif n == 1:
                index.append(0)
            else:
                index.append(slice(None))
                kept += "C"
        data = np.asarray(self.array()[tuple(index)])
        if "C" not in kept:
            data = data[np.newaxis]
            kept = "C" + kept
        data = np.moveaxis(data, [kept.index("C"), kept.index("Y"), kept.index("X")], [0, 1, 2])
        return self._convert(data[: self.keep])

    def _convert(self, data: np.ndarray) -> np.ndarray:
        """Stored values → what the page shows (:func:`_photometric`)."""
        if self.colors is None:
            return data
        if isinstance(self.colors, np.ndarray):  # palette (3, n) on channel 0, bilevel (2,) on all
            return np.take(self.colors, data[0] if self.colors.ndim == 2 else data, axis=-1)
        if self.colors == "cmyk":  # as Pillow's CMYK -> RGB: (max - C) * (max - K) / max, rounded
            top = np.iinfo(data.dtype).max
            cmy, k = data[:3].astype(np.int64), data[3:4].astype(np.int64)
            return (((top - cmy) * (top - k) + top // 2) // top).astype(data.dtype)
        return np.invert(data) if data.dtype.kind in "uib" else -data  # min-is-white


def _direct_page(obj: Any, axes: str, shape: tuple[int, ...]) -> Any:
    """The one page holding ``obj``'s pixels when :func:`_read_segments` can read it, else None.

    Conditions: a single page (no series transform), 2-D (depth 1), whole-byte samples, no
    NDPI JPEG header, and the level's axes other than Y, X and one channel axis of the
    page's samples all of length 1 — so the page's samples are the level's channels.
    """
    if isinstance(obj, tifffile.TiffPageSeries):
        if getattr(obj, "transform", None) is not None or len(obj.pages) != 1:
            return None
        page = obj.pages[0]
    else:
        page = obj
    if not isinstance(page, tifffile.TiffPage) or page.keyframe is not page:
        return None
    try:
        sep, depth, length, width, contig = page.shaped
        if (
            depth != 1
            or page.jpegheader is not None
            or page.bitspersample % 8
            or page.dtype is None
            or (sep > 1 and contig > 1)
            or not (page.is_tiled or page.rowsperstrip)
            or (page.is_tiled and page.tiledepth != 1)
        ):
            return None
        rest = [n for a, n in zip(axes, shape, strict=True) if a not in "YX" and n > 1]
        if rest not in ([], [sep * contig]) or (length, width) != (
            shape[axes.index("Y")],
            shape[axes.index("X")],
        ):
            return None
    except Exception:
        return None
    return page


class _SegmentCache:
    """Decoded tiles / strips that a region read only partly used, least recently used first.

    Neighbouring regions not aligned to the tiles share the tiles on their common edge;
    ingest reads neighbours one after another, so keeping these (and only these) decodes
    each tile once. Bounded by :attr:`max_bytes`.
    """

    max_bytes = 16 << 20

    def __init__(self) -> None:
        self._items: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, index: int) -> np.ndarray | None:
        segment = self._items.get(index)
        if segment is not None:
            self._items.move_to_end(index)
        return segment

    def put(self, index: int, segment: np.ndarray) -> None:
        if index in self._items or segment.nbytes > self.max_bytes:
            return
        self._items[index] = segment
        self._bytes += segment.nbytes
        while self._bytes > self.max_bytes:
            self._bytes -= self._items.popitem(last=False)[1].nbytes


def _read_segments(
    page: Any, y0: int, x0: int, y1: int, x1: int, edges: _SegmentCache | None = None
) -> np.ndarray:
    """Decode the tiles / strips of ``page`` under ``[y0:y1, x0:x1]`` into ``(C, y, x)``.

    Mirrors tifffile's ``ZarrTiffStore.get`` + ``TiffPage.asarray`` for one page: segment
    ``i`` sits at the image position ``keyframe.decode`` reports; empty segments (offset or
    byte count 0) are the page's ``nodata``. Segments the region only partly covers are
    kept in ``edges`` for the neighbouring region.
    """
    sep, _, length, width, contig = page.shaped
    if page.is_tiled:
        sh, sw = int(page.tilelength), int(page.tilewidth)
    else:
        sh, sw = min(int(page.rowsperstrip), length), width
    per_row, per_sample = -(-width // sw), -(-length // sh) * -(-width // sw)
    indices = [
        s * per_sample + r * per_row + c
        for s in range(sep)
        for r in range(y0 // sh, (y1 - 1) // sh + 1)
        for c in range(x0 // sw, (x1 - 1) // sw + 1)
    ]
    out = np.empty((sep * contig, y1 - y0, x1 - x0), page.dtype)
    offsets, counts = page.dataoffsets, page.databytecounts
    if max(indices) >= min(len(offsets), len(counts)):
        raise ValueError(f"page has {len(offsets)} segments, segment {max(indices)} is missing")

    def place(index: int, segment: np.ndarray | None) -> None:
        s, rest = divmod(index, per_sample)
        h, w = rest // per_row * sh, rest % per_row * sw
        ya, yb = max(h, y0), min(h + sh, y1, length)
        xa, xb = max(w, x0), min(w + sw, x1, width)
        dst = out[s * contig : (s + 1) * contig, ya - y0 : yb - y0, xa - x0 : xb - x0]
        if segment is None:
            dst[...] = page.nodata
            return
        src = segment[0, ya - h : yb - h, xa - w : xb - w]  # (y, x, contig)
        if src.shape[:2] != (yb - ya, xb - xa):
            raise ValueError(
                f"segment {index} decoded to {segment.shape[1:3]}, "
                f"too small for rows {ya}:{yb}, columns {xa}:{xb}"
            )
        dst[...] = np.moveaxis(src, -1, 0)
        whole = (h, min(h + sh, length), w, min(w + sw, width))  # the segment inside the image
        if edges is not None and (ya, yb, xa, xb) != whole:
            edges.put(index, segment)

    todo = []
    for index in indices:
        cached = edges.get(index) if edges is not None else None
        if cached is None:
            todo.append(index)
        else:
            place(index, cached)
    if not todo:
        return out
    decode = page.decode
    args: dict[str, Any] = {"_fullsize": False}
    if page.jpegtables is not None:
        args["jpegtables"] = page.jpegtables
    fh = page.parent.filehandle
    for chunk in fh.read_segments(
        [offsets[i] for i in todo],
        [counts[i] for i in todo],
        todo,
        lock=fh.lock,
        sort=True,
        flat=False,
    ):
        for data, index in chunk:
            place(index, decode(data, index, **args)[0])
    return out


def _channel_count(axes: str, shape: tuple[int, ...], uri: str) -> int:
    extra = [(a, n) for a, n in zip(axes, shape, strict=True) if a not in "YX" and n > 1]
    if len(extra) > 1 or (extra and extra[0][0] not in _CHANNEL_AXES):
        dims = ", ".join(f"{a}={n}" for a, n in extra)
        raise UnsupportedImageError(
            f"{uri}: image has axes {axes} with {dims}; segpipe reads 2-D images with one "
            "channel axis — export a single Z plane / time point"
        )
    return int(extra[0][1]) if extra else 1


def _kept_samples(page: Any) -> int | None:
    """Leading samples kept of a page whose extra sample is transparency, as Pillow reads it:
    3 of an RGB page's 4 (RGBA / RGBX), 1 of a grey page's 2 when the extra sample is alpha
    (ExtraSamples associated or unassociated); None: all (e.g. unmarked fluorescence channels).
    """
    photometric = int(getattr(page, "photometric", -1))
    samples = int(getattr(page, "samplesperpixel", 1))
    if photometric == 2 and samples == 4:
        return 3
    alpha = tuple(int(e) for e in getattr(page, "extrasamples", None) or ()) in ((1,), (2,))
    return 1 if photometric in (0, 1) and samples == 2 and alpha else None


class TiffSource(ImageSource):
    """A TIFF-family image (see module docstring) read lazily through fsspec."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self._fh = open_binary(uri, storage_options)
        try:
            self._tif = tifffile.TiffFile(self._fh, name=uri.rsplit("/", 1)[-1])
        except Exception as exc:
            self._fh.close()
            raise ImageReadError(
                f"{uri}: not a readable TIFF ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                "the file is truncated or corrupt"
            ) from exc
        try:
            self._levels = _find_levels(self._tif, uri)
            first = self._levels[0]
            page0 = _first_page(first.obj)
            n_channels = _channel_count(first.axes, first.shape, uri)
            n_channels = first.keep or n_channels  # alpha dropped
            table = isinstance(first.colors, np.ndarray)
            palette = table and first.colors.ndim == 2
            if palette and n_channels != 1:  # several palette pages as channels
                raise UnsupportedImageError(f"{uri}: palette (colour-table) TIFF with {n_channels} "
                                            "channels; save each image as RGB")  # fmt: skip
            rgb = palette or (not table and first.colors == "cmyk")
            if rgb:
                n_channels = 3
            names, mpp = _metadata(self._tif, page0, n_channels, _series_index(self._tif, first.obj))
            super().__init__(
                uri,
                [lvl.yx for lvl in self._levels],
                n_channels,
                first.colors.dtype if table else page0.dtype,
                mpp,
                channel_names=names,
                storage_options=storage_options,
                rgb=rgb or (n_channels == 3 and int(getattr(page0, "photometric", 1)) in (2, 6)),
            )
        except BaseException:
            self._tif.close()
            self._fh.close()
            raise

    def _read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        return self._levels[level].read(y0, x0, y1, x1)

    def _close(self) -> None:
        self._tif.close()
        self._fh.close()


def _series_index(tif: tifffile.TiffFile, obj: Any) -> int:
    """Position of series ``obj`` in the file (0 for a page, or when series detection fails)."""
    try:
        return next((i for i, ser in enumerate(tif.series) if ser is obj), 0)
    except Exception:
        return 0


def _first_page(obj: Any) -> Any:
    """The keyframe page of a tifffile series (or the page itself)."""
    return getattr(obj, "keyframe", None) or obj


def _photometric(page: Any) -> Any:
    """How to show a page's stored values, as Pillow shows them: None (as stored);
    ``"invert"`` for a one-sample min-is-white page (0 is white: integers become ``max - v``,
    floats ``-v``); the ``(2,)`` uint8 table ``[0, 255]`` (min-is-white ``[255, 0]``) of a
    bilevel (1-bit) page; ``"cmyk"`` for an integer CMYK page (separated, 4 samples, InkSet
    CMYK), shown as RGB; or the ``(3, n)`` colour table of a palette page (uint8 when every
    entry is a multiple of 257, as TIFF writers scale 8-bit colours). An alpha sample
    (:func:`_kept_samples`) is dropped before."""
    photometric = int(getattr(page, "photometric", -1))
    samples = _kept_samples(page) or int(getattr(page, "samplesperpixel", 1))
    cmyk = photometric == 5 and samples == 4 and page.tags.valueof(332, 1) == 1  # InkSet CMYK
    if cmyk and getattr(page.dtype, "kind", "") == "u":
        return "cmyk"
    if samples != 1:
        return None
    if photometric in (0, 1) and int(getattr(page, "bitspersample", 8)) == 1:
        return np.array([255, 0] if photometric == 0 else [0, 255], np.uint8)
    if photometric == 0:
        return "invert"
    colormap = getattr(page, "colormap", None) if photometric == 3 else None
    if colormap is None:
        return None
    table = np.asarray(colormap)
    if table.ndim != 2 or table.shape[0] != 3:
        return None
    return (table // 257).astype(np.uint8) if not (table % 257).any() else table.astype(np.uint16)


def _level_from(obj: Any) -> _Level:
    page = _first_page(obj)
    axes, shape = str(obj.axes), tuple(int(n) for n in obj.shape)
    return _Level(obj, axes, shape, keep=_kept_samples(page), colors=_photometric(page))


def _find_levels(tif: tifffile.TiffFile, uri: str) -> list[_Level]:
    if not tif.pages or len(tif.pages) == 0:
        raise ImageReadError(f"{uri}: TIFF has no image pages; the file is truncated or corrupt")
    try:
        levels = _levels_from_series(tif)
    except UnsupportedImageError:
        raise
    except Exception:  # tifffile series detection is fragile on foreign pyramids
        levels = []
    if not levels:
        levels = _levels_from_pages(tif, uri)
    return levels


def _levels_from_series(tif: tifffile.TiffFile) -> list[_Level]:
    series = list(tif.series)
    if not series:
        return []
    # the largest series is the image (usually the first; not when a thumbnail or a macro
    # image comes first, as in some multi-page and OME files), as with pages below
    main = max(series, key=lambda s: _yx(_first_page(s))[0] * _yx(_first_page(s))[1])
    levels = [_level_from(lvl) for lvl in main.levels]
    base = _first_page(main)
    # A generic multi-page pyramid may show up as one series per page: append reduced copies.
    if len(levels) == 1 and len(series) > 1:
        for other in series:
            if other is main:
                continue
            cand = _level_from(other)
            if _looks_like_level(_first_page(other), base, cand.yx, levels[-1].yx):
                levels.append(cand)
    return levels


def _looks_like_level(page: Any, base: Any, yx: tuple[int, int], prev: tuple[int, int]) -> bool:
    """True when ``page`` is a reduced copy of ``base`` smaller than the previous level."""
    if page.dtype != base.dtype or page.samplesperpixel != base.samplesperpixel:
        return False
    if bool(page.is_tiled) != bool(base.is_tiled):
        return False
    by, bx = _yx(base)
    y, x = yx
    if not (y < prev[0] and x < prev[1]):
        return False
    # aspect ratio equal up to rounding of the reduced size
    return abs(y * bx / x - by) <= bx / x + 1


def _yx(page: Any) -> tuple[int, int]:
    return int(page.shape[page.axes.index("Y")]), int(page.shape[page.axes.index("X")])


def _levels_from_pages(tif: tifffile.TiffFile, uri: str) -> list[_Level]:
    pages: list[Any] = []
    for page in tif.pages:
        if not hasattr(page, "aszarr"):
            continue
        pages.append(page)
        if getattr(page, "subifds", None):
            try:
                pages.extend(p for p in tifffile.TiffPages(page) if hasattr(p, "aszarr"))
            except Exception:
                pass
    if not pages:
        raise ImageReadError(f"{uri}: TIFF has no readable image pages; the file is corrupt")
    base = max(pages, key=lambda p: _yx(p)[0] * _yx(p)[1])
    levels = [_level_from(base)]
    rest = sorted((p for p in pages if p is not base), key=lambda p: -_yx(p)[0] * _yx(p)[1])
    for page in rest:
        if _looks_like_level(page, base, _yx(page), levels[-1].yx):
            levels.append(_level_from(page))
    return levels


def _metadata(
    tif: tifffile.TiffFile, page0: Any, n_channels: int, image: int = 0
) -> tuple[list[str] | None, float | None]:
    """Channel names and level-0 µm/px from OME-XML (its ``image``-th Image: the series
    read), the SVS description or XResolution."""
    names: list[str] | None = None
    mpp: float | None = None
    if tif.is_ome and tif.ome_metadata:
        names, mpp = _ome_metadata(tif.ome_metadata, image)
    if mpp is None and tif.is_svs:
        match = _SVS_MPP.search(str(page0.description or ""))
        if match:
            try:
                mpp = float(match.group(1))
            except ValueError:
                mpp = None
    if mpp is None:
        mpp = _resolution_mpp(page0, (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None)
    if names is not None and len(names) != n_channels:
        names = None
    return names, mpp


def _ome_metadata(xml: str, image: int = 0) -> tuple[list[str] | None, float | None]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    images = root.findall("{*}Image")
    pixels = images[image if image < len(images) else 0].find("{*}Pixels") if images else None
    if pixels is None:
        return None, None
    mpp = None
    size = pixels.get("PhysicalSizeX")
    if size is not None:
        factor = _UNIT_TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
        try:
            mpp = float(size) * factor if factor is not None else None
        except ValueError:
            mpp = None
    channels = pixels.findall("{*}Channel")
    names = [c.get("Name") or f"c{i}" for i, c in enumerate(channels)] if channels else None
    return names, mpp


def _resolution_mpp(page: Any, imagej_unit: Any = None) -> float | None:
    """µm per pixel from XResolution + ResolutionUnit (inch or cm; ImageJ / Fiji files say
    "none" and name the unit in their description), None when not stated."""
    try:
        unit = int(page.resolutionunit)
        xres = float(page.resolution[0])
    except Exception:
        return None
    if unit == 1 and isinstance(imagej_unit, str):
        um = _UNIT_TO_UM.get(imagej_unit.strip())
        return None if um is None or xres <= 0 else um / xres
    if unit not in (2, 3):
        return None
    return mpp_from_resolution(xres, 25400.0 if unit == 2 else 10000.0)
