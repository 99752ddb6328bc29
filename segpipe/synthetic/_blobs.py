"""Plain-style nuclei: flat or weakly textured blobs with varied edges, contrast and noise.

The realistic renderer (:mod:`segpipe.synthetic._render`) gives every image one optical
style (blur 0.7–1.6 px, chromatin texture, Poisson noise). A model trained only on it learns
that style — e.g. it misses perfectly flat, sharp-edged discs. :func:`blob_sample` draws the
same nucleus geometry with a deliberately simple, widely varied appearance: flat or domed or
weakly textured fill, sharp or soft edges, low to saturated contrast, any background level,
Gaussian noise of any strength and a random gamma, so that "a bright compact blob in the
nuclear channel" is what the model learns.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

from segpipe.synthetic._noise import band_noise
from segpipe.synthetic._nuclei import drop_occluded, rasterize, sample_nuclei
from segpipe.synthetic._render import gather


def blob_sample(
    shape: tuple[int, int],
    rng: np.random.Generator,
    diameter_px: tuple[float, float] = (10.0, 40.0),
    density: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """One plain-style grey nuclei image (bright nuclei on a dark background).

    Parameters
    ----------
    shape : (Y, X)
    rng : numpy Generator
    diameter_px : (min, max)
        Nucleus diameters in pixels (log-uniform).
    density : float
        Fraction of the area covered by nuclei.

    Returns
    -------
    image : (1, Y, X) uint8 ndarray
    labels : (Y, X) uint32 ndarray
        Instance labels 1..n.

    Examples
    --------
    >>> img, lab = blob_sample((64, 64), np.random.default_rng(0), (8, 16), 0.3)
    >>> img.shape, img.dtype, lab.dtype
    ((1, 64, 64), dtype('uint8'), dtype('uint32'))
    """
    from segpipe.synthetic._samples import _drop_fragments, mean_area

    Y, X = (int(v) for v in shape)
    lo, hi = float(diameter_px[0]), float(diameter_px[1])
    margin = hi * 0.6
    box = (-margin, -margin, Y + margin, X + margin)
    count = int(rng.poisson(density * (Y + 2 * margin) * (X + 2 * margin) / mean_area((lo, hi))))
    nuclei = sample_nuclei(rng, box, count, (lo, hi), float(rng.uniform(0.0, 0.6)), 0.85, 0.0)
    nuclei = drop_occluded(nuclei, nuclei)
    nuclei.ids = np.arange(1, len(nuclei) + 1, dtype=np.uint32)
    index, rnorm = rasterize(nuclei, 0, 0, Y, X)
    inside = index >= 0
    # per-nucleus brightness (relative), shape of the fill, texture
    spread = rng.uniform(0.0, 0.35)
    rel = gather(np.exp(rng.normal(0.0, spread, len(nuclei))).astype(np.float32), index)
    fill = np.ones((Y, X), np.float32)
    kind = rng.random()
    if kind < 0.25:  # dome: brighter centre
        fill = 1.0 - rng.uniform(0.1, 0.5) * rnorm * rnorm
    elif kind < 0.5:  # weak texture
        fill = 1.0 + rng.uniform(0.05, 0.3) * band_noise(int(rng.integers(2**62)), 0, 0, Y, X, 2.0, 6.0)
    signal = inside * rel * fill
    background = rng.uniform(0.0, 120.0) if rng.random() < 0.4 else rng.uniform(0.0, 40.0)
    contrast = float(np.exp(rng.uniform(np.log(12.0), np.log(260.0))))  # may saturate
    img = background + contrast * signal
    if rng.random() < 0.3:  # slowly varying background
        yy, xx = np.mgrid[:Y, :X].astype(np.float32)
        img = img + rng.uniform(0, 0.3) * background * np.sin(yy / rng.uniform(60, 300) + xx / rng.uniform(60, 300))
    edge = rng.random()
    if edge >= 0.4:  # 40 % perfectly sharp edges, else a soft PSF
        img = ndi.gaussian_filter(img.astype(np.float32), rng.uniform(0.3, 2.2))
    sigma = rng.uniform(0.0, 0.25) * contrast + rng.uniform(0.0, 3.0)
    img = img + rng.normal(0.0, 1.0, img.shape) * sigma
    if rng.random() < 0.4:  # gamma on the 0..255 scale
        g = float(np.exp(rng.uniform(-0.6, 0.6)))
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** g
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)[None]
    labels = _drop_fragments(gather(nuclei.ids, index))
    labels = relabel_sequential(labels)[0].astype(np.uint32)
    return image, labels
