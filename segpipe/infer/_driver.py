"""The driver of :func:`segment_image` (see :mod:`segpipe.infer`): metadata, statistics and
tissue selection once per image, then pass 1, the stitching plan and pass 2 — in this
process (:func:`_local`) or as Dask tasks (:func:`_distributed`)."""

from __future__ import annotations

import math
import operator
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segpipe.errors import ConfigError
from segpipe.infer._tasks import (
    _cells_of,
    _Job,
    _merge_list,
    _nth_partial,
    _open_array,
    _pass1,
    _pass2,
)
from segpipe.regions import Partial, finalize, merge_partials
from segpipe.stitch import plan
from segpipe.tiling import BlockGrid

if TYPE_CHECKING:
    from segpipe.ingest import ImageMeta
    from segpipe.models import Model
    from segpipe.normalize import ImageStats

__all__ = ["GPU_GROUP", "STATS_SIDE", "SegmentResult", "default_halo", "segment_image"]

#: Long side (px) of the pyramid level used for normalisation statistics and the tissue mask.
STATS_SIDE = 2048
#: Blocks per pass-1 task on GPU workers (read / predict / finish pipelined inside the task).
GPU_GROUP = 4
_TMP_PREFIX = "_segpipe_tmp_"
_MERGE_FANIN = 16


@dataclass
class SegmentResult:
    """What :func:`segment_image` did.

    Attributes
    ----------
    labels_url : str
        ``<zarr_url>/labels/<label_name>`` (level ``0`` and its pyramid).
    classes_url : str or None
        ``<zarr_url>/labels/<label_name>-classes`` for semantic models (uint8 class map).
    columns : dict of str to ndarray
        Region columns (:data:`segpipe.regions.COLUMNS`), one row per label.
    n_regions : int
    blocks_total, blocks_processed, blocks_skipped : int
        Blocks in the grid, segmented, and skipped as background.
    block, halo : int
        Core size and halo of a block (level-0 px).
    scale : float
        Model px per image px passed to ``segment_window``.
    timings : dict of str to float
        Seconds per step (``prepare``, ``pass1``, ``plan``, ``pass2``, ``pyramid``, ``total``).
    stats : ImageStats
        The normalisation statistics every block used.
    processed : list of (int, int)
        The blocks that were segmented, in raster order.
    tissue_area_px : int or None
        Foreground (tissue) area in level-0 pixels from the tissue mask; the whole image
        with ``blocks="all"``; None for an explicit block list.
    """

    labels_url: str
    classes_url: str | None
    columns: dict[str, np.ndarray]
    n_regions: int
    blocks_total: int
    blocks_processed: int
    blocks_skipped: int
    block: int
    halo: int
    scale: float
    label_name: str
    model: str
    timings: dict[str, float] = field(default_factory=dict)
    stats: ImageStats | None = None
    processed: list[tuple[int, int]] = field(default_factory=list)
    tissue_area_px: int | None = None


_POOL_ALIGN = 16  # down-sampling factor of the built-in U-Nets (and a divisor of chunk sizes)


def default_halo(card_halo: int, scale: float = 1.0) -> int:
    """Halo (level-0 px) for a model whose card asks for ``card_halo`` px at its resolution.

    ``card_halo / scale`` level-0 pixels give every core pixel its receptive field; one
    more pixel lets stitching see each core edge pixel's outside neighbour, and two more
    cover linear resampling when ``scale != 1``. See :mod:`segpipe.tiling` for why the
    halo must also cover the largest object to be reproduced exactly.
    """
    extra = 1 if scale == 1.0 else 3
    return max(2, math.ceil(card_halo / scale) + extra)


# ---------------------------------------------------------------------------- driver
def _pick_level(levels: Sequence[tuple[int, int]]) -> int:
    """The largest pyramid level whose long side is at most :data:`STATS_SIDE`."""
    for i, shape in enumerate(levels):
        if max(shape) <= STATS_SIDE:
            return i
    return len(levels) - 1


def _select(
    blocks: str | Iterable[tuple[int, int]] | None,
    grid: BlockGrid,
    thumb: np.ndarray,
    modality: str,
    cell: int = 128,
) -> tuple[list[tuple[int, int]], float | None, np.ndarray | None]:
    """Blocks to segment, the foreground fraction of the image (None when not measured) and
    the image-wide grid of ``cell``-px cells to predict (None: everything in the blocks)."""
    if isinstance(blocks, str):
        if blocks != "all":
            raise ConfigError(f"blocks={blocks!r}: use None (tissue mask), 'all' or a list of (by, bx)")
        return list(grid.blocks()), 1.0, None
    if blocks is not None:
        chosen = sorted({(int(b[0]), int(b[1])) for b in blocks})
        bad = [b for b in chosen if not grid.contains(b)]
        if bad:
            raise ConfigError(f"blocks {bad[:3]} are outside the {grid.grid_shape} block grid")
        return chosen, None, None
    from segpipe.tissue import select_from_thumb

    # grown by the halo: objects at the tissue edge up to the halo in size are kept whole
    chosen, cells, fraction = select_from_thumb(thumb, modality, grid.shape, grid.block[0], cell, grid.halo)
    return sorted(chosen), fraction, None if cells.all() else cells


