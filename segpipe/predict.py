"""In-memory segmentation: tiles on a global grid, windows, whole arrays (no Dask).

The tiled Dask path (:mod:`segpipe.infer`) calls :func:`segment_window` once per chunk
window; :func:`segment_array` calls it once for a whole image. Both give the same
probabilities wherever a window covers a pixel with at least ``card.halo`` of context,
because tiles sit on one **global grid**:

* tile *cores* are the squares ``[k * S, (k + 1) * S)`` with ``S = card.tile - 2 * card.halo``
  (the stride), counted from the image origin, whatever window is being predicted;
* a tile is its core plus ``card.halo`` pixels of context on each side (``card.tile``
  pixels), read from the window, reflect-padded beyond the window's edges;
* only the tile core is kept (central-crop assembly), so each output pixel comes from the
  one tile whose core holds it.

A window therefore predicts a pixel from exactly the same tile input as the whole image
does, provided that tile's context lies inside the window. This holds for every pixel of a
chunk core when the chunk size is a multiple of ``S`` and the window is the chunk plus
``card.halo`` on each side (the built-in cards use ``S = 512``, dividing the default 1024-px
chunks). For other windows the tile input differs only beyond ``halo`` pixels from the core,
where a model's (effective) receptive field has faded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from segpipe.errors import ConfigError, ModelError
from segpipe.models import Model, ModelCard, load_model
from segpipe.normalize import ImageStats, prepare, stats_from_image
from segpipe.postprocess import Segmentation, to_labels
from segpipe.tiling import cell_mask, cover_cells

__all__ = [
    "as_channel_first",
    "default_grid",
    "guess_modality",
    "mask_context",
    "model_scale",
    "predict_window",
    "segment_array",
    "segment_array_full",
    "segment_window",
    "stats_from_image",
    "window_probabilities",
    "MASK_CELL",
    "WINDOW_MAX_SIDE",
]


WINDOW_MAX_SIDE = 2304
"""Longest window side predicted in one forward pass by ``grid="window"``."""


def default_grid(card: ModelCard) -> str:
    """The tile placement the pipeline predicts a model's windows with.

    ``"window"`` (one forward pass per window, see :func:`predict_window`) for learned
    networks: the global tile grid would cost up to 4x the work for the halo strips.
    ``"global"`` for the classical model, whose tiles on the global grid make every window
    bit-identical to the whole image.

    Examples
    --------
    >>> from segpipe.models import BUILTIN_CARDS
    >>> default_grid(BUILTIN_CARDS["classical"]), default_grid(BUILTIN_CARDS["nuclei"])
    ('global', 'window')
    """
    return "global" if card.architecture.get("type") == "classical" else "window"


#: Pixel sizes within this relative difference of the model's are not resampled.
SCALE_TOLERANCE = 0.1
#: Largest enlargement :func:`model_scale` accepts: an image whose pixels are more than this
#: many times the model's is refused (its pixel size is almost certainly wrong, e.g. a
#: screen dpi, and enlarging it would need the square of this factor in memory).
MAX_UPSAMPLE = 8.0


def model_scale(mpp: float | None, card: ModelCard) -> float:
    """Model pixels per image pixel for an image of ``mpp`` µm/px: ``mpp / card.mpp``.

    1 (no resampling) when either pixel size is unknown, or when they differ by at most
    :data:`SCALE_TOLERANCE` (10 %): a resampling would cost more than such a difference
    changes the objects' size. The pipeline and :func:`segment_array` both use this.

    Examples
    --------
    >>> from segpipe.models import BUILTIN_CARDS
    >>> card = BUILTIN_CARDS["nuclei"]  # 0.5 µm/px
    >>> model_scale(0.25, card), model_scale(0.52, card), model_scale(None, card)
    (0.5, 1.0, 1.0)
    """
    if not mpp or not card.mpp or abs(mpp / card.mpp - 1.0) <= SCALE_TOLERANCE:
        return 1.0
    scale = float(mpp / card.mpp)
    if scale > MAX_UPSAMPLE:
        raise ConfigError(
            f"pixel size {mpp:g} µm/px is {scale:.3g}× the model's {card.mpp:g} µm/px, more than "
            f"segpipe enlarges an image ({MAX_UPSAMPLE:g}×): the file's pixel size is likely wrong; "
            "set the right one with ingest.mpp (config file or SEGPIPE_INGEST__MPP)"
        )
    return scale


MASK_CELL = 128
"""Side (px) of the image-anchored cells a ``mask`` selects for prediction (a multiple of the
built-in U-Nets' down-sampling factor, 16, so every predicted rectangle starts on their
pooling grid)."""


def _tile_range(origin: int, size: int, stride: int) -> range:
    return range(origin // stride, (origin + size - 1) // stride + 1)


def _n_tiles(oy: int, ox: int, span: tuple[int, int, int, int], stride: int) -> int:
    """Global-grid tiles that ``span`` (y0, x0, y1, x1 in a window at ``(oy, ox)``) touches."""
    y0, x0, y1, x1 = span
    return len(_tile_range(oy + y0, y1 - y0, stride)) * len(_tile_range(ox + x0, x1 - x0, stride))


def predict_window(
    model: Model | str | Path,
    window: np.ndarray,
    origin: Sequence[int] = (0, 0),
    batch: int = 8,
    grid: str = "global",
) -> np.ndarray:
    """Probabilities for a prepared window, tiled on the global grid (or in one pass).

    Parameters
    ----------
    model : Model or str or Path
        Anything :func:`segpipe.models.load_model` accepts.
    window : (C, Y, X) float32 ndarray
        Prepared model input (:func:`segpipe.normalize.prepare`), ``C = card.in_channels``.
    origin : (y, x)
        Position of ``window[:, 0, 0]`` in the image, at model resolution; it fixes where the
        global tile grid falls in the window.
    batch : int
        Tiles per call of ``model.predict``.
    grid : {"global", "window"}
        ``"global"``: tiles on the global grid, bit-identical to the whole image wherever
        the tile context lies inside the window. ``"window"``: the whole window in one
        forward pass when its long side is at most :data:`WINDOW_MAX_SIDE` (else as
        ``"global"``). A chunk window then costs one pass over chunk + halo instead of the
        global tiles that overlap it (up to 4× the work for a 1024-px chunk with a 48-px
        halo), and agrees with the whole image to float tolerance at least ``card.halo``
        from the window's edges, provided the window origin is a multiple of the network's
        down-sampling factor (the pipeline aligns its halo to 16 px for that reason).

    Returns
    -------
    (K, Y, X) float32 ndarray

    Examples
    --------
    >>> m = load_model("classical", device="cpu")
    >>> predict_window(m, np.zeros((1, 50, 70), np.float32), origin=(10, 20)).shape
    (1, 50, 70)
    """
    model = load_model(model)
    card = model.card
    x = np.asarray(window, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != card.in_channels:
        raise ModelError(
            f"predict_window: model {card.name!r} takes a ({card.in_channels}, Y, X) window, "
            f"got shape {x.shape}"
        )
    oy, ox = (int(v) for v in origin)
    if oy < 0 or ox < 0:
        raise ConfigError(f"predict_window: origin {tuple(origin)} must be >= 0")
    if batch < 1:
        raise ConfigError(f"predict_window: batch={batch} must be >= 1")
    if grid not in ("global", "window"):
        raise ConfigError(f"predict_window: grid={grid!r} must be 'global' or 'window'")
    _, ny, nx = x.shape
    out = np.zeros((card.n_outputs, ny, nx), np.float32)
    if ny == 0 or nx == 0:
        return out
    if grid == "window" and max(ny, nx) <= WINDOW_MAX_SIDE and min(ny, nx) > 1:
        return np.asarray(model.predict(x[None]), np.float32)[0]
    tile, halo, stride = card.tile, card.halo, card.stride
    rows, cols = _tile_range(oy, ny, stride), _tile_range(ox, nx, stride)
    top, left = rows[0] * stride - halo, cols[0] * stride - halo  # padded array's origin
    pads = (
        (0, 0),
        (oy - top, (rows[-1] + 1) * stride + halo - oy - ny),
        (ox - left, (cols[-1] + 1) * stride + halo - ox - nx),
    )
    xp = np.pad(x, pads, mode="reflect") if (ny > 1 and nx > 1) else np.pad(x, pads, mode="edge")
    jobs = [(ky, kx) for ky in rows for kx in cols]
    for start in range(0, len(jobs), batch):
        part = jobs[start : start + batch]
        tiles = np.stack(
            [
                xp[
                    :,
                    ky * stride - halo - top : ky * stride - halo - top + tile,
                    kx * stride - halo - left : kx * stride - halo - left + tile,
                ]
                for ky, kx in part
            ]
        )
        probs = model.predict(tiles)
        for (ky, kx), p in zip(part, probs, strict=True):
            y0, y1 = max(ky * stride, oy), min((ky + 1) * stride, oy + ny)
            x0, x1 = max(kx * stride, ox), min((kx + 1) * stride, ox + nx)
            out[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox] = p[
                :,
                halo + y0 - ky * stride : halo + y1 - ky * stride,
                halo + x0 - kx * stride : halo + x1 - kx * stride,
            ]
    return out


def _resample(
    img: np.ndarray, zoom: float, offset: Sequence[float], shape: Sequence[int]
) -> np.ndarray:
    """Linear resampling: ``out[c, i, j] = img[c, offset_y + i / zoom, offset_x + j / zoom]``."""
    out = np.empty((img.shape[0], *shape), np.float32)
    for c in range(img.shape[0]):
        ndi.affine_transform(
            img[c],
            [1.0 / zoom, 1.0 / zoom],
            offset=offset,
            output_shape=tuple(shape),
            output=out[c],
            order=1,
            mode="nearest",
        )
    return out


def _predict_scaled(
    model: Model,
    x: np.ndarray,
    origin: tuple[int, int],
    scale: float,
    batch: int,
    grid: str = "global",
) -> np.ndarray:
    """Predict at model resolution (``scale`` model px per image px), return image resolution.

    Model pixel ``m`` is centred at image coordinate ``(m + 0.5) / scale - 0.5`` for every
    window, so windows of one image share the model-resolution grid (and its tile grid).
    """
    _, ny, nx = x.shape
    if scale < 1:  # anti-aliasing before shrinking, as skimage.transform.resize does
        sigma = (1.0 / scale - 1.0) / 2.0
        x = ndi.gaussian_filter(x, (0, sigma, sigma), mode="reflect")
    # one pass per window: start it on the network's pooling grid (a multiple of its
    # down-sampling factor), so windows and masked rectangles agree away from their edges
    step = max(1, model.size_multiple) if grid == "window" else 1
    m0 = [max(0, int(np.ceil(o * scale - 0.5)) - 1) // step * step for o in origin]
    m1 = [int(np.floor((o + n) * scale - 0.5)) + 2 for o, n in zip(origin, (ny, nx), strict=True)]
    shape = [b - a for a, b in zip(m0, m1, strict=True)]
    to_image = [(m + 0.5) / scale - 0.5 - o for m, o in zip(m0, origin, strict=True)]
    xm = _resample(x, scale, to_image, shape)
    probs = predict_window(model, xm, origin=m0, batch=batch, grid=grid)
    to_model = [(o + 0.5) * scale - 0.5 - m for o, m in zip(origin, m0, strict=True)]
    return _resample(probs, 1.0 / scale, to_model, (ny, nx))


def mask_context(card_halo: int, scale: float = 1.0, multiple: int = 16) -> int:
    """Context (image px) predicted around each masked rectangle of :func:`window_probabilities`.

    ``card_halo / scale`` image pixels give every pixel of the rectangle its receptive field
    (two more cover linear resampling when ``scale != 1``), rounded up to ``multiple`` so
    rectangles on cell edges start on the network's pooling grid.

    Examples
    --------
    >>> mask_context(48), mask_context(48, 0.5), mask_context(0)
    (48, 112, 0)
    """
    extra = 0 if abs(scale - 1.0) < 1e-6 else 2
    need = math.ceil(card_halo / scale) + extra if card_halo > 0 else 0
    return -(-need // multiple) * multiple


def _background(card: ModelCard, shape: tuple[int, int]) -> np.ndarray:
    """Probabilities that every post-processing turns into label 0 (and class 0)."""
    out = np.zeros((card.n_outputs, *shape), np.float32)
    if card.task != "binary":  # softmax heads: all probability on channel 0 (background)
        out[0] = 1.0
    return out


def window_probabilities(
    model: Model | str | Path,
    raw: np.ndarray,
    stats: ImageStats,
    origin: Sequence[int] = (0, 0),
    modality: str = "grey",
    scale: float = 1.0,
    batch: int = 8,
    grid: str = "global",
    *,
    mask: np.ndarray | None = None,
    context: int | None = None,
    cell: int = MASK_CELL,
) -> np.ndarray:
    """Probabilities of one window at its own resolution: prepare → resample → predict.

    Parameters are those of :func:`segment_window`.

    Returns
    -------
    (K, Y, X) float32 ndarray
    """
    model = load_model(model)
    card = model.card
    if not np.isfinite(scale) or scale <= 0:
        raise ConfigError(f"segment_window: scale={scale} must be a positive number")
    x = prepare(raw, stats, card, modality)
    oy, ox = (int(v) for v in origin)
    _, ny, nx = x.shape

    unscaled = abs(scale - 1.0) < 1e-6

    def predict(sub: np.ndarray, at: tuple[int, int]) -> np.ndarray:
        if unscaled:
            return predict_window(model, sub, at, batch=batch, grid=grid)
        return _predict_scaled(model, sub, at, float(scale), batch, grid)

    if mask is None:
        return predict(x, (oy, ox))
    mask = np.asarray(mask, bool)
    if mask.shape != (ny, nx):
        raise ConfigError(
            f"segment_window: mask shape {mask.shape} differs from the window's {(ny, nx)}"
        )
    multiple = max(16, model.size_multiple)
    if cell < 1 or cell % multiple:
        raise ConfigError(f"segment_window: cell={cell} must be a positive multiple of {multiple}")
    if context is None:
        context = mask_context(card.halo, scale, multiple)
    out = _fill_cover(predict, x, (oy, ox), card, mask, cell, context, grid == "global" and unscaled)
    # The cover's rectangles may take in cells without a mask pixel, and which ones depends
    # on the window: those get background here, so that a pixel's label depends only on the
    # image-wide cells, never on the window (else two blocks could label it differently: a
    # seam at their border).
    keep = cell_mask(mask, (oy, ox), cell)
    if not keep.all():
        out = out if out.flags.writeable else out.copy()
        out[:, ~keep] = _background(card, (1, 1))[:, 0]
    return out


def _fill_cover(
    predict: Callable[[np.ndarray, tuple[int, int]], np.ndarray],
    x: np.ndarray,
    origin: tuple[int, int],
    card: ModelCard,
    mask: np.ndarray,
    cell: int,
    context: int,
    global_grid: bool,
) -> np.ndarray:
    """Probabilities of a prepared window in the rectangles of :func:`cover_cells` (each
    predicted with ``context`` px around it), background elsewhere."""
    oy, ox = origin
    _, ny, nx = x.shape
    rects = cover_cells(mask, (oy, ox), cell, context)
    if (0, 0, ny, nx) in rects:
        return predict(x, (oy, ox))
    out = _background(card, (ny, nx))
    spans = [(max(y0 - context, 0), max(x0 - context, 0), min(y1 + context, ny), min(x1 + context, nx))
             for y0, x0, y1, x1 in rects]  # fmt: skip
    if global_grid:
        # the rectangles' passes cost global tiles, not pixels: when they need as many tiles
        # as the window, one pass over the window serves them all (the same values: the grid
        # is global)
        stride = card.stride
        if sum(_n_tiles(oy, ox, s, stride) for s in spans) >= _n_tiles(oy, ox, (0, 0, ny, nx), stride):
            whole = predict(x, (oy, ox))
            for y0, x0, y1, x1 in rects:
                out[:, y0:y1, x0:x1] = whole[:, y0:y1, x0:x1]
            return out
    for (y0, x0, y1, x1), (sy0, sx0, sy1, sx1) in zip(rects, spans, strict=True):
        probs = predict(x[:, sy0:sy1, sx0:sx1], (oy + sy0, ox + sx0))
        out[:, y0:y1, x0:x1] = probs[:, y0 - sy0 : y1 - sy0, x0 - sx0 : x1 - sx0]
    return out


def segment_window(
    model: Model | str | Path,
    raw: np.ndarray,
    stats: ImageStats,
    origin: Sequence[int] = (0, 0),
    modality: str = "grey",
    scale: float = 1.0,
    batch: int = 8,
    grid: str = "global",
    *,
    mask: np.ndarray | None = None,
    context: int | None = None,
    cell: int = MASK_CELL,
) -> Segmentation:
    """Segment one window of an image: prepare → resample → predict → labels.

    Parameters
    ----------
    model : Model or str or Path
    raw : (C, Y, X) ndarray
        Source pixels of the window (any dtype).
    stats : ImageStats
        The whole image's normalisation statistics (:func:`segpipe.normalize.image_stats`).
    origin : (y, x)
        Position of ``raw[:, 0, 0]`` in the image (pixels of the level ``raw`` comes from).
    modality : {"brightfield", "fluorescence", "grey"}
    scale : float
        Model pixels per image pixel: ``image_mpp / card.mpp`` (0.5 for a 0.25 µm/px scan and
        a 0.5 µm/px model). Not 1: the window is resampled (anti-aliased when shrinking) to
        the model's resolution on a grid shared by all windows, predicted, and the
        probabilities are resampled back, so labels are at the window's resolution.
    batch : int
        Tiles per ``model.predict`` call.
    grid : {"global", "window"}
        Tile placement, see :func:`predict_window`.
    mask : (Y, X) bool ndarray, optional
        Pixels that need labels (e.g. the tissue mask grown by the largest object). Only
        the ``cell``-px cells of the image-anchored grid that hold a mask pixel are
        predicted, merged into few rectangles (:func:`segpipe.tiling.cover_cells`), each
        with ``context`` px around it; every other pixel gets background probabilities,
        so its label is 0. Inside the predicted cells the probabilities equal the unmasked
        window's (bit for bit with ``grid="global"`` and a pointwise model; to float
        tolerance with ``grid="window"``, as between windows). Default: predict everything.
    context : int, optional
        Pixels predicted around each rectangle; default :func:`mask_context` of the card's
        halo (the receptive field, aligned to the pooling grid).
    cell : int
        Cell side, a multiple of 16 (default :data:`MASK_CELL`).

    Returns
    -------
    Segmentation
        Labels ``(Y, X)`` with window-local ids.
    """
    model = load_model(model)
    probs = window_probabilities(
        model, raw, stats, origin, modality, scale, batch, grid,
        mask=mask, context=context, cell=cell,
    )  # fmt: skip
    return to_labels(probs, model.card)


def as_channel_first(image: np.ndarray) -> np.ndarray:
    """``(Y, X)``, ``(Y, X, C≤4)`` or ``(C, Y, X)`` → ``(C, Y, X)``.

    A 3-D array whose last axis has at most 4 entries and whose first has more is taken as
    channel-last (e.g. an RGB image from PIL); any other 3-D array as channel-first.

    Examples
    --------
    >>> as_channel_first(np.zeros((5, 6, 3))).shape, as_channel_first(np.zeros((2, 5, 6))).shape
    ((3, 5, 6), (2, 5, 6))
    """
    img = np.asarray(image)
    if img.dtype == bool:
        img = img.astype(np.uint8)
    if img.dtype.kind not in "uif":
        raise ConfigError(f"image dtype {img.dtype} is not numeric; pass integer or float pixels")
    if img.ndim == 2:
        return img[None]
    if img.ndim == 3:
        if img.shape[-1] <= 4 < img.shape[0]:
            return np.moveaxis(img, -1, 0)
        return img
    raise ConfigError(
        f"image has shape {img.shape}; pass (Y, X), (Y, X, C) with C <= 4 or (C, Y, X)"
    )


def guess_modality(image: np.ndarray) -> str:
    """Modality of a ``(C, Y, X)`` array by the readers' rule (:func:`segpipe.io.modality_for`):
    3-channel uint8 → brightfield, 1-channel uint8 → grey, otherwise fluorescence."""
    from segpipe.io import modality_for

    return str(modality_for(image.shape[0], image.dtype))


def segment_array(
    image: np.ndarray,
    model: Model | str | Path = "nuclei",
    mpp: float | None = None,
    modality: str | None = None,
    stats: ImageStats | None = None,
) -> np.ndarray:
    """Segment one in-memory image; the reference the tiled pipeline is tested against.

    The whole image is one window, predicted as the pipeline predicts its windows
    (:func:`default_grid`): a learned network in one forward pass up to
    :data:`WINDOW_MAX_SIDE` px a side (on the global tile grid beyond), the classical
    model on the global tile grid. So the pipeline's labels of an image equal these.

    Parameters
    ----------
    image : (Y, X), (Y, X, C) with C ≤ 4, or (C, Y, X) ndarray
    model : str, Path or Model
        A built-in name, a weights file with its card, or a loaded :class:`~segpipe.models.Model`.
    mpp : float, optional
        The image's pixel size (µm/px); with the card's ``mpp`` it sets the resampling
        scale (:func:`model_scale`). ``None`` (or a model without ``mpp``): no resampling.
    modality : {"brightfield", "fluorescence", "grey"}, optional
        Default: guessed like the readers do (:func:`guess_modality`).
    stats : ImageStats, optional
        Normalisation statistics; default: from a ≤ 2048-px thumbnail, as the pipeline
        does from a low-resolution level (:func:`segpipe.normalize.stats_from_image`).

    Returns
    -------
    (Y, X) uint32 ndarray
        0 = background, objects 1..n.

    Examples
    --------
    >>> img = np.zeros((64, 64), np.uint8); img[10:20, 10:20] = img[40:50, 30:45] = 200
    >>> int(segment_array(img, model="classical").max())
    2
    """
    return segment_array_full(image, model, mpp, modality, stats).labels


def segment_array_full(
    image: np.ndarray,
    model: Model | str | Path = "nuclei",
    mpp: float | None = None,
    modality: str | None = None,
    stats: ImageStats | None = None,
) -> Segmentation:
    """:func:`segment_array` with everything the post-processing gives: the labels, the
    class map of a semantic model (``.classes``) and an instance model's boundary
    probability (``.boundary``). Same parameters.

    Examples
    --------
    >>> img = np.zeros((64, 64), np.uint8); img[10:20, 10:20] = 200
    >>> seg = segment_array_full(img, model="classical")
    >>> int(seg.n_objects), seg.classes is None
    (1, True)
    """
    m = load_model(model)
    img = as_channel_first(image)
    if img.shape[0] == 4 and img.dtype == np.uint8:
        img = img[:3]  # RGBA → RGB: the readers drop alpha too
    modality = modality or guess_modality(img)
    if stats is None:
        stats = stats_from_image(img, m.card, modality)
    if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"segment_array: mpp={mpp} must be a positive number of µm per pixel")
    scale = model_scale(mpp, m.card)
    return segment_window(m, img, stats, (0, 0), modality, scale, grid=default_grid(m.card))
