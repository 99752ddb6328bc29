"""Crops, augmentation and targets.

Geometry (zoom, rotation, small shear, flips) is one affine map applied to the raw crop
(linear) and to its target (nearest), so image and target stay aligned; boundaries of
instance targets are computed *after* the warp. H&E stain jitter works in optical density
(``skimage.color.rgb2hed`` / ``hed2rgb``) before the channel mode is applied; intensity
changes (scale, offset, gamma, noise, blur) act on the prepared, normalised input.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import hed2rgb, rgb2hed
from skimage.segmentation import find_boundaries

from segpipe.train._data import Item

__all__ = ["instance_target", "sample_crop", "stain_jitter", "intensity_jitter"]


def instance_target(labels: np.ndarray, boundary: str = "inner") -> np.ndarray:
    """Instance labels → class map: 0 background, 1 interior, 2 boundary.

    ``boundary="inner"`` marks the object's own outermost pixels
    (``find_boundaries(mode="inner")``), so a one-pixel gap separates touching objects;
    ``"thick"`` widens that band by one pixel inwards.

    Examples
    --------
    >>> lab = np.zeros((5, 5), np.uint8); lab[1:4, 1:4] = 1
    >>> instance_target(lab)[2]
    array([0, 2, 1, 2, 0], dtype=uint8)
    """
    edge = find_boundaries(labels, mode="inner")
    if boundary == "thick":
        edge = ndi.binary_dilation(edge) & (labels > 0)
    out = (labels > 0).astype(np.uint8)
    out[edge] = 2
    return out


def sample_center(item: Item, rng: np.random.Generator, balanced: float, key: int | None = None) -> tuple[float, float]:
    """A crop centre: with probability ``balanced`` near a uniformly drawn class/object.

    ``key`` fixes the choice instead: a class/object of ``item.index`` (the crop is centred
    near it), or -1 for a uniformly drawn centre.
    """
    if key is not None:
        if key >= 0 and key in item.index:
            pts = item.index[key]
            cy, cx = pts[int(rng.integers(len(pts)))]
            return float(cy + rng.normal(0, 8)), float(cx + rng.normal(0, 8))
        return float(rng.uniform(0, item.shape[0])), float(rng.uniform(0, item.shape[1]))
    keys = [k for k in item.index if k != 0] or list(item.index)
    if keys and rng.random() < balanced:
        pts = item.index[keys[int(rng.integers(len(keys)))]]
        cy, cx = pts[int(rng.integers(len(pts)))]
        return float(cy + rng.normal(0, 8)), float(cx + rng.normal(0, 8))
    return float(rng.uniform(0, item.shape[0])), float(rng.uniform(0, item.shape[1]))


def sample_crop(
    item: Item,
    rng: np.random.Generator,
    size: int,
    zoom: float,
    augment: bool,
    balanced: float,
    key: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``size × size`` crop at magnification ``zoom`` (> 1 enlarges objects).

    Only the source region the warped crop needs is read (``key``: see :func:`sample_center`).
    Returns ``(raw (C, size, size) float32, target (size, size) int64)`` — the target still
    holds instance labels or classes.
    """
    cy, cx = sample_center(item, rng, balanced, key)
    angle = rng.uniform(0, 2 * np.pi) if augment else 0.0
    shear = rng.uniform(-0.08, 0.08) if augment else 0.0
    stretch = np.exp(rng.uniform(-0.08, 0.08)) if augment else 1.0
    c, s = np.cos(angle), np.sin(angle)
    # output (o) -> input (i): i = M @ (o - centre_out) + centre_in
    m = np.array([[c, -s], [s, c]]) @ np.array([[stretch, shear], [0.0, 1.0 / stretch]]) / zoom
    half = (size - 1) / 2.0
    corners = np.array([[-half, -half], [-half, half], [half, -half], [half, half]]) @ m.T
    reach = int(np.ceil(np.abs(corners).max())) + 2
    y0, x0 = int(round(cy)) - reach, int(round(cx)) - reach
    y1, x1 = int(round(cy)) + reach + 1, int(round(cx)) + reach + 1
    raw = item.read(y0, x0, y1, x1).astype(np.float32)
    tgt = item.read_target(y0, x0, y1, x1)
    offset = np.array([cy - y0, cx - x0]) - m @ np.array([half, half])
    img = np.stack(
        [ndi.affine_transform(ch, m, offset, output_shape=(size, size), order=1, mode="reflect") for ch in raw]
    )
    lab = ndi.affine_transform(tgt.astype(np.int64), m, offset, output_shape=(size, size), order=0, mode="constant")
    if augment:
        k = int(rng.integers(4))
        img, lab = np.rot90(img, k, axes=(1, 2)), np.rot90(lab, k)
        if rng.random() < 0.5:
            img, lab = img[:, :, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(lab)


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.03) -> np.ndarray:
    """H&E colour augmentation in haematoxylin-eosin-DAB optical density (Tellez et al. 2018).

    Parameters
    ----------
    rgb : (3, Y, X) ndarray
        Brightfield RGB in 0..255.

    Returns
    -------
    (3, Y, X) float32 ndarray in 0..255
    """
    hed = rgb2hed(np.clip(np.moveaxis(rgb, 0, -1) / 255.0, 0, 1))
    alpha = rng.uniform(1 - sigma * 4, 1 + sigma * 4, 3)
    beta = rng.uniform(-bias, bias, 3)
    out = hed2rgb(hed * alpha + beta)
    return (np.moveaxis(out, -1, 0) * 255.0).astype(np.float32)


def intensity_jitter(x: np.ndarray, rng: np.random.Generator, mode: str = "strong") -> np.ndarray:
    """Contrast / brightness, gamma, blur and Gaussian noise on a prepared ``(C, Y, X)`` input.

    ``strong`` is wide on purpose (contrast ×0.4–1.6, gamma 0.5–2, blur σ up to 2 px, noise σ
    up to 0.12): the percentile normalisation maps most images to 0..1, but real images differ
    from the synthetic ones in contrast, saturation, sharpness and noise. ``mild`` (contrast
    ×0.8–1.25, offset ±0.1, gamma 0.8–1.25, blur σ up to 1 px, no added noise) keeps faint,
    low-contrast features (the defects model's stains) above the generator's own noise.
    """
    if mode == "mild":
        x = x * float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))) + rng.uniform(-0.1, 0.1)
        if rng.random() < 0.3:
            g = np.exp(rng.uniform(-0.22, 0.22))
            x = np.sign(x) * np.abs(x) ** g
        if rng.random() < 0.2:
            x = np.stack([ndi.gaussian_filter(ch, rng.uniform(0.3, 1.0)) for ch in x])
        return np.asarray(x, np.float32)
    x = x * float(np.exp(rng.uniform(np.log(0.4), np.log(1.6)))) + rng.uniform(-0.2, 0.2)
    if rng.random() < 0.4:
        g = np.exp(rng.uniform(-0.7, 0.7))
        x = np.sign(x) * np.abs(x) ** g
    if rng.random() < 0.3:
        sigma = rng.uniform(0.3, 2.0)
        x = np.stack([ndi.gaussian_filter(ch, sigma) for ch in x])
    if rng.random() < 0.5:
        x = x + rng.normal(0, rng.uniform(0.005, 0.12), x.shape)
    return x.astype(np.float32)


def random_zoom(rng: np.random.Generator, scale_range: tuple[float, float]) -> float:
    """A log-uniform zoom factor in ``scale_range``."""
    lo, hi = scale_range
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