def _edge(model: Model, scale: float, halo: int) -> int:
    """Level-0 px of a window edge whose probabilities lack context (:func:`_clear_edges`):
    the receptive radius of a binary model that states one (the classical model's
    smoothing), else 0 — a network's receptive field fades instead of ending, and its
    windows are left whole. Never more than leaves the core and 2 px around it."""
    radius = getattr(model.module, "radius", 0)
    if model.card.task != "binary" or not radius:
        return 0
    edge = math.ceil(radius / scale) + (0 if scale == 1.0 else 2)
    return max(0, min(edge, halo - 2))


def _gpu_workers(client: Any) -> int:
    from segpipe.cluster import count_gpu_workers

    return int(count_gpu_workers(client))


def segment_image(
    zarr_url: str,
    model: str | Path | Model,
    label_name: str | None = None,
    client: Any = None,
    halo: int | None = None,
    blocks: str | Iterable[tuple[int, int]] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 8,
    device: str | None = None,
    finish_threads: int = 2,
    gpu_group: int = GPU_GROUP,
    meta: ImageMeta | None = None,
) -> SegmentResult:
    """Segment an ingested OME-Zarr image into ``labels/<label_name>`` and region columns.

    Parameters
    ----------
    zarr_url : str
        An image written by :func:`segpipe.ingest.ingest_image` (local path or URL).
    model : str, Path or Model
        Built-in name, weights file with its card, or a loaded model (scattered once to
        the workers).
    label_name : str, optional
        Default: the model's name.
    client : distributed.Client, optional
        Run the block tasks on this cluster; without one they run in this process.
    halo : int, optional
        Context around each block (level-0 px); default :func:`default_halo` of the card.
        Objects larger than the halo are stitched but may be split differently than in a
        whole-image run (see :mod:`segpipe.tiling`).
    blocks : None, "all" or iterable of (by, bx)
        Blocks to segment: default the tissue / foreground mask's selection (grown by the
        halo), and inside those blocks only the tissue cells are predicted (the rest is
        background, label 0); "all" or a list predict every pixel of their blocks. The block
        size is always the level-0 shard (else chunk), so each task owns whole shards.
    storage_options : dict, optional
        fsspec options for a remote store.
    progress : callable, optional
        Called as ``progress(done, total)`` after each block task; ``total`` counts pass-1
        and pass-2 tasks.
    batch : int
        Tiles per ``model.predict`` call (where a window is tiled).
    device : str, optional
        Torch device for the model in each worker; default CUDA when the worker has a GPU.
    finish_threads : int
        Threads inside each pass-1 task that read windows ahead and finish blocks
        (post-processing, statistics, writes) while the model runs.
    gpu_group : int
        Blocks per pass-1 task on GPU workers (at most; see :data:`GPU_GROUP`).
    meta : ImageMeta, optional
        The image's metadata when the caller has it (as :func:`segpipe.ingest.ingest_image`
        returned it); read from ``zarr_url`` otherwise.

    Returns
    -------
    SegmentResult
    """
    from segpipe.ingest import read_meta
    from segpipe.io import join_url, remove
    from segpipe.labels import create_label_array, finalize_labels
    from segpipe.models import Model, load_model
    from segpipe.normalize import image_stats
    from segpipe.predict import MASK_CELL, default_grid, mask_context, model_scale

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if meta is None:
        meta = read_meta(zarr_url, storage_options)
    if isinstance(model, Model):
        loaded = model
    else:  # with a cluster the driver needs only the card: keep it off the GPU
        loaded = load_model(model, device=None if client is None else "cpu")
    card = loaded.card
    name = label_name or card.name
    scale = model_scale(meta.mpp, card)
    # Learned networks predict each window in one pass (default_grid). Their pooling grid
    # then follows the window origin, so the halo is aligned to 16 px (chunk origins are
    # multiples of 16) to keep windows and the whole image on the same pooling grid.
    predict_grid = default_grid(card)
    learned = predict_grid == "window"
    if halo is None:
        halo = default_halo(card.halo, scale)
        if learned and scale == 1.0:
            halo = -(-halo // _POOL_ALIGN) * _POOL_ALIGN
    halo = int(halo)
    if batch < 1:
        raise ConfigError(f"batch={batch} must be >= 1")
    if finish_threads < 1:
        raise ConfigError(f"finish_threads={finish_threads} must be >= 1")
    if halo < 2:
        raise ConfigError(f"halo={halo}: stitching and perimeters need at least 2 px of context")
    image_url = join_url(zarr_url, "0")
    level0 = _open_array(image_url, storage_options)
    inner = tuple(int(c) for c in level0.chunks[1:])
    shards = None if level0.shards is None else tuple(int(s) for s in level0.shards[1:])
    block = shards or inner
    grid = BlockGrid(meta.shape, block, halo)

    level = _pick_level(meta.levels)
    thumb_arr = level0 if level == 0 else _open_array(join_url(zarr_url, str(level)), storage_options)
    thumb = np.asarray(thumb_arr[:])  # level 0 itself for a small image: opened once
    stats = image_stats(thumb, card, meta.modality)
    todo, tissue_fraction, cells = _select(blocks, grid, thumb, meta.modality, MASK_CELL)
    semantic = card.task == "semantic"

    # the image was read above: no check that it exists
    labels_arr = create_label_array(zarr_url, name, meta.shape, inner, shards,
                                    storage_options=storage_options, check_image=False)  # fmt: skip
    classes_url, classes_arr = None, None
    if semantic:
        classes_arr = create_label_array(zarr_url, f"{name}-classes", meta.shape, inner, shards, dtype="uint8",
                                         storage_options=storage_options, check_image=False)  # fmt: skip
        classes_url = join_url(zarr_url, "labels", f"{name}-classes")
    labels_url = join_url(zarr_url, "labels", name)
    # One block: its provisional ids are the final ids (no border to stitch, offset 0), so
    # pass 1 writes the labels directly and there is no pass 2.
    direct = grid.n_blocks == 1
    tmp_url = join_url(labels_url, "0") if direct else join_url(zarr_url, f"{_TMP_PREFIX}{name}")
    if not direct:
        _create_tmp(tmp_url, labels_arr, storage_options)
    job = _Job(
        image_url=image_url, tmp_url=tmp_url, labels_url=join_url(labels_url, "0"),
        classes_url=None if classes_url is None else join_url(classes_url, "0"), grid=grid,
        stats=stats, modality=meta.modality, scale=scale, semantic=semantic,
        storage_options=storage_options, predict_grid=predict_grid, batch=batch, device=device,
        cell=MASK_CELL, context=mask_context(card.halo, scale), edge=_edge(loaded, scale, halo),
        finish_threads=finish_threads,
    )  # fmt: skip
    if client is None:  # the blocks are written by this process: with the arrays created above
        if direct:
            job.opened[tmp_url] = labels_arr
        if classes_arr is not None and job.classes_url is not None:
            job.opened[job.classes_url] = classes_arr
    pieces = {b: _cells_of(cells, grid, b, MASK_CELL) for b in todo}
    timings["prepare"] = time.perf_counter() - t_start

    done, total = 0, 2 * len(todo)

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    try:
        if client is None:
            # one block: its window is the whole image, i.e. level 0, already read as the thumbnail
            known = {(0, 0): thumb} if direct and level == 0 else None
            columns_partial, t = _local(job, todo, loaded, tick, pieces, direct, known)
        else:
            columns_partial, t = _distributed(
                job, todo, model, client, tick, pieces, direct, gpu_group
            )
        timings.update(t)
    finally:
        if not direct:
            remove(tmp_url, storage_options)
    t0 = time.perf_counter()
    image_scale = (meta.mpp, len(meta.levels))
    finalize_labels(zarr_url, name, client=client, storage_options=storage_options, base=labels_arr,
                    image_scale=image_scale)  # fmt: skip
    if classes_url is not None:
        finalize_labels(zarr_url, f"{name}-classes", client=client, storage_options=storage_options,
                        base=classes_arr, image_scale=image_scale)  # fmt: skip
    timings["pyramid"] = time.perf_counter() - t0
    image_id = zarr_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".ome.zarr")
    columns = finalize(columns_partial, meta.mpp, card.classes, image_id=image_id)
    timings["total"] = time.perf_counter() - t_start
    return SegmentResult(
        labels_url=labels_url, classes_url=classes_url, columns=columns,
        n_regions=len(columns["label"]), blocks_total=grid.n_blocks, blocks_processed=len(todo),
        blocks_skipped=grid.n_blocks - len(todo), block=int(block[0]), halo=halo, scale=scale,
        label_name=name, model=card.name, timings=timings, stats=stats,
        processed=todo,
        tissue_area_px=None if tissue_fraction is None
        else round(tissue_fraction * meta.shape[0] * meta.shape[1]),
    )  # fmt: skip


