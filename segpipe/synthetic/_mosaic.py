"""Mosaic slides: one rendered patch repeated, written tile by tile at any size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["mosaic_patches", "mosaic_variant_at", "write_mosaic"]


def mosaic_patches(patch: int = 2048, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """The 8 flips / transposes of one rendered fluorescence patch, and blank glass.

    Parameters
    ----------
    patch : int
        Side of the rendered patch in px (:class:`segpipe.synthetic.SyntheticSlide`).
    seed : int

    Returns
    -------
    (list of 8 (patch, patch) ndarrays, (patch, patch) ndarray)
        The variants (uint16) and a glass patch at the patch's 1st-percentile level.
    """
    from segpipe.synthetic._scene import SyntheticSlide

    base = SyntheticSlide((patch, patch), "fluorescence", seed, 1.0).render(0, 0, patch, patch)[0][
        0
    ]
    variants = [base, base[::-1], base[:, ::-1], base[::-1, ::-1]]
    variants += [np.ascontiguousarray(v.T) for v in variants]
    return variants, np.full((patch, patch), np.percentile(base, 1), base.dtype)


def mosaic_variant_at(py: int, px: int) -> int:
    """Which of the 8 variants sits at patch row ``py``, column ``px`` (a fixed pattern)."""
    return (py * 5 + px * 3 + (py * px) % 7) % 8


def write_mosaic(
    path: str | Path,
    size: int,
    *,
    patch: int = 2048,
    tile: int = 256,
    seed: int = 0,
    sparse: bool = False,
    mpp: float = 0.5,
    description: str | None = None,
) -> Path:
    """Write a ``size``² tiled BigTIFF mosaic of one rendered patch, tile by tile.

    Rendering a 32k² slide nucleus by nucleus (:func:`segpipe.synthetic.write_slide`) takes
    ~15 min on one core; the mosaic takes about as long as compressing it, and every size
    has the same content statistics. Memory stays at a few patches whatever the size.

    Parameters
    ----------
    path : str or Path
    size : int
        Side in px, a multiple of ``tile``.
    patch, tile : int
        Rendered patch side (a multiple of ``tile``) and TIFF tile side.
    seed : int
    sparse : bool
        Tissue only in patches with even row and column index (25 % of the slide), blank
        glass elsewhere; otherwise fully tissue.
    mpp : float
        Pixel size written in the resolution tags (µm/px).
    description : str, optional
        The TIFF ImageDescription.

    Returns
    -------
    Path
    """
    import tifffile

    if patch % tile or size % tile:
        raise ValueError(
            f"mosaic: size {size} and patch {patch} must be multiples of the tile {tile}"
        )
    variants, glass = mosaic_patches(patch, seed)

    def tiles() -> Iterator[np.ndarray]:
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                py, px = y // patch, x // patch
                v = glass if sparse and (py % 2 or px % 2) else variants[mosaic_variant_at(py, px)]
                yield v[y % patch : y % patch + tile, x % patch : x % patch + tile]

    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            tiles(),
            shape=(size, size),
            dtype=glass.dtype,
            tile=(tile, tile),
            compression="zlib",
            photometric="minisblack",
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
            metadata=None,
            description=description,
        )
    return path
