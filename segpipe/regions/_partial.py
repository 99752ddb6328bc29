"""Per-block partial statistics and their exact merge (private; see :mod:`segpipe.regions`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from segpipe.errors import ConfigError
from segpipe.regions._scan import _group_sum, _index, _scan, _sum_min_max, _with_context


@dataclass(frozen=True)
class Partial:
    """Mergeable statistics of the labels seen by one or more blocks (rows sorted by label).

    Coordinates are level-0 pixels; ``m2_*`` are centred sums of squares / products
    (``Σ (y - mean_y)²`` …), ``m2_v`` the centred sum of squares of each channel.
    """

    label: np.ndarray  # uint32 (n,)
    count: np.ndarray  # int64 (n,)
    mean_y: np.ndarray  # float64 (n,)
    mean_x: np.ndarray
    m2_yy: np.ndarray
    m2_xx: np.ndarray
    m2_xy: np.ndarray
    bbox: np.ndarray  # int64 (n, 4): y0, x0, y1, x1 half-open
    mean_v: np.ndarray  # float64 (n, C)
    m2_v: np.ndarray
    min_v: np.ndarray
    max_v: np.ndarray
    perimeter: np.ndarray  # float64 (n,)
    class_counts: np.ndarray  # int64 (n, K); K = 0 without a class map

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def n_channels(self) -> int:
        """Number of intensity channels."""
        return int(self.mean_v.shape[1])

    def relabel(self, new_labels: np.ndarray) -> Partial:
        """The same rows under new labels (rows sharing a label are merged)."""
        moved = Partial(**{**self._asdict(), "label": np.asarray(new_labels, np.uint32)})
        return merge_partials([moved])

    def _asdict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def empty(n_channels: int = 1, n_classes: int = 0) -> Partial:
        """A partial with no labels."""
        z1 = np.zeros(0, np.float64)
        z2 = np.zeros((0, n_channels), np.float64)
        return Partial(
            label=np.zeros(0, np.uint32), count=np.zeros(0, np.int64), mean_y=z1, mean_x=z1,
            m2_yy=z1, m2_xx=z1, m2_xy=z1, bbox=np.zeros((0, 4), np.int64), mean_v=z2,
            m2_v=z2, min_v=z2, max_v=z2, perimeter=z1,
            class_counts=np.zeros((0, n_classes), np.int64),
        )  # fmt: skip


def partial_stats(
    labels: np.ndarray,
    image: np.ndarray,
    origin: tuple[int, int] = (0, 0),
    classes: np.ndarray | None = None,
    *,
    core: tuple[slice, slice] | None = None,
) -> Partial:
    """Mergeable statistics of the labels of one block.

    Sums run over each label's pixels in row-major order (so that any two ways of
    measuring the same pixels give the same floats); the pixels are visited as runs of one
    label along a row, and coordinate sums, bounding boxes and extrema are taken per run.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        Label image (0 = background) of a window; ids must fit uint32.
    image : (C, H, W) or (H, W) ndarray
        Intensities of the same pixels.
    origin : (int, int)
        Level-0 ``(y, x)`` of ``labels[0, 0]``.
    classes : (H, W) integer ndarray, optional
        Class per pixel; the region's class is its most frequent one.
    core : (slice, slice), optional
        Measure only the pixels ``labels[core]``; the rest of ``labels`` is context for
        the perimeter (at least 2 px needed for exact shares). Default: everything, with
        the outside of the array treated as background.

    Returns
    -------
    Partial
    """
    labels = np.asarray(labels)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if labels.ndim != 2 or image.shape[1:] != labels.shape:
        raise ConfigError(
            f"partial_stats: labels {labels.shape} and image {image.shape} must be (H, W) and "
            "(C, H, W) over the same pixels"
        )
    if classes is not None and np.shape(classes) != labels.shape:
        raise ConfigError(f"partial_stats: classes {np.shape(classes)} must match labels {labels.shape}")
    if core is None:
        core = (slice(0, labels.shape[0]), slice(0, labels.shape[1]))
    cy, cx = (s.indices(n)[:2] for s, n in zip(core, labels.shape, strict=True))
    n_classes = 0 if classes is None else int(np.max(classes, initial=0)) + 1
    h, w = cy[1] - cy[0], cx[1] - cx[0]
    if h <= 0 or w <= 0:
        return Partial.empty(image.shape[0], n_classes)
    # the core and 2 px of context around it (perimeter shares need the 5×5 neighbourhood)
    padded = _with_context(labels.view(np.uint8) if labels.dtype == bool else labels, cy, cx, 2)
    starts, lengths, ids, border_ids, shares = _scan(padded)
    del padded
    if starts.size == 0:
        return Partial.empty(image.shape[0], n_classes)
    uniq, run_inv, border_inv = _index(ids, border_ids)
    n, wp = len(uniq), w + 4
    row = starts // wp - 2  # core coordinates of each run's first pixel
    col = starts - (row + 2) * wp - 2
    # sums of integer coordinates are exact in float64, whatever their order: by run
    count = np.bincount(run_inv, weights=lengths, minlength=n)
    my = np.bincount(run_inv, weights=row * lengths, minlength=n) / count
    sum_x = col * lengths + lengths * (lengths - 1) // 2  # x0 + (x0 + 1) + … along a run
    mx = np.bincount(run_inv, weights=sum_x, minlength=n) / count
    oy, ox = origin[0] + cy[0], origin[1] + cx[0]
    bbox = np.empty((n, 4), np.int64)
    bbox[:, :2] = np.iinfo(np.int64).max
    bbox[:, 2:] = np.iinfo(np.int64).min
    np.minimum.at(bbox[:, 0], run_inv, row)
    np.minimum.at(bbox[:, 1], run_inv, col)
    np.maximum.at(bbox[:, 2], run_inv, row)
    np.maximum.at(bbox[:, 3], run_inv, col + lengths - 1)
    bbox += np.array([oy, ox, oy + 1, ox + 1], np.int64)
    # per pixel, row-major (a run's pixels are consecutive), as the centred sums need; at
    # most three pixel-sized arrays at a time (fresh memory costs a page fault per 4 KiB,
    # as much as the arithmetic)
    offsets = np.cumsum(lengths) - lengths
    inv = np.repeat(run_inv, lengths)

    def group_sum(weights: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=weights, minlength=n)

    def along(first: np.ndarray) -> np.ndarray:
        """``first[k] + i`` at the i-th pixel of run k."""
        step = np.ones(inv.size, np.intp)
        step[offsets[1:]] = first[1:] - (first[:-1] + lengths[:-1] - 1)
        step[0] = first[0]
        return np.cumsum(step, out=step)

    dy = row - my[run_inv]  # constant along a run
    m2_yy = group_sum(np.repeat(dy * dy, lengths))
    dx = along(col).astype(np.float64)
    dx -= mx.take(inv)
    m2_xx = group_sum(dx * dx)
    dxy = np.repeat(dy, lengths)
    dxy *= dx
    m2_xy = group_sum(dxy)
    del dx, dxy
    # intensities (and classes) of every pixel, by flat index into the core
    pixel = along(row * w + col)

    def core_flat(a2d: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a2d[cy[0] : cy[1], cx[0] : cx[1]]).reshape(h * w)

    if classes is None:
        class_counts = np.zeros((n, 0), np.int64)
    else:
        key = inv * n_classes
        np.add(key, core_flat(np.asarray(classes)).take(pixel), out=key, casting="unsafe")
        class_counts = np.bincount(key, minlength=n * n_classes)
        class_counts = class_counts.reshape(n, n_classes).astype(np.int64)
        del key
    channels = [core_flat(plane).take(pixel) for plane in image]
    del pixel
    n_channels = len(channels)
    mean_v = np.empty((n, n_channels), np.float64)
    m2_v = np.empty((n, n_channels), np.float64)
    min_v = np.empty((n, n_channels), np.float64)
    max_v = np.empty((n, n_channels), np.float64)
    for c in range(n_channels):
        raw, channels[c] = channels[c], None
        mean_v[:, c], min_v[:, c], max_v[:, c] = _sum_min_max(raw, inv, run_inv, offsets, n)
        mean_v[:, c] /= count
        dv = mean_v[:, c].take(inv)
        np.subtract(raw, dv, out=dv)
        del raw
        dv *= dv
        m2_v[:, c] = group_sum(dv)
        del dv
    return Partial(
        label=uniq.astype(np.uint32),
        count=count.astype(np.int64),
        mean_y=my + oy,
        mean_x=mx + ox,
        m2_yy=m2_yy,
        m2_xx=m2_xx,
        m2_xy=m2_xy,
        bbox=bbox,
        mean_v=mean_v,
        m2_v=m2_v,
        min_v=min_v,
        max_v=max_v,
        # the core's border pixels only, summed in row-major order as the other columns
        perimeter=np.bincount(border_inv, weights=shares, minlength=n),
        class_counts=class_counts,
    )


def merge_partials(parts: Sequence[Partial]) -> Partial:
    """Reduce partials by label (associative and commutative).

    Parameters
    ----------
    parts : sequence of Partial
        Partials with the same number of channels.

    Returns
    -------
    Partial
        One row per distinct label, sorted by label.
    """
    parts = [p for p in parts if len(p)] or list(parts[:1])
    if not parts:
        return Partial.empty()
    if len({p.n_channels for p in parts}) > 1:
        raise ConfigError("merge_partials: partials have different channel counts; measure one image")
    k = max(p.class_counts.shape[1] for p in parts)
    cat = {
        f.name: np.concatenate([getattr(p, f.name) for p in parts])
        for f in fields(Partial)
        if f.name != "class_counts"
    }
    class_counts = np.concatenate(
        [np.pad(p.class_counts, ((0, 0), (0, k - p.class_counts.shape[1]))) for p in parts]
    )
    uniq, inv = np.unique(cat["label"], return_inverse=True)
    n = len(uniq)
    if n == 0:
        return Partial.empty(parts[0].n_channels, k)
    cnt = cat["count"].astype(np.float64)
    total = np.bincount(inv, weights=cnt, minlength=n)
    my = np.bincount(inv, weights=cnt * cat["mean_y"], minlength=n) / total
    mx = np.bincount(inv, weights=cnt * cat["mean_x"], minlength=n) / total
    ddy, ddx = cat["mean_y"] - my[inv], cat["mean_x"] - mx[inv]
    mv = _group_sum(cnt[:, None] * cat["mean_v"], inv, n) / total[:, None]
    ddv = cat["mean_v"] - mv[inv]
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])

    def reduce(ufunc: np.ufunc, a: np.ndarray) -> np.ndarray:
        return ufunc.reduceat(a[order], starts, axis=0)

    bbox = cat["bbox"]
    return Partial(
        label=uniq.astype(np.uint32),
        count=np.bincount(inv, weights=cnt, minlength=n).round().astype(np.int64),
        mean_y=my,
        mean_x=mx,
        m2_yy=np.bincount(inv, weights=cat["m2_yy"] + cnt * ddy * ddy, minlength=n),
        m2_xx=np.bincount(inv, weights=cat["m2_xx"] + cnt * ddx * ddx, minlength=n),
        m2_xy=np.bincount(inv, weights=cat["m2_xy"] + cnt * ddy * ddx, minlength=n),
        bbox=np.concatenate(
            [reduce(np.minimum, bbox[:, :2]), reduce(np.maximum, bbox[:, 2:])], axis=1
        ),
        mean_v=mv,
        m2_v=_group_sum(cat["m2_v"] + cnt[:, None] * ddv * ddv, inv, n),
        min_v=reduce(np.minimum, cat["min_v"]),
        max_v=reduce(np.maximum, cat["max_v"]),
        perimeter=np.bincount(inv, weights=cat["perimeter"], minlength=n),
        class_counts=reduce(np.add, class_counts),
    )