def _create_tmp(url: str, like: Any, storage_options: dict[str, Any] | None) -> None:
    import zarr

    from segpipe.io import remove, zarr_store

    remove(url, storage_options)
    zarr.create_array(
        store=zarr_store(url, storage_options), shape=like.shape, chunks=like.chunks,
        shards=like.shards, dtype="uint32", fill_value=0,
        compressors=zarr.codecs.ZstdCodec(level=1), config={"write_empty_chunks": False},
    )  # fmt: skip


def _local(
    job: _Job,
    todo: list[tuple[int, int]],
    model: Any,
    tick: Callable[[], None],
    pieces: dict[tuple[int, int], np.ndarray | None],
    direct: bool = False,
    known: dict[tuple[int, int], np.ndarray] | None = None,
) -> tuple[Partial, dict[str, float]]:
    t0 = time.perf_counter()
    records, parts = _pass1(job, todo, model, tick, [pieces[b] for b in todo], known)
    t1 = time.perf_counter()
    relabel = plan(records)
    t2 = time.perf_counter()
    out = []
    for record, part in zip(records, parts, strict=True):
        if record.count:
            out.append(part if direct else _pass2(job, record.block, *relabel.for_block(record.block), part))
        tick()
    merged = merge_partials(out) if out else Partial.empty(_n_channels(job))
    return merged, {"pass1": t1 - t0, "plan": t2 - t1, "pass2": time.perf_counter() - t2}


