"""Zarr reader: OME-Zarr multiscale images (NGFF 0.4 / 0.5, Zarr v2 / v3) and plain arrays.

* OME-Zarr: levels are the ``multiscales[0].datasets`` paths; axes named ``c``, ``y``, ``x``
  (other axes, e.g. ``t``/``z``, must have size 1); µm/px from the first dataset's ``scale``
  transformation for ``x`` and the axis ``unit``; channel names from ``omero.channels``.
  A ``segpipe`` attribute block (written by :func:`segpipe.ingest.ingest_image`) wins.
* A plain 2-D array is ``(Y, X)``; a 3-D array is ``(Y, X, S)`` when the last axis has 3 or
  4 entries and the first more than 4, else ``(C, Y, X)``. Leading axes of size 1 are
  ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segpipe.errors import ImageReadError, UnsupportedImageError
from segpipe.io._fsutil import zarr_store
from segpipe.io._source import ImageSource

__all__ = ["ZarrSource"]

_UNIT_TO_UM = {
    "angstrom": 1e-4,
    "picometer": 1e-6,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "micron": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}


class ZarrSource(ImageSource):
    """An OME-Zarr multiscale image or a plain zarr array (see module docstring)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        import zarr

        try:
            node = zarr.open(store=zarr_store(uri, storage_options, read_only=True), mode="r")
        except Exception as exc:
            raise ImageReadError(
                f"{uri}: not a readable zarr hierarchy ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:160]})"
            ) from exc
        attrs = dict(node.attrs)
        meta: dict[str, Any] = {}
        if isinstance(node, zarr.Array):
            self._arrays = [node]
            self._axes = _guess_axes(node.shape)
        else:
            ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
            if not ms:
                raise UnsupportedImageError(
                    f"{uri}: zarr group has no OME-NGFF 'multiscales' metadata; "
                    "point at an OME-Zarr image or at a zarr array"
                )
            meta = _ome_meta(ms[0], (attrs.get("ome") or attrs).get("omero"))
            try:
                self._arrays = [node[path] for path in meta["paths"]]
            except KeyError as exc:
                raise ImageReadError(f"{uri}: multiscales names a missing array {exc}") from exc
            self._axes = meta["axes"] or _guess_axes(self._arrays[0].shape)
        self._check_axes(uri)
        shapes = [self._yx(a.shape) for a in self._arrays]
        c = self._axes.index("c") if "c" in self._axes else None
        n_channels = int(self._arrays[0].shape[c]) if c is not None else 1
        own = attrs.get("segpipe") or {}
        mpp = own.get("mpp", meta.get("mpp"))
        names = own.get("channel_names") or meta.get("names")
        rgb = None if not names else [str(n).lower()[:1] for n in names] == ["r", "g", "b"]
        super().__init__(
            uri,
            shapes,
            n_channels,
            self._arrays[0].dtype,
            mpp,
            channel_names=names,
            modality=own.get("modality"),
            storage_options=storage_options,
            rgb=rgb,
        )

    def _yx(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return int(shape[self._axes.index("y")]), int(shape[self._axes.index("x")])

    def _check_axes(self, uri: str) -> None:
        if "y" not in self._axes or "x" not in self._axes:
            raise UnsupportedImageError(f"{uri}: zarr image has axes {self._axes}, no y and x")
        shape = self._arrays[0].shape
        extra = [
            f"{a}={n}" for a, n in zip(self._axes, shape, strict=True) if a not in "cyx" and n > 1
        ]
        if extra:
            raise UnsupportedImageError(
                f"{uri}: zarr image has axes {self._axes} with {', '.join(extra)}; segpipe "
                "reads 2-D images with one channel axis — export a single Z plane / time point"
            )

    def _read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        index: list[Any] = []
        kept = ""
        for ax in self._axes:
            if ax == "y":
                index.append(slice(y0, y1))
            elif ax == "x":
                index.append(slice(x0, x1))
            elif ax == "c":
                index.append(slice(None))
            else:
                index.append(0)
                continue
            kept += ax
        data = np.asarray(self._arrays[level][tuple(index)])
        if "c" not in kept:
            return data[np.newaxis] if kept == "yx" else data.T[np.newaxis]
        return np.moveaxis(data, [kept.index("c"), kept.index("y"), kept.index("x")], [0, 1, 2])


def _guess_axes(shape: tuple[int, ...]) -> str:
    lead = max(len(shape) - 3, 0)
    tail = shape[lead:]
    prefix = "t" * lead  # leading extra axes: must have size 1
    if len(tail) == 2:
        return prefix + "yx"
    if len(tail) == 3 and tail[-1] in (3, 4) and tail[0] > 4:
        return prefix + "yxc"
    return prefix + "cyx"


def _ome_meta(ms: dict[str, Any], omero: dict[str, Any] | None) -> dict[str, Any]:
    axes_meta = ms.get("axes")
    if not axes_meta:  # NGFF < 0.3 has no axes: guessed from the array shape later
        return {
            "paths": [d["path"] for d in ms["datasets"]],
            "axes": None,
            "mpp": None,
            "names": None,
        }
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
    axes = "".join(n[0].lower() if n.lower() in ("c", "y", "x") else "t" for n in names)
    mpp = None
    if "x" in axes:
        xi = axes.index("x")
        unit = axes_meta[xi].get("unit") if isinstance(axes_meta[xi], dict) else None
        for tr in ms["datasets"][0].get("coordinateTransformations", []):
            if tr.get("type") == "scale" and len(tr.get("scale", [])) == len(axes):
                factor = _UNIT_TO_UM.get(str(unit).lower()) if unit else None
                if factor is not None:
                    mpp = float(tr["scale"][xi]) * factor
    channel_names = None
    if omero and omero.get("channels"):
        channel_names = [str(c.get("label", f"c{i}")) for i, c in enumerate(omero["channels"])]
    return {
        "paths": [d["path"] for d in ms["datasets"]],
        "axes": axes,
        "mpp": mpp,
        "names": channel_names,
    }
