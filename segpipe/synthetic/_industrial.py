"""Industrial inspection images: textured grey surfaces with scratches, pits and stains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk, line

from segpipe.errors import ConfigError
from segpipe.synthetic._noise import value_noise
from segpipe.synthetic._samples import as_rng

DEFECT_CLASSES = ["background", "scratch", "pit", "stain"]
SURFACES = ("brushed", "wafer", "matte")
_SCRATCH, _PIT, _STAIN = 1, 2, 3


def _surface(rng: np.random.Generator, shape: tuple[int, int], kind: str) -> np.ndarray:
    """Defect-free surface reflectance in ~[0, 1] (texture, shading, vignetting)."""
    Y, X = shape
    seed = int(rng.integers(2**62))
    white = rng.standard_normal(shape).astype(np.float32)
    if kind == "brushed":
        sigma = (0.6, rng.uniform(8, 30))
        if rng.random() < 0.5:
            sigma = sigma[::-1]
        texture = ndi.gaussian_filter(white, sigma)
        texture /= texture.std() + 1e-6
        amp = rng.uniform(0.04, 0.1)
    elif kind == "wafer":
        texture = ndi.gaussian_filter(white, 1.2)
        texture /= texture.std() + 1e-6
        amp = rng.uniform(0.01, 0.03)
    else:  # matte / sand-blasted
        texture = ndi.gaussian_filter(white, rng.uniform(1.0, 2.5))
        texture /= texture.std() + 1e-6
        amp = rng.uniform(0.03, 0.07)
    base = rng.uniform(0.4, 0.65)
    shading = 0.08 * value_noise(seed, 0, 0, Y, X, max(Y, X) * rng.uniform(0.5, 1.2))
    yy, xx = np.mgrid[0:Y, 0:X].astype(np.float32)
    cy, cx = Y * rng.uniform(0.3, 0.7), X * rng.uniform(0.3, 0.7)
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.25 * (Y * Y + X * X))
    vignette = 1.0 - rng.uniform(0.1, 0.35) * r2
    surface = base * (1.0 + shading + amp * texture) * vignette
    if kind == "wafer":  # die grid: thin darker (or brighter) streets
        period = rng.uniform(60, 200)
        width = rng.uniform(1.5, 4.0)
        phase_y, phase_x = rng.uniform(0, period, 2)
        street = (np.abs((yy - phase_y) % period - period / 2) > period / 2 - width) | (
            np.abs((xx - phase_x) % period - period / 2) > period / 2 - width
        )
        surface = surface * np.where(street, rng.choice([0.8, 1.15]), 1.0)
    return surface.astype(np.float32)


def _blob(rng: np.random.Generator, shape: tuple[int, int], radius: float) -> np.ndarray:
    """A soft irregular blob (Fourier-perturbed ellipse) in [0, 1]."""
    Y, X = shape
    cy, cx = rng.uniform(0, Y), rng.uniform(0, X)
    aspect = rng.uniform(0.5, 1.0)
    theta = rng.uniform(0, np.pi)
    r = int(np.ceil(radius * 1.6 + 10))
    y0, y1, x0, x1 = (
        max(int(cy) - r, 0),
        min(int(cy) + r, Y),
        max(int(cx) - r, 0),
        min(int(cx) + r, X),
    )
    out = np.zeros(shape, np.float32)
    if y0 >= y1 or x0 >= x1:
        return out
    dy = np.arange(y0, y1)[:, None] - cy
    dx = np.arange(x0, x1)[None, :] - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / (radius / np.sqrt(aspect))
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / (radius * np.sqrt(aspect))
    phi = np.arctan2(v, u)
    perturb = 1.0 + sum(
        rng.uniform(0, 0.25 / k) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    rho = np.sqrt(u * u + v * v) / perturb
    edge = rng.uniform(0.1, 0.35)
    out[y0:y1, x0:x1] = np.clip((1.0 - rho) / edge, 0.0, 1.0)
    return out


def _scratch(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a thin, long, gently curved polyline."""
    Y, X = shape
    mask = np.zeros(shape, bool)
    y, x = rng.uniform(0, Y), rng.uniform(0, X)
    heading = rng.uniform(0, 2 * np.pi)
    curvature = rng.normal(0, 0.01)
    length = rng.uniform(0.2, 0.9) * np.hypot(Y, X)
    step = 4.0
    for _ in range(int(length / step)):
        heading += curvature + rng.normal(0, 0.03)
        ny, nx = y + step * np.sin(heading), x + step * np.cos(heading)
        rr, cc = line(int(round(y)), int(round(x)), int(round(ny)), int(round(nx)))
        ok = (rr >= 0) & (rr < Y) & (cc >= 0) & (cc < X)
        mask[rr[ok], cc[ok]] = True
        y, x = ny, nx
    width = rng.choice([1, 1, 2, 3])
    if width > 1:
        mask = ndi.binary_dilation(mask, iterations=width - 1)
    return mask


