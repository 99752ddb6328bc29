"""In-memory training samples: nuclei images with instance labels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

from segpipe.errors import ConfigError
from segpipe.synthetic._noise import fractal_noise
from segpipe.synthetic._nuclei import drop_occluded, sample_nuclei
from segpipe.synthetic._render import Scene, gather, random_style, render_region, with_lumens

MODALITIES = ("fluorescence", "he")


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed or None."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def check_diameter(diameter_px: tuple[float, float]) -> tuple[float, float]:
    """Validate a ``(min, max)`` diameter range in pixels."""
    lo, hi = (float(v) for v in diameter_px)
    if not 2.0 <= lo <= hi:
        raise ConfigError(f"diameter_px={diameter_px!r}: give (min, max) with 2 <= min <= max")
    return lo, hi


def mean_area(diameter_px: tuple[float, float]) -> float:
    """Mean nucleus area (px²) for log-uniform diameters in ``diameter_px``."""
    lo, hi = diameter_px
    mean_d2 = (hi * hi - lo * lo) / (2.0 * np.log(hi / lo)) if hi > lo else lo * lo
    return float(np.pi / 4.0 * mean_d2)


def tissue_function(seed: int, spacing: float, threshold: float, edge: float = 0.06):
    """A soft tissue map function ``(y0, x0, y1, x1) -> (h, w) float32 in [0, 1]``."""

    def tissue(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        field = fractal_noise(seed, y0, x0, y1, x1, spacing, 2)
        return np.clip((field - threshold) / edge + 0.5, 0.0, 1.0).astype(np.float32)

    return tissue


def _full_tissue(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    return np.ones((y1 - y0, x1 - x0), np.float32)


def nuclei_sample(
    shape: tuple[int, int] = (256, 256),
    rng: np.random.Generator | int | None = None,
    modality: str = "fluorescence",
    diameter_px: tuple[float, float] = (10, 40),
    density: float | tuple[float, float] = (0.15, 0.45),
    *,
    cluster_fraction: float = 0.6,
    overlap: float = 0.82,
    dim_fraction: float = 0.15,
    tissue_edge_probability: float = 0.25,
    jpeg_probability: float | None = None,
    **style: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic nuclei image with its instance labels.

    Parameters
    ----------
    shape : (Y, X)
        Image size in pixels.
    rng : Generator, int or None
        Random source (an int seeds ``numpy.random.default_rng``).
    modality : {"fluorescence", "he"}
        Grey fluorescence (bright nuclei on dark) or RGB H&E brightfield.
    diameter_px : (min, max)
        Range of nucleus diameters in pixels (log-uniform).
    density : float or (low, high)
        Fraction of the area covered by nuclei (a range is sampled uniformly).
    cluster_fraction : float
        Probability that a nucleus is attached to an existing one (touching clusters).
    overlap : float
        Minimum centre distance as a fraction of the sum of radii (< 1 lets nuclei overlap).
    dim_fraction : float
        Fraction of dim nuclei (15–45 % of the normal intensity).
    tissue_edge_probability : float
        Probability that the sample shows a tissue edge (glass / empty area without nuclei).
    jpeg_probability : float
        Probability that the image goes through JPEG compression (quality 60–95), as most
        scanned H&E slides do; None means 0.3 for H&E and 0.1 for fluorescence.
    **style
        Fixed values for any :class:`Style` knob (e.g. ``blur_sigma=1.0``).

    Returns
    -------
    image : (C, Y, X) uint8 ndarray
        C = 1 (fluorescence) or 3 (H&E, RGB).
    labels : (Y, X) uint32 ndarray
        Instance labels 1..n, 0 background; a later nucleus occludes an earlier one.

    Examples
    --------
    >>> image, labels = nuclei_sample((64, 64), rng=0)
    >>> image.shape, image.dtype, labels.dtype
    ((1, 64, 64), dtype('uint8'), dtype('uint32'))
    """
    if modality not in MODALITIES:
        raise ConfigError(f"modality={modality!r}: use one of {', '.join(MODALITIES)}")
    rng = as_rng(rng)
    lo, hi = check_diameter(diameter_px)
    Y, X = (int(v) for v in shape)
    if isinstance(density, (tuple, list)):
        density = float(rng.uniform(*density))
    margin = hi * 0.6
    box = (-margin, -margin, Y + margin, X + margin)
    count = int(rng.poisson(density * (Y + 2 * margin) * (X + 2 * margin) / mean_area((lo, hi))))
    nuclei = sample_nuclei(rng, box, count, (lo, hi), cluster_fraction, overlap, dim_fraction)
    style_ = random_style(rng, modality, **style)
    scene_seed = int(rng.integers(2**62))
    tissue = _full_tissue
    if rng.random() < tissue_edge_probability:
        tissue = tissue_function(
            int(rng.integers(2**62)),
            spacing=max(Y, X) * rng.uniform(0.6, 1.5),
            threshold=rng.uniform(-0.4, 0.0),
        )
    tissue = with_lumens(tissue, scene_seed, style_)
    if len(nuclei) and tissue is not _full_tissue:
        y0, x0 = int(np.floor(box[0])), int(np.floor(box[1]))
        tmap = tissue(y0, x0, int(np.ceil(box[2])) + 1, int(np.ceil(box[3])) + 1)
        at = tmap[(nuclei.cy - y0).astype(int), (nuclei.cx - x0).astype(int)]
        nuclei = nuclei.take(np.flatnonzero(at > 0.5))
    nuclei = drop_occluded(nuclei, nuclei)
    nuclei.ids = np.arange(1, len(nuclei) + 1, dtype=np.uint32)
    scene = Scene(style=style_, seed=scene_seed, nuclei_in=lambda *_: nuclei, tissue=tissue)
    normals = rng.standard_normal((3 if modality == "he" else 1, Y, X), np.float32)
    image, index, _ = render_region(scene, 0, 0, Y, X, normals)
    if jpeg_probability is None:
        jpeg_probability = 0.3 if modality == "he" else 0.1
    if rng.random() < jpeg_probability:
        image = _jpeg_roundtrip(image, int(rng.integers(60, 96)))
    labels = gather(nuclei.ids.astype(np.uint32), index)
    labels = _drop_fragments(labels)
    labels = relabel_sequential(labels)[0].astype(np.uint32)
    return image, labels


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Compress and decompress ``(C, Y, X)`` uint8 with JPEG (block artefacts, colour bleeding)."""
    from imagecodecs import jpeg8_decode, jpeg8_encode

    data = np.ascontiguousarray(np.moveaxis(image, 0, -1) if image.shape[0] == 3 else image[0])
    decoded = jpeg8_decode(jpeg8_encode(data, level=quality))
    return np.moveaxis(decoded, -1, 0) if decoded.ndim == 3 else decoded[None]


def _drop_fragments(labels: np.ndarray, min_size: int = 4) -> np.ndarray:
    """Keep only the largest connected piece of each label, and drop specks."""
    out = labels.copy()
    for lab, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == lab
        comp, n = ndi.label(mask)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[sl][mask & (comp != int(np.argmax(sizes)))] = 0
        if mask.sum() < min_size:
            out[sl][mask] = 0
    return out
