"""Write synthetic whole slides as SVS-like pyramidal BigTIFFs, tile by tile."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from segpipe.errors import ConfigError
from segpipe.synthetic._scene import SyntheticSlide

MIN_LEVEL_SIZE = 1024  # stop adding pyramid levels once the long side is at most this


@dataclass(frozen=True)
class SlideInfo:
    """What :func:`write_slide` wrote.

    Attributes
    ----------
    path, labels_path : Path
        The slide (SVS-like BigTIFF) and its ground-truth instance labels (tiled uint32 TIFF).
    shape : (Y, X)
        Level-0 size.
    kind : str
        ``"he"`` or ``"fluorescence"``.
    mpp : float
        µm per level-0 pixel.
    levels : list of (Y, X)
        Pyramid level sizes, level 0 first.
    n_nuclei : int
        Number of distinct nuclei in the labels.
    tissue_fraction : float
        Fraction of level-0 pixels inside tissue (soft map > 0.5, from a coarse estimate).
    seed : int
    """

    path: Path
    labels_path: Path
    shape: tuple[int, int]
    kind: str
    mpp: float
    levels: list[tuple[int, int]]
    n_nuclei: int
    tissue_fraction: float
    seed: int


def labels_path_for(path: str | Path) -> Path:
    """Default ground-truth path beside an image: ``x.svs`` → ``x.labels.tif``."""
    path = Path(path)
    return path.with_name(path.name.split(".")[0] + ".labels.tif")


def level_shapes(shape: tuple[int, int], min_size: int = MIN_LEVEL_SIZE) -> list[tuple[int, int]]:
    """Factor-2 pyramid sizes from ``shape`` until the long side is at most ``min_size``."""
    shapes = [tuple(int(v) for v in shape)]
    while max(shapes[-1]) > min_size:
        y, x = shapes[-1]
        shapes.append(((y + 1) // 2, (x + 1) // 2))
    return shapes  # type: ignore[return-value]


def _aperio_description(
    shape: tuple[int, int], level: tuple[int, int], tile: int, mpp: float, kind: str, seed: int
) -> str:
    Y, X = shape
    y, x = level
    mag = round(10.0 / mpp, 1)
    return (
        f"Aperio Image Library v12.0.15 \r\n{X}x{Y} [0,0 {X}x{Y}] ({tile}x{tile}) -> {x}x{y} "
        f"|AppMag = {mag:g}|MPP = {mpp:g}|Filename = segpipe-synthetic-{kind}-{seed}"
        f"|Title = segpipe synthetic {kind} slide|ScannerType = synthetic"
    )


def _tiles(array: np.ndarray, tile: int, channels_last: bool) -> Iterator[np.ndarray]:
    Yp, Xp = array.shape[-2:]
    for y in range(0, Yp, tile):
        for x in range(0, Xp, tile):
            block = np.asarray(array[..., y : y + tile, x : x + tile])
            yield np.moveaxis(block, 0, -1) if channels_last else block[0]


def _downsample(src: np.ndarray, dst: np.ndarray, tile: int) -> None:
    """Fill ``dst`` with the 2×2 mean of ``src``, one tile at a time."""
    C, Yd, Xd = dst.shape
    for y in range(0, Yd, tile):
        for x in range(0, Xd, tile):
            block = np.asarray(
                src[:, 2 * y : 2 * y + 2 * tile, 2 * x : 2 * x + 2 * tile], np.float32
            )
            h, w = (block.shape[1] + 1) // 2 * 2, (block.shape[2] + 1) // 2 * 2
            block = np.pad(
                block, ((0, 0), (0, h - block.shape[1]), (0, w - block.shape[2])), mode="edge"
            )
            mean = block.reshape(C, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
            dst[:, y : y + mean.shape[1], x : x + mean.shape[2]] = np.rint(mean).astype(dst.dtype)


def write_slide(
    path: str | Path,
    shape: tuple[int, int] = (3000, 3000),
    kind: str = "he",
    seed: int = 0,
    tissue_fraction: float = 0.4,
    mpp: float = 0.5,
    tile: int = 256,
    compression: str | None = "zlib",
    labels_path: str | Path | None = None,
    diameter_px: tuple[float, float] = (10, 32),
    density: float = 0.3,
) -> SlideInfo:
    """Write a synthetic whole slide and its ground-truth labels, tile by tile.

    The slide is an SVS-like pyramidal BigTIFF: page 0 is level 0 (tiled, with an Aperio
    ImageDescription holding ``|MPP = <mpp>``), page 1 a small stripped thumbnail, pages
    2… the factor-2 reduced levels (tiled), as Aperio writes them — so
    ``tifffile.TiffFile(path).series[0].levels`` is the pyramid. Memory stays bounded by a
    few tiles whatever the size: level 0 is rendered tile by tile from a deterministic,
    tile-independent description (:class:`SyntheticSlide`) into a temporary compressed
    Zarr store beside the output, lower levels are 2×2 means of the level above read back
    tile-wise, and the temporary store is removed at the end.

    Parameters
    ----------
    path : str or Path
        Output file (``.svs`` or ``.tif``).
    shape : (Y, X)
        Level-0 size in pixels (tested up to 32k × 32k).
    kind : {"he", "fluorescence"}
        8-bit RGB H&E brightfield on white glass, or 16-bit grey fluorescence on black.
    seed : int
        Everything follows from it.
    tissue_fraction : float
        Approximate fraction of the slide covered by tissue islands.
    mpp : float
        µm per level-0 pixel, written into the description and the resolution tags.
    tile : int
        TIFF tile size (multiple of 16).
    compression : str or None
        TIFF compression (``"zlib"``, ``"zstd"``, ``"jpeg"`` for H&E, or None).
    labels_path : str, Path or None
        Where the instance labels go; default ``<stem>.labels.tif`` beside ``path``.
    diameter_px, density
        Nucleus diameters (level-0 px) and fraction of tissue covered by nuclei.

    Returns
    -------
    SlideInfo
    """
    if tile % 16 or tile <= 0:
        raise ConfigError(f"tile={tile}: give a positive multiple of 16")
    if mpp <= 0:
        raise ConfigError(f"mpp={mpp}: give a positive pixel size in µm")
    slide = SyntheticSlide(shape, kind, seed, tissue_fraction, diameter_px, density)
    Y, X = slide.shape
    path = Path(path)
    labels_path = Path(labels_path) if labels_path is not None else labels_path_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if kind == "he" else 1
    shapes = level_shapes((Y, X))
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=path.parent))
    ids: set[int] = set()
    levels: list[np.ndarray] = []
    try:
        # disk-backed scratch levels (memory maps): the OS pages them, nothing holds a level
        levels = [
            np.lib.format.open_memmap(
                tmp / f"{i}.npy",
                mode="w+",
                dtype=slide.dtype,
                shape=(channels, -(-y // tile) * tile, -(-x // tile) * tile),
            )
            for i, (y, x) in enumerate(shapes)
        ]

        def label_tiles() -> Iterator[np.ndarray]:
            for y in range(0, Y, tile):
                for x in range(0, X, tile):
                    image, labels = slide.render(y, x, y + tile, x + tile)
                    levels[0][:, y : y + tile, x : x + tile] = image
                    ids.update(np.unique(labels).tolist())
                    yield labels

        with tifffile.TiffWriter(labels_path, bigtiff=True) as tif:
            tif.write(
                label_tiles(),
                shape=(Y, X),
                dtype=np.uint32,
                tile=(tile, tile),
                compression=compression if compression != "jpeg" else "zlib",
                compressionargs={"level": 1} if compression in ("zlib", "zstd", "jpeg") else None,
                description=f"segpipe synthetic instance labels of {path.name}",
                metadata=None,
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
            )
        for i in range(1, len(levels)):
            _downsample(levels[i - 1], levels[i], tile)

        rgb = channels == 3
        common = {
            "photometric": "rgb" if rgb else "minisblack",
            "compression": compression,
            "compressionargs": {"level": 1} if compression in ("zlib", "zstd") else None,
            "dtype": slide.dtype,
            "metadata": None,
        }
        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for i, (y, x) in enumerate(shapes):
                desc = _aperio_description((Y, X), (y, x), tile, mpp, kind, seed)
                scale = 2**i
                tif.write(
                    _tiles(levels[i], tile, rgb),
                    shape=(y, x, 3) if rgb else (y, x),
                    tile=(tile, tile),
                    description=desc,
                    subfiletype=0,
                    resolutionunit="CENTIMETER",
                    resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)),
                    **common,
                )
                if i == 0:  # Aperio layout: a small stripped thumbnail is page 1
                    thumb = np.asarray(levels[-1][:, : shapes[-1][0], : shapes[-1][1]])
                    step = max(1, int(np.ceil(max(thumb.shape[1:]) / 768)))
                    thumb = thumb[:, ::step, ::step]
                    tif.write(
                        np.moveaxis(thumb, 0, -1) if rgb else thumb[0],
                        description=desc.split("|")[0] + "|thumbnail",
                        subfiletype=0,
                        **{k: v for k, v in common.items() if k != "dtype"},
                    )
    finally:
        levels.clear()  # release the memory maps before removing their files
        shutil.rmtree(tmp, ignore_errors=True)
    ids.discard(0)
    coarse = slide.tissue(0, 0, -(-Y // 16), -(-X // 16), 16.0)
    return SlideInfo(
        path=path,
        labels_path=labels_path,
        shape=(Y, X),
        kind=kind,
        mpp=float(mpp),
        levels=list(shapes),
        n_nuclei=len(ids),
        tissue_fraction=float((coarse > 0.5).mean()),
        seed=seed,
    )