def defects_sample(
    shape: tuple[int, int] = (256, 256),
    rng: np.random.Generator | int | None = None,
    *,
    dtype: type | np.dtype = np.uint8,
    surface: str | None = None,
    scratches: float = 1.0,
    pits: float = 3.0,
    stains: float = 0.7,
    clean_probability: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic industrial inspection image with its defect class map.

    Parameters
    ----------
    shape : (Y, X)
        Image size.
    rng : Generator, int or None
        Random source.
    dtype : uint8 or uint16
        Output image type (uint16 uses the full 16-bit range).
    surface : {"brushed", "wafer", "matte"} or None
        Surface texture; None picks one at random.
    scratches, pits, stains : float
        Expected number of each defect on a 256 × 256 image (scaled with the image's side).
    clean_probability : float
        Probability that the image has no defect at all.

    Returns
    -------
    image : (1, Y, X) uint8 or uint16 ndarray
    class_map : (Y, X) uint8 ndarray
        Indices into ``DEFECT_CLASSES`` (0 background, 1 scratch, 2 pit, 3 stain).

    Examples
    --------
    >>> image, classes = defects_sample((64, 64), rng=0)
    >>> image.shape, classes.dtype
    ((1, 64, 64), dtype('uint8'))
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ConfigError(f"dtype={dtype}: use numpy.uint8 or numpy.uint16")
    if surface is not None and surface not in SURFACES:
        raise ConfigError(f"surface={surface!r}: use one of {', '.join(SURFACES)} or None")
    rng = as_rng(rng)
    Y, X = (int(v) for v in shape)
    kind = surface or SURFACES[int(rng.integers(len(SURFACES)))]
    image = _surface(rng, (Y, X), kind)
    classes = np.zeros((Y, X), np.uint8)
    scale = np.sqrt(Y * X) / 256.0
    clean = rng.random() < clean_probability
    for _ in range(0 if clean else rng.poisson(stains * scale)):
        blob = _blob(rng, (Y, X), rng.uniform(0.05, 0.2) * min(Y, X) + 6)
        contrast = rng.choice([-1, 1]) * rng.uniform(0.05, 0.15)
        image *= 1.0 + contrast * blob
        classes[blob > 0.5] = _STAIN
    for _ in range(0 if clean else rng.poisson(scratches * scale)):
        mask = _scratch(rng, (Y, X))
        soft = ndi.gaussian_filter(mask.astype(np.float32), 0.6)
        soft /= max(float(soft.max()), 1e-6)
        contrast = rng.choice([-1, 1], p=[0.6, 0.4]) * rng.uniform(0.25, 0.6)
        fade = 0.6 + 0.4 * value_noise(int(rng.integers(2**62)), 0, 0, Y, X, 80.0)
        image *= 1.0 + contrast * fade * soft
        classes[mask] = _SCRATCH
    for _ in range(0 if clean else rng.poisson(pits * scale)):
        r = rng.uniform(2.0, 7.0)
        cy, cx = rng.uniform(0, Y), rng.uniform(0, X)
        yy, xx = disk((cy, cx), r + (2.0 if rng.random() < 0.4 else 0.0), shape=(Y, X))
        dist = np.hypot(yy - cy, xx - cx)
        depth = rng.uniform(0.3, 0.7)
        factor = np.where(dist <= r, 1.0 - depth * (1.0 - 0.4 * (dist / r) ** 2), 1.25)
        image[yy, xx] *= factor.astype(np.float32)
        classes[yy, xx] = _PIT
    image = ndi.gaussian_filter(image, rng.uniform(0.5, 1.0))
    full = float(np.iinfo(dtype).max)
    counts = np.clip(image, 0, None) * full * 0.85
    gain = rng.uniform(3.0, 20.0) * (full / 255.0) ** -1  # photons per grey level
    noisy = counts + np.sqrt(counts / gain) * rng.standard_normal(counts.shape, np.float32)
    noisy += rng.uniform(0.3, 1.5) * (full / 255.0) * rng.standard_normal(counts.shape, np.float32)
    return np.clip(np.rint(noisy), 0, full).astype(dtype)[None], classes


@dataclass(frozen=True)
class IndustrialInfo:
    """What :func:`write_industrial` wrote: image, class map beside it, size, classes present."""

    path: Path
    labels_path: Path
    shape: tuple[int, int]
    classes_present: list[str]
    seed: int


def write_industrial(
    path: str | Path,
    shape: tuple[int, int] = (1500, 2000),
    seed: int = 0,
    fmt: str = "png",
    labels_path: str | Path | None = None,
    tile: int = 512,
) -> IndustrialInfo:
    """Write a 16-bit grey inspection image (PNG, or tiled TIFF) and its class map.

    The image is generated in memory (fine up to a few ten-thousand pixels a side); the
    class map (uint8, indices into ``DEFECT_CLASSES``) is a tiled TIFF at ``labels_path``,
    by default ``<stem>.labels.tif`` beside the image.
    """
    import tifffile

    from segpipe.synthetic._slide import labels_path_for

    if fmt not in ("png", "tif"):
        raise ConfigError(f"fmt={fmt!r}: use 'png' or 'tif'")
    path = Path(path)
    labels_path = Path(labels_path) if labels_path is not None else labels_path_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    image, classes = defects_sample(shape, seed, dtype=np.uint16)
    if fmt == "png":
        from imagecodecs import png_encode

        path.write_bytes(png_encode(image[0]))
    else:
        tifffile.imwrite(
            path,
            image[0],
            bigtiff=True,
            tile=(tile, tile),
            compression="zlib",
            photometric="minisblack",
            metadata=None,
        )
    tifffile.imwrite(
        labels_path,
        classes,
        tile=(tile, tile),
        compression="zlib",
        metadata=None,
        description="segpipe synthetic defect classes: " + ",".join(DEFECT_CLASSES),
    )
    present = [DEFECT_CLASSES[i] for i in np.unique(classes)]
    return IndustrialInfo(path, labels_path, (int(shape[0]), int(shape[1])), present, seed)