def _n_channels(job: _Job) -> int:
    return int(_open_array(job.image_url, job.storage_options).shape[0])


def _distributed(
    job: _Job,
    todo: list[tuple[int, int]],
    model_ref: Any,
    client: Any,
    tick: Callable[[], None],
    pieces: dict[tuple[int, int], np.ndarray | None],
    direct: bool = False,
    gpu_group: int = GPU_GROUP,
) -> tuple[Partial, dict[str, float]]:
    from distributed import as_completed

    from segpipe.models import Model

    t0 = time.perf_counter()
    token = uuid.uuid4().hex[:8]
    if isinstance(model_ref, Model):
        model_arg: Any = client.scatter(model_ref, broadcast=True, hash=False)
    else:
        model_arg = str(model_ref)
    # GPU workers get groups of blocks, so reading and finishing overlap the prediction;
    # groups shrink when there are fewer blocks than GPU workers × gpu_group
    n_gpu = _gpu_workers(client)
    gpu = n_gpu > 0
    size = max(1, min(gpu_group, -(-len(todo) // n_gpu))) if gpu else 1
    groups = [todo[i : i + size] for i in range(0, len(todo), size)]
    first = {
        client.submit(
            _pass1, job, g, model_arg, None, [pieces[b] for b in g],
            key=f"segpipe-pass1-{token}-{g[0][0]}-{g[0][1]}",
            resources={"GPU": 1} if gpu else None, retries=2, pure=False,
        ): g
        for g in groups
    }  # fmt: skip
    for fut in as_completed(list(first)):
        for _ in first[fut]:
            tick()
    records = [r for rs in client.gather(
        [client.submit(operator.getitem, f, 0, pure=False) for f in first]) for r in rs]  # fmt: skip
    parts = {
        b: client.submit(_nth_partial, f, i, pure=False)
        for f, g in first.items()
        for i, b in enumerate(g)
    }
    t1 = time.perf_counter()
    relabel = plan(records)
    t2 = time.perf_counter()
    second = []
    for record in records:
        b = record.block
        if record.count and direct:  # already final (one-block image): ticked below
            second.append(parts[b])
        elif record.count:
            second.append(client.submit(
                _pass2, job, b, *relabel.for_block(b), parts[b],
                key=f"segpipe-pass2-{token}-{b[0]}-{b[1]}", retries=2, pure=False,
            ))  # fmt: skip
        else:
            tick()
    for _ in as_completed(second):
        tick()
    while len(second) > 1:
        second = [
            client.submit(_merge_list, *second[i : i + _MERGE_FANIN], pure=False)
            for i in range(0, len(second), _MERGE_FANIN)
        ]
    merged = second[0].result() if second else Partial.empty(_n_channels(job))
    del first, parts
    return merged, {"pass1": t1 - t0, "plan": t2 - t1, "pass2": time.perf_counter() - t2}
