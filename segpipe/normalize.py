"""Turn source pixels into model input: channel mode, then percentile normalisation.

Two steps, the same for every tile of an image:

1. **Channel mode** (``card.channel_mode``) makes the model's input channels from the
   source channels, depending on the image's modality (``"brightfield"``: RGB, dark objects
   on a bright background; ``"fluorescence"``; ``"grey"``: one channel, objects assumed
   bright):

   ========  ==============================  ===============================  ==============
   mode      brightfield (RGB)               fluorescence                     grey
   ========  ==============================  ===============================  ==============
   grey      inverted luminance (objects     first channel                    luminance if 3–4
             bright)                                                          channels, else first
   rgb       the RGB channels                first 3 channels; fewer: the     first replicated
                                             first replicated                 (or RGB as is)
   nuclear   hematoxylin optical density     first channel (the nuclear       as grey
             (colour deconvolution, skimage  stain, e.g. DAPI, by convention)
             ``hed_from_rgb``)
   ========  ==============================  ===============================  ==============

2. **Normalisation** maps the ``card.normalisation.low`` / ``high`` percentiles of each
   converted channel to 0 / 1 (not clipped); with ``kind="otsu"`` the ``low`` percentile to
   0 and the channel's Otsu threshold to 0.5 (the classical models: their fixed threshold
   0.5 is then Otsu's, whatever the image's contrast; Otsu of the values clipped at the
   99.99th percentile, so that a few hot pixels do not move it). The statistics are
   computed **once per image** from a low-resolution level (:func:`image_stats`) and passed
   to every tile (:func:`prepare`): per-tile statistics would make neighbouring tiles
   disagree at their borders.

The hematoxylin projection omits skimage's ``rgb2hed`` clipping and white point: both only
add a constant or rescale, which the percentile normalisation removes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from skimage.color import hed_from_rgb

from segpipe.errors import ConfigError

if TYPE_CHECKING:
    from segpipe.models import ModelCard

__all__ = [
    "MODALITIES",
    "ImageStats",
    "convert_channels",
    "image_stats",
    "prepare",
    "stats_from_image",
    "thumbnail",
]

MODALITIES = ("brightfield", "fluorescence", "grey")

_LUMA = np.array([0.2125, 0.7154, 0.0721], np.float32)  # skimage.color.rgb2gray weights
_HEMATOXYLIN = np.ascontiguousarray(hed_from_rgb[:, 0], dtype=np.float32)
_EPS = 1e-6
#: Otsu sees each channel clipped at this percentile (:func:`_otsu` says why).
_OTSU_CLIP = 99.99


@dataclass(frozen=True)
class ImageStats:
    """Per-channel normalisation statistics of one image (of the *converted* channels).

    Attributes
    ----------
    low, high : tuple of float
        Values mapped to 0 and 1, one per model input channel.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        low = tuple(float(v) for v in self.low)
        high = tuple(float(v) for v in self.high)
        if not low or len(low) != len(high):
            raise ConfigError(
                f"ImageStats needs equally many low and high values, got {low}, {high}"
            )
        if not all(np.isfinite(low + high)):
            raise ConfigError(f"ImageStats values must be finite, got low={low}, high={high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-friendly form (e.g. for zarr attributes)."""
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageStats:
        """Inverse of :meth:`to_dict`."""
        return cls(low=tuple(data["low"]), high=tuple(data["high"]))


def _check(raw: np.ndarray, modality: str, what: str) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim != 3 or raw.shape[0] < 1:
        raise ConfigError(f"{what} must be channel-first (C, Y, X), got shape {raw.shape}")
    if modality not in MODALITIES:
        raise ConfigError(f"modality {modality!r} is unknown; use one of {', '.join(MODALITIES)}")
    return raw


def _luminance(raw: np.ndarray) -> np.ndarray:
    return np.tensordot(_LUMA, raw[:3].astype(np.float32, copy=False), axes=1)


def _hematoxylin(raw: np.ndarray) -> np.ndarray:
    rgb = raw[:3].astype(np.float32)
    if raw.dtype.kind == "f":  # floats are taken as 0..1
        rgb *= 255.0
    od = -np.log(np.maximum(rgb, 1.0))
    return np.tensordot(_HEMATOXYLIN, od, axes=1)


def convert_channels(raw: np.ndarray, channel_mode: str, modality: str) -> np.ndarray:
    """Apply a channel mode (table above) to ``raw``.

    Parameters
    ----------
    raw : (C, Y, X) ndarray
        Source pixels, any numeric dtype.
    channel_mode : {"grey", "rgb", "nuclear"}
    modality : {"brightfield", "fluorescence", "grey"}

    Returns
    -------
    (C', Y, X) float32 ndarray
        ``C' = 3`` for ``rgb``, else 1.

    Examples
    --------
    >>> convert_channels(np.full((3, 1, 1), 200, np.uint8), "grey", "brightfield").ravel()
    array([-200.], dtype=float32)
    """
    raw = _check(raw, modality, "raw")
    c = raw.shape[0]
    passed = _passed_through(raw, channel_mode, modality)
    if passed is not None:
        return passed.astype(np.float32)
    if channel_mode == "rgb":
        return np.repeat(raw[:1].astype(np.float32), 3, axis=0)
    if channel_mode == "nuclear" and modality == "brightfield" and c >= 3:
        return _hematoxylin(raw)[None]
    if channel_mode not in ("grey", "nuclear"):
        raise ConfigError(f"channel_mode {channel_mode!r} is unknown; use grey, rgb or nuclear")
    if modality == "brightfield":
        grey = _luminance(raw) if c >= 3 else raw[0].astype(np.float32)
        return -grey[None]  # inverted: dark objects on a bright background become bright
    return _luminance(raw)[None]  # RGB-like grey / fluorescence


def _passed_through(raw: np.ndarray, channel_mode: str, modality: str) -> np.ndarray | None:
    """The channels :func:`convert_channels` only casts to float32 (None: it computes others)."""
    c = raw.shape[0]
    if channel_mode == "rgb":
        return raw[:3] if c >= 3 else None
    rgb_like = c >= 3 and (modality == "brightfield" or (modality == "grey" and c <= 4))
    if channel_mode in ("grey", "nuclear") and modality != "brightfield" and not rgb_like:
        return raw[:1]
    return None


def thumbnail(image: np.ndarray, max_side: int = 2048) -> np.ndarray:
    """A low-resolution copy like a pyramid level: 2×2 means until the long side ≤ ``max_side``.

    Parameters
    ----------
    image : (C, Y, X) ndarray
    max_side : int

    Returns
    -------
    (C, y, x) ndarray
        The pyramid level ingest writes (:func:`segpipe.ingest.downsample2`, level by level:
        odd edges averaged, sides rounded up, never 0), in the input's dtype: the channel
        conversions read the value range from the dtype (e.g. uint8 H&E as 0..255), so a
        float copy of an integer image would shift its statistics.
    """
    from segpipe.ingest._core import downsample2

    out = np.asarray(image)
    while max(out.shape[-2:]) > max_side:
        out = downsample2(out)
    return out


def image_stats(thumb: np.ndarray, card: ModelCard, modality: str) -> ImageStats:
    """Normalisation statistics of an image, from a low-resolution level.

    Parameters
    ----------
    thumb : (C, y, x) ndarray
        A low-resolution level (≈1–2k px on the long side) of the whole image.
    card : ModelCard
        Gives ``channel_mode`` and the ``normalisation`` percentiles.
    modality : {"brightfield", "fluorescence", "grey"}

    Returns
    -------
    ImageStats
        Per *converted* channel (after the channel mode): the ``low`` and ``high``
        percentiles; for ``normalisation.kind == "otsu"``, ``high = low + 2 (t - low)`` with
        ``t`` the channel's Otsu threshold, so that ``t`` maps to 0.5 (the ``high``
        percentile where the channel has no threshold above ``low``). Otsu sees the values
        clipped at their 99.99th percentile, so that a few hot or saturated pixels cannot
        move it (:func:`_otsu`).
    """
    _check(thumb, modality, "thumb")
    thumb = np.asarray(thumb)
    # channels used as they are keep their integer dtype: percentiles from a histogram
    x = _passed_through(thumb, card.channel_mode, modality)
    if x is None or x.dtype.kind not in "ui":
        x = convert_channels(thumb, card.channel_mode, modality)
    flat = x.reshape(x.shape[0], -1)
    if flat.dtype.kind == "f":
        flat = flat[:, np.isfinite(flat).all(axis=0)]
    if flat.shape[1] == 0:
        raise ConfigError("image_stats: the thumbnail has no finite pixels")
    hists = _histograms(flat)
    otsu = card.normalisation.kind == "otsu"
    qs = [card.normalisation.low, card.normalisation.high] + ([_OTSU_CLIP] if otsu else [])
    q = _percentiles(flat, qs, hists)
    low, high = q[0], q[1]
    if otsu:
        t = _otsu(flat, hists, clip=q[2])
        high = np.where(t > low, low + 2 * (t - low), high)
    return ImageStats(low=tuple(low.tolist()), high=tuple(high.tolist()))


def _histograms(flat: np.ndarray) -> list[tuple[np.ndarray, int]] | None:
    """Per channel ``(counts, offset)``: counts of the values ``offset, offset + 1, …`` of
    8/16-bit integer pixels; None for other dtypes (or fewer than 2 pixels)."""
    if flat.dtype.kind not in "ui" or flat.dtype.itemsize > 2 or flat.shape[1] < 2:
        return None
    out = []
    for row in flat:
        low = 0 if row.dtype.kind == "u" else int(row.min())
        out.append((np.bincount(row if low == 0 else row.astype(np.int32) - low), low))
    return out


def _otsu(
    flat: np.ndarray, hists: list[tuple[np.ndarray, int]] | None, clip: np.ndarray
) -> np.ndarray:
    """Otsu threshold of each channel (``skimage.filters.threshold_otsu``; of the integer
    histogram when there is one) after clipping its values at ``clip`` (one per channel,
    the :data:`_OTSU_CLIP` = 99.99th percentile; integers at its ceiling).

    Why clip: Otsu maximises ``w0 w1 (m1 - m0)²``, so a pixel's pull grows with the square of
    its distance from the rest. A few pixels far above the objects — hot or saturated pixels,
    bright specks — outweigh many object pixels (at 65535 against objects ~4000 above a
    ~300 background, one pixel counts as ~(65000 / 4000)² ≈ 260 object pixels) and Otsu
    then splits them from everything else: four hot pixels put the threshold above six
    nuclei of 81 px each. On float levels they also stretch the 256 bins skimage spreads
    over ``min..max``. Clipped, the top 0.01 % (≤ 420 px of a 2048² level) take the value of
    the pixels below them, which are object pixels whenever objects cover more than 0.01 %
    of the image — 10× less than three small nuclei in a large field (0.1 %). A clip at the
    card's ``high`` percentile (99.8) would flatten such rare objects into the background;
    dropping only the dtype's maximum would miss hot pixels below it, and floats have none.
    Objects covering less than 0.01 % are clipped too, and the threshold then falls in the
    background. The cost is one more percentile: from the histogram of 8/16-bit levels
    (free), in the same partition as the others for other dtypes.
    """
    from skimage.filters import threshold_otsu

    out = np.empty(flat.shape[0], np.float64)
    for c, row in enumerate(flat):
        if hists is not None:
            counts, low = hists[c]
            top = int(np.ceil(clip[c])) - low  # < counts.size: a percentile is ≤ the max
            counts = np.append(counts[:top], counts[top:].sum())
            used = np.flatnonzero(counts)
            if used.size < 2:  # a constant level: no threshold
                out[c] = low + (used[0] if used.size else 0)
            else:
                out[c] = threshold_otsu(hist=(counts, np.arange(low, low + counts.size)))
        else:
            top = np.ceil(clip[c]) if row.dtype.kind in "ui" else clip[c]
            v = np.minimum(row, np.asarray(top, row.dtype))
            out[c] = threshold_otsu(v) if v.size > 1 and v.min() < v.max() else v[0]
    return out


def _percentiles(
    flat: np.ndarray, qs: Sequence[float], hists: list[tuple[np.ndarray, int]] | None = None
) -> np.ndarray:
    """``np.percentile(flat, qs, axis=1)`` (``(len(qs), C)``); for 8/16-bit integers from
    a histogram (:func:`_histograms`) instead of a partition — the same values, ~8× faster
    on a 1024² level."""
    if hists is None:
        hists = _histograms(flat)
    if hists is None:
        return np.asarray(np.percentile(flat, qs, axis=1), np.float64)
    n = flat.shape[1]
    virtual = (n - 1) * (np.asarray(qs, np.float64) / 100)  # numpy's "linear" method
    below = np.floor(virtual)
    gamma = virtual - below
    ranks = np.stack([below, np.minimum(below + 1, n - 1)]).astype(np.int64)
    out = np.empty((len(qs), flat.shape[0]), np.float64)
    for c, (counts, low) in enumerate(hists):
        cum = np.cumsum(counts)
        a, b = (np.searchsorted(cum, ranks, side="right") + low).astype(np.float64)
        diff = b - a  # numpy's _lerp, for bit-identical results
        out[:, c] = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    return out


def stats_from_image(
    image: np.ndarray, card: ModelCard, modality: str, max_side: int = 2048
) -> ImageStats:
    """:func:`image_stats` of a whole in-memory ``(C, Y, X)`` image via :func:`thumbnail`.

    The in-memory path (:func:`segpipe.predict.segment_array`) uses this; the pipeline
    calls :func:`image_stats` on the pyramid level of about the same size.
    """
    return image_stats(thumbnail(np.asarray(image), max_side), card, modality)


def prepare(raw: np.ndarray, stats: ImageStats, card: ModelCard, modality: str) -> np.ndarray:
    """Model input for one window: channel mode, then ``(x - low) / (high - low)``.

    Parameters
    ----------
    raw : (C, Y, X) ndarray
        Source pixels of a window.
    stats : ImageStats
        The whole image's statistics (:func:`image_stats`).
    card : ModelCard
    modality : {"brightfield", "fluorescence", "grey"}

    Returns
    -------
    (card.in_channels, Y, X) float32 ndarray
    """
    x = convert_channels(raw, card.channel_mode, modality)
    if len(stats.low) != x.shape[0]:
        raise ConfigError(
            f"stats have {len(stats.low)} channels but model {card.name!r} takes {x.shape[0]}; "
            "compute them with image_stats(thumb, card, modality) for this model"
        )
    low = np.asarray(stats.low, np.float32)[:, None, None]
    span = np.asarray(stats.high, np.float32)[:, None, None] - low
    scale = np.float32(1.0) / np.where(np.abs(span) > _EPS, span, np.float32(1.0))
    x -= low
    x *= scale
    return x
