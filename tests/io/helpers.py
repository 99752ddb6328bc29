"""Writers of small test images in the formats segpipe reads (tifffile, imagecodecs, Pillow).

Every writer returns the reference pixels of each pyramid level, channel-first ``(C, Y, X)``.
Level ``i`` is ``data[:, ::f, ::f]`` with ``f = 2**i`` (SVS: 4**i) — exact, so readers can be
compared pixel for pixel (lossless compression everywhere except the JPEG-compressed SVS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

SVS_DESC = (
    "Aperio Image Library v11.2.1\r\n{w}x{h} [0,0 {w}x{h}] (128x128) {what}|AppMag = 40|MPP = {mpp}"
)


def smooth_image(shape: tuple[int, ...], dtype: Any = np.uint8, seed: int = 0) -> np.ndarray:
    """Seeded image with structure (so JPEG stays close) of ``shape`` ``(C, Y, X)``."""
    rng = np.random.default_rng(seed)
    c, y, x = shape
    yy, xx = np.mgrid[0:y, 0:x]
    out = np.empty(shape, np.float64)
    for i in range(c):
        fy, fx = rng.uniform(0.005, 0.03, 2)
        out[i] = 0.5 + 0.35 * np.sin(yy * fy + i) * np.cos(xx * fx) + rng.normal(0, 0.01, (y, x))
    out = np.clip(out, 0, 1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    return (out * info.max).astype(dtype) if info else out.astype(dtype)


def levels_of(data: np.ndarray, n: int, factor: int = 2) -> list[np.ndarray]:
    """Reference pyramid ``[data[:, ::f**i, ::f**i] for i in range(n)]``."""
    return [np.ascontiguousarray(data[:, :: factor**i, :: factor**i]) for i in range(n)]


def _yxs(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 0, -1))


def write_svs(path: str | Path, data: np.ndarray, mpp: float = 0.25) -> list[np.ndarray]:
    """Aperio-like SVS: tiled JPEG baseline, stripped thumbnail, a 4x level, label, macro."""
    c, h, w = data.shape
    lv = levels_of(data, 2, factor=4)
    kw: dict[str, Any] = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            _yxs(lv[0]),
            tile=(128, 128),
            compression="jpeg",
            description=SVS_DESC.format(w=w, h=h, what="JPEG/RGB Q=95", mpp=mpp),
            **kw,
        )
        tw.write(
            _yxs(data[:, ::8, ::8]),
            description=SVS_DESC.format(w=w, h=h, what="-> thumbnail", mpp=mpp),
            **kw,
        )
        tw.write(
            _yxs(lv[1]),
            tile=(128, 128),
            compression="jpeg",
            description=SVS_DESC.format(w=w, h=h, what="JPEG/RGB Q=95", mpp=mpp),
            **kw,
        )
        tw.write(
            _yxs(data[:, :50, :60]),
            subfiletype=1,
            description="Aperio Image Library v11.2.1\r\nlabel 60x50",
            **kw,
        )
        tw.write(
            _yxs(data[:, :40, :100]),
            subfiletype=9,
            description="Aperio Image Library v11.2.1\r\nmacro 100x40",
            **kw,
        )
    return lv


def write_ome_tiff(
    path: str | Path,
    data: np.ndarray,
    n_levels: int = 3,
    mpp: float = 0.5,
    unit: str = "µm",
    channel_names: list[str] | None = None,
) -> list[np.ndarray]:
    """OME-TIFF, channels as separate planes (CYX), reduced levels in SubIFDs."""
    lv = levels_of(data, n_levels)
    meta: dict[str, Any] = {
        "axes": "CYX",
        "PhysicalSizeX": mpp,
        "PhysicalSizeXUnit": unit,
        "PhysicalSizeY": mpp,
        "PhysicalSizeYUnit": unit,
    }
    if channel_names:
        meta["Channel"] = {"Name": channel_names}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(
            lv[0],
            tile=(128, 128),
            subifds=n_levels - 1,
            metadata=meta,
            photometric="minisblack",
            compression="zlib",
        )
        for a in lv[1:]:
            tw.write(
                a, tile=(128, 128), subfiletype=1, photometric="minisblack", compression="zlib"
            )
    return lv


def write_generic_pyramid(
    path: str | Path,
    data: np.ndarray,
    n_levels: int = 3,
    resolution_cm_mpp: float | None = None,
    compression: str = "zlib",
) -> list[np.ndarray]:
    """BigTIFF pyramid as consecutive pages (NDPI-like layout: resolution in cm when given)."""
    lv = levels_of(data, n_levels)
    rgb = data.shape[0] == 3 and data.dtype == np.uint8
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, a in enumerate(lv):
            kw: dict[str, Any] = {}
            if resolution_cm_mpp is not None:
                px_per_cm = 1e4 / (resolution_cm_mpp * 2**i)
                kw = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
            tw.write(
                _yxs(a) if rgb else a,
                tile=(128, 128),
                compression=compression,
                photometric="rgb" if rgb else "minisblack",
                subfiletype=1 if i else 0,
                metadata=None,
                **kw,
            )
    return lv


def write_strip_tiff(
    path: str | Path, data: np.ndarray, dpi: float | None = None
) -> list[np.ndarray]:
    """Plain (non-tiled) strip TIFF, RGB contig when 3-channel uint8, planar otherwise."""
    rgb = data.shape[0] == 3 and data.dtype == np.uint8
    kw: dict[str, Any] = {}
    if dpi is not None:
        kw = {"resolution": (dpi, dpi), "resolutionunit": "INCH"}
    tifffile.imwrite(
        path,
        _yxs(data) if rgb else (data[0] if data.shape[0] == 1 else data),
        photometric="rgb" if rgb else "minisblack",
        rowsperstrip=37,
        **kw,
    )
    return [data]


def write_png(path: str | Path, data: np.ndarray, alpha: bool = False) -> list[np.ndarray]:
    """PNG via imagecodecs (8/16-bit, grey or RGB; optional alpha channel added)."""
    import imagecodecs

    arr = _yxs(data) if data.shape[0] > 1 else data[0]
    if alpha:
        a = np.full(arr.shape[:2] + (1,), np.iinfo(data.dtype).max, data.dtype)
        arr = np.concatenate([arr if arr.ndim == 3 else arr[..., None], a], axis=-1)
    Path(path).write_bytes(imagecodecs.png_encode(arr))
    return [data]


def write_jpeg(path: str | Path, data: np.ndarray, dpi: float | None = None) -> list[np.ndarray]:
    """JPEG via Pillow (grey or RGB uint8, quality 95)."""
    from PIL import Image

    arr = _yxs(data) if data.shape[0] > 1 else data[0]
    kw: dict[str, Any] = {"quality": 95}
    if dpi:
        kw["dpi"] = (dpi, dpi)
    Image.fromarray(arr).save(path, "JPEG", **kw)
    return [data]


def write_ome_zarr(
    path: str | Path,
    data: np.ndarray,
    n_levels: int = 2,
    mpp: float | None = 0.5,
    channel_names: list[str] | None = None,
) -> list[np.ndarray]:
    """OME-NGFF 0.5 multiscale image written with plain zarr-python (no segpipe code)."""
    import zarr

    lv = levels_of(data, n_levels)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    datasets = []
    for i, a in enumerate(lv):
        arr = root.create_array(str(i), shape=a.shape, dtype=a.dtype, chunks=(a.shape[0], 128, 128))
        arr[...] = a
        s = (mpp or 1.0) * 2**i
        datasets.append(
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1.0, s, s]}]}
        )
    axes: list[dict[str, Any]] = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    if mpp is not None:
        for ax in axes[1:]:
            ax["unit"] = "micrometer"
    ome: dict[str, Any] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    if channel_names:
        ome["omero"] = {"channels": [{"label": n} for n in channel_names]}
    root.attrs["ome"] = ome
    return lv
