"""The foreground mask of a thumbnail (private; see :mod:`segpipe.tissue`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hsv

from segpipe.errors import ConfigError
from segpipe.tissue._threshold import (
    _otsu_split,
    _percentiles,
    _remove_small_holes,
    _remove_small_objects,
    _tight_ratio,
)

#: Otsu effectiveness below which a split is "weak" (one unimodal class): a Gaussian
#: histogram gives 2/π ≈ 0.64, a uniform one 0.75; a clear two-class image gives > 0.85.
MIN_SEPARATION = 0.78
#: Brightfield / fluorescence: a split is also strong when the class means are this many
#: standard deviations of the tighter class apart (a unimodal histogram gives ~3).
MIN_TIGHT_RATIO = 5.0
#: Brightfield: the background class of a split is glass only when its mean saturation
#: (smoothed, 0–1) is at most this; pale stroma is ~0.3, glass ~0–0.1. Otherwise the whole
#: image is foreground.
GLASS_MAX_SATURATION = 0.15
#: Grey: the border's share on one side of the split that makes that side the background;
#: between the two (a part touching three sides) the whole image is foreground.
BORDER_MAJORITY = 0.9
#: Long side (px) at which masks are computed; larger thumbnails are block-averaged first.
WORK_SIZE = 512
_MODALITIES = {
    "brightfield": "brightfield",
    "he": "brightfield",
    "rgb": "brightfield",
    "fluorescence": "fluorescence",
    "grey": "grey",
    "gray": "grey",
    "industrial": "grey",
}


def _score(
    thumb: np.ndarray, modality: str, levels: np.ndarray | None = None, divisor: int = 1
) -> np.ndarray:
    """Per-pixel foreground score (higher = more likely foreground, except grey).
    ``levels``: unsigned integers with ``thumb == levels.astype(float32) / divisor``
    (a quicker percentile)."""
    img = np.asarray(thumb, np.float32)
    if modality == "brightfield":
        if img.shape[0] >= 3:
            rgb = np.moveaxis(img[:3], 0, -1)
            rgb = rgb / max(float(rgb.max()), 1e-6)
            score = rgb2hsv(rgb)[..., 1]
        else:  # grey brightfield: dark objects on bright
            score = 1.0 - img[0] / max(float(img[0].max()), 1e-6)
        return ndi.gaussian_filter(score, 1.0)
    # fluorescence / grey: per-channel robust scaling, max over channels
    chans = []
    for i, c in enumerate(img):
        lo, hi = _percentiles(c, None if levels is None else levels[i], divisor)
        chans.append((c - lo) / max(float(hi - lo), 1e-6))
    score = chans[0] if len(chans) == 1 else np.max(chans, axis=0)
    sigma = 2.0 if modality == "fluorescence" else 1.0
    return ndi.gaussian_filter(score, sigma)


def tissue_mask(
    thumb: np.ndarray,
    modality: str,
    *,
    min_separation: float = MIN_SEPARATION,
    min_object_fraction: float = 0.001,
    max_hole_fraction: float = 0.01,
) -> np.ndarray:
    """Foreground mask of a low-resolution image.

    Parameters
    ----------
    thumb : (C, y, x) ndarray
        A low pyramid level (any dtype); C = 3 for RGB brightfield.
    modality : {"brightfield", "fluorescence", "grey"}
        As :attr:`segpipe.io.ImageSource.modality` (``"he"`` is taken as brightfield).
    min_separation : float
        Otsu effectiveness below which everything is foreground (see module docstring).
    min_object_fraction : float
        Objects smaller than this fraction of the thumbnail are removed.
    max_hole_fraction : float
        Holes smaller than this fraction of the thumbnail are filled.

    Returns
    -------
    (y, x) bool ndarray

    Examples
    --------
    >>> thumb = np.full((3, 64, 64), 240, np.uint8)
    >>> thumb[:, 16:48, 16:48] = np.array([200, 120, 180])[:, None, None]  # pink tissue
    >>> mask = tissue_mask(thumb, "brightfield")
    >>> bool(mask[32, 32]), bool(mask[2, 2])
    (True, False)
    """
    thumb = np.asarray(thumb)
    mask, f = _work_mask(thumb, modality, min_separation, min_object_fraction, max_hole_fraction)
    if f == 1:
        return mask
    y, x = thumb.shape[-2:]
    return mask.repeat(f, axis=0).repeat(f, axis=1)[:y, :x]


def _work_mask(
    thumb: np.ndarray,
    modality: str,
    min_separation: float = MIN_SEPARATION,
    min_object_fraction: float = 0.001,
    max_hole_fraction: float = 0.01,
) -> tuple[np.ndarray, int]:
    """:func:`tissue_mask` at its working resolution, and the factor ``f`` it was reduced by:
    mask pixel ``(i, j)`` covers thumbnail pixels ``[i f, (i + 1) f) × [j f, (j + 1) f)``
    (the last row / column may reach past the thumbnail's edge)."""
    if thumb.ndim == 2:
        thumb = thumb[None]
    if thumb.ndim != 3 or min(thumb.shape[1:]) < 1:
        raise ConfigError(f"thumb shape {thumb.shape}: give a (C, y, x) array")
    mode = _MODALITIES.get(modality)
    if mode is None:
        raise ConfigError(f"modality={modality!r}: use brightfield, fluorescence or grey")
    # Work at a fixed resolution (long side <= WORK_SIZE, block means): the result does not
    # depend on which pyramid level the caller passes, and dense nuclei blend into tissue.
    y, x = thumb.shape[1:]
    f = max(1, -(-max(y, x) // WORK_SIZE))
    # 8/16-bit unsigned levels (pixels, or exact block sums): quicker percentiles
    counted = thumb.dtype.kind == "u" and thumb.dtype.itemsize <= 2
    levels = thumb if counted else None
    if f > 1:
        sums = _block_sum(thumb, f)
        thumb = _block_mean(thumb, f, sums)
        levels = sums if counted else None
    mask = _mask(thumb, mode, min_separation, min_object_fraction, max_hole_fraction, levels, f * f)
    return mask, f


def _block_sum(thumb: np.ndarray, f: int) -> np.ndarray | None:
    """Exact ``f×f`` block sums of an 8/16-bit ``(C, y, x)`` thumbnail (edge-padded to a
    multiple of ``f``) as intp (unsigned input) / int32, rows first; None for other dtypes
    or when the float32 sums would not be exact."""
    if not (thumb.dtype.kind in "ui" and thumb.dtype.itemsize <= 2 and f * f * 65536 <= 2**24):
        return None
    y, x = thumb.shape[1:]
    small = np.asarray(thumb)
    if y % f or x % f:
        small = np.pad(small, ((0, 0), (0, -y % f), (0, -x % f)), mode="edge")
    signed = small.dtype.kind == "i"
    if small.dtype.itemsize == 1 and f <= 128:  # row sums of f bytes fit 16 bits
        rows = small[:, 0::f].astype(np.int16 if signed else np.uint16)
    else:
        rows = small[:, 0::f].astype(np.int32 if signed else np.uint32)
    for dy in range(1, f):
        rows += small[:, dy::f]
    c, h, px = rows.shape
    rows = rows.reshape(c, h, px // f, f)
    total = rows[..., 0].astype(np.int32 if signed else np.intp)  # intp: counted as is
    for dx in range(1, f):
        total += rows[..., dx]
    return total


def _block_mean(thumb: np.ndarray, f: int, sums: np.ndarray | None = None) -> np.ndarray:
    """``f×f`` block means of a ``(C, y, x)`` thumbnail as float32 (edge-padded to a multiple of ``f``).

    8/16-bit integers are summed exactly in integers (:func:`_block_sum`, or ``sums`` when
    given; the float32 sums of the same values are exact too, so the result is the same to
    the bit, ~5× faster); anything else is summed in float32, rows first, then columns.

    >>> _block_mean(np.arange(8, dtype=np.uint8).reshape(1, 2, 4), 2).tolist()
    [[[2.5, 4.5]]]
    """
    total = _block_sum(thumb, f) if sums is None else sums
    if total is not None:
        return total.astype(np.float32) / (f * f)
    y, x = thumb.shape[1:]
    small = np.asarray(thumb, np.float32)
    if y % f or x % f:
        small = np.pad(small, ((0, 0), (0, -y % f), (0, -x % f)), mode="edge")
    c, py, px = small.shape
    small = small.reshape(c, py // f, f, px).sum(axis=2)  # rows first, then columns
    return small.reshape(c, py // f, px // f, f).sum(axis=3) / (f * f)


def _mask(
    thumb: np.ndarray,
    mode: str,
    min_separation: float,
    min_object_fraction: float,
    max_hole_fraction: float,
    levels: np.ndarray | None = None,
    divisor: int = 1,
) -> np.ndarray:
    score = _score(thumb, mode, levels, divisor)
    threshold, separation, low, high = _otsu_split(score)
    if separation < min_separation and (
        mode == "grey" or _tight_ratio(low, high) < MIN_TIGHT_RATIO
    ):
        return np.ones(score.shape, bool)
    # Lean towards foreground: halfway between the background class mean and the Otsu
    # threshold, so thumbnail pixels only partly covered by tissue are kept.
    low_mean = float(low.mean())
    high_mean = float(high.mean())
    del low, high
    if mode == "brightfield" and thumb.shape[0] >= 3 and low_mean > GLASS_MAX_SATURATION:
        # the weaker class is not glass (tissue everywhere, e.g. a crop): the split found
        # nuclei in stroma, and keeping only its strong side would drop the tissue
        return np.ones(score.shape, bool)
    bright_background = False
    if mode == "grey":  # which side is background is read off the image's border
        border = np.concatenate([score[0], score[-1], score[:, 0], score[:, -1]])
        bright_border = float(np.mean(border > threshold))
        if 1 - BORDER_MAJORITY < bright_border < BORDER_MAJORITY:
            # a part that covers much of it (touching three sides) leaves no side to call
            # background
            return np.ones(score.shape, bool)
        bright_background = bright_border >= BORDER_MAJORITY
    if bright_background:  # grey: the background is the bright side
        mask = score < threshold + 0.5 * (high_mean - threshold)
    else:
        mask = score > threshold - 0.5 * (threshold - low_mean)
    area = mask.size
    mask = _close_disk2(mask) if min(mask.shape) > 8 else mask
    if mode == "brightfield":
        # Dust and debris on glass; in fluorescence and grey images a small bright (or, on
        # a bright part, dark) object is what we are looking for — sparse cells, pits —
        # and dropping it would skip its chunk, so only brightfield removes specks.
        mask = _remove_small_objects(mask, int(min_object_fraction * area))
    mask = _remove_small_holes(mask, int(max_hole_fraction * area))
    return mask


def _close_disk2(mask: np.ndarray) -> np.ndarray:
    """Closing of ``mask`` by ``morphology.disk(2)``, by shifted slices; never removes a pixel.

    ``disk(2)`` is the 4-neighbour cross dilated by itself, so each step is two cross
    steps. The dilation counts the outside of the array as background and the erosion as
    foreground (scipy's ``binary_dilation(…, border_value=0)`` then
    ``binary_erosion(…, border_value=1)``, ~20× faster on a 512² working mask;
    ``tests/test_tissue.py`` compares them): with the outside as background in both steps,
    as ``binary_closing`` does, the erosion would strip 2 px along the edges and drop the
    objects that touch the image border.
    """
    out = np.asarray(mask, bool)
    for grow in (True, False):
        for _ in range(2):
            out = _cross_step(out, grow)
    return out


def _cross_step(mask: np.ndarray, grow: bool) -> np.ndarray:
    """One dilation (``grow``) or erosion of ``mask`` by the 4-neighbour cross; a
    neighbour outside the array is left out (background to a dilation, foreground to an
    erosion)."""
    step = mask.copy()
    op = np.logical_or if grow else np.logical_and
    for here, there in (
        (np.s_[1:], np.s_[:-1]),  # the pixel above
        (np.s_[:-1], np.s_[1:]),  # below
        (np.s_[:, 1:], np.s_[:, :-1]),  # left
        (np.s_[:, :-1], np.s_[:, 1:]),  # right
    ):
        op(step[here], mask[there], out=step[here])
    return step
