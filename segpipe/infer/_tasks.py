"""The block tasks of :func:`segpipe.infer.segment_image`: pass 1, pass 2 and the merging of
partials, run by Dask workers or in this process. Each takes a :class:`_Job` (small and
picklable: URLs, the grid, the statistics) and a block index — never arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segpipe.regions import Partial, merge_partials, partial_stats
from segpipe.stitch import CONNECTIVITY, BlockRecord, apply_relabel, provisional_block
from segpipe.tiling import BlockGrid

if TYPE_CHECKING:
    from segpipe.normalize import ImageStats


@dataclass(frozen=True)
class _Job:
    """Everything a block task needs, all small and picklable."""

    image_url: str  # level-0 array
    tmp_url: str  # provisional ids (pass 1); the labels array itself when the image is one block
    labels_url: str  # level-0 array
    classes_url: str | None
    grid: BlockGrid
    stats: ImageStats
    modality: str
    scale: float
    semantic: bool
    storage_options: dict[str, Any] | None
    connectivity: int = CONNECTIVITY
    predict_grid: str = "global"  # see segpipe.predict.predict_window
    batch: int = 8  # tiles per model.predict call
    device: str | None = None  # None: CUDA when the worker has it, else CPU
    cell: int = 128  # side of the tissue cells (segpipe.predict.MASK_CELL)
    context: int | None = None  # px predicted around masked rectangles (None: from the card)
    edge: int = 0  # see _clear_edges
    finish_threads: int = 2  # threads reading ahead and finishing blocks inside a pass-1 task
    # arrays this process has open already, by URL (in-process runs only; empty when shipped)
    opened: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _open_array(url: str, storage_options: dict[str, Any] | None, mode: str = "r") -> Any:
    import zarr

    from segpipe.io import zarr_store

    store = zarr_store(url, storage_options, read_only=mode == "r")
    return zarr.open_array(store=store, mode=mode, zarr_format=3)  # segpipe writes only v3


def _write_block(url: str, storage_options: dict[str, Any] | None, y0: int, x0: int, data: np.ndarray,
                 array: Any = None) -> None:
    """Write ``data`` at ``(y0, x0)`` (a block's core, on the chunk grid) of the array at ``url``
    (``array``: that array, already open for writing).

    The label arrays skip chunks of background (``write_empty_chunks=False``), a check zarr
    makes with a full comparison per chunk (~2 ms per megapixel of uint32). When every chunk
    of ``data`` holds a label, the check is skipped: the same chunks are written.
    """
    if array is None:
        array = _open_array(url, storage_options, "r+")
    cy, cx = (int(c) for c in array.chunks)
    if all(data[y : y + cy, x : x + cx].any() for y in range(0, data.shape[0], cy)
           for x in range(0, data.shape[1], cx)):  # fmt: skip
        array = array.with_config({"write_empty_chunks": True})
    array[y0 : y0 + data.shape[0], x0 : x0 + data.shape[1]] = data


def _read_window(job: _Job, block: tuple[int, int]) -> np.ndarray:
    y0, x0, y1, x1 = job.grid.window(block)
    return np.asarray(_open_array(job.image_url, job.storage_options)[:, y0:y1, x0:x1])


def _window_mask(job: _Job, block: tuple[int, int], cells: np.ndarray | None) -> np.ndarray | None:
    """The block window's pixel mask from its piece of the tissue-cell grid (None: all)."""
    if cells is None or cells.all():
        return None
    wy0, wx0, wy1, wx1 = job.grid.window(block)
    c = job.cell
    full = np.repeat(np.repeat(cells, c, axis=0), c, axis=1)
    dy, dx = wy0 - wy0 // c * c, wx0 - wx0 // c * c
    return full[dy : dy + wy1 - wy0, dx : dx + wx1 - wx0]


def _cells_of(
    cells: np.ndarray | None, grid: BlockGrid, block: tuple[int, int], cell: int
) -> np.ndarray | None:
    """The cells of the image-wide tissue-cell grid that a block's window overlaps."""
    if cells is None:
        return None
    wy0, wx0, wy1, wx1 = grid.window(block)
    return np.ascontiguousarray(cells[wy0 // cell : -(-wy1 // cell), wx0 // cell : -(-wx1 // cell)])


def _clear_edges(probs: np.ndarray, grid: BlockGrid, block: tuple[int, int], edge: int) -> None:
    """Set the outer ``edge`` px of a window to background (probability 0), on the sides
    inside the image: there the model saw padding instead of the image, so a pixel may be
    foreground in the window and not in the whole image. Left in, such pixels can join two
    objects of the core into one window label — a merge the whole image does not have
    (found by ``test_pointwise_tiled_equals_whole_image_property``). With ``edge`` = the
    model's radius every remaining pixel is exact, so the window's connected components
    only join what the whole image joins. Binary models only (``edge`` is 0 otherwise)."""
    if edge <= 0:
        return
    wy0, wx0, wy1, wx1 = grid.window(block)
    if wy0 > 0:
        probs[:, :edge] = 0
    if wy1 < grid.shape[0]:
        probs[:, -edge:] = 0
    if wx0 > 0:
        probs[:, :, :edge] = 0
    if wx1 < grid.shape[1]:
        probs[:, :, -edge:] = 0


def _finish(
    job: _Job, block: tuple[int, int], raw: np.ndarray, probs: np.ndarray, card: Any
) -> tuple[BlockRecord, Partial]:
    """Labels, provisional core ids (written to the temporary array), border record, partial."""
    from segpipe.postprocess import to_labels

    _clear_edges(probs, job.grid, block, job.edge)
    seg = to_labels(probs, card)
    del probs
    grid = job.grid
    wy0, wx0, _, _ = grid.window(block)
    classes = seg.classes if job.semantic else None
    core_ids, record, window_ids = provisional_block(
        seg.labels, grid, block, classes, job.connectivity
    )
    y0, x0, y1, x1 = grid.core(block)
    core = grid.core_in_window(block)
    if record.count:
        _write_block(job.tmp_url, job.storage_options, y0, x0, core_ids, job.opened.get(job.tmp_url))
        if job.classes_url is not None and seg.classes is not None:
            _write_block(job.classes_url, job.storage_options, y0, x0, seg.classes[core].astype(np.uint8),
                         job.opened.get(job.classes_url))
    part = partial_stats(seg.labels, raw, (wy0, wx0), seg.classes, core=core)
    provisional = np.searchsorted(window_ids, part.label).astype(np.uint32) + 1
    return record, part.relabel(provisional)


class _InlineExecutor:
    """A ``ThreadPoolExecutor`` stand-in that runs each call at once in the caller's thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, as a pool does
            fut.set_exception(exc)
        return fut


def _pass1(
    job: _Job,
    blocks: Sequence[tuple[int, int]],
    model: Any,
    tick: Callable[[], None] | None = None,
    cells: Sequence[np.ndarray | None] | None = None,
    known: dict[tuple[int, int], np.ndarray] | None = None,
) -> tuple[list[BlockRecord], list[Partial]]:
    """Pass 1 of consecutive blocks as a pipeline: the next windows are read and the
    previous ones finished (post-processing, stitch records, statistics, writes) on two
    threads while this thread runs the model, so I/O and CPU work overlap the (GPU)
    prediction. ``cells[i]``: block ``i``'s piece of the tissue-cell grid (None: all).
    ``known``: windows already in memory (e.g. a one-block image's level 0), not read again."""
    from segpipe import _malloc
    from segpipe.models import load_model
    from segpipe.predict import window_probabilities

    model = load_model(model, device=job.device)  # cached: once per worker process
    out: list[tuple[BlockRecord, Partial]] = []
    ahead = max(2, job.finish_threads)  # windows read ahead = finishes in flight
    known = known or {}

    def read(block: tuple[int, int]) -> np.ndarray:
        return known[block] if block in known else _read_window(job, block)

    # one block has nothing to overlap: no threads to start and hand the work between
    executor = ThreadPoolExecutor if len(blocks) > 1 else _InlineExecutor
    with _malloc.raised(), executor(max_workers=job.finish_threads) as pool:
        reads = [pool.submit(read, b) for b in blocks[:2]]
        finishing = []
        for i, block in enumerate(blocks):
            raw = reads[i].result()
            if i + 2 < len(blocks):
                reads.append(pool.submit(read, blocks[i + 2]))
            wy0, wx0, _, _ = job.grid.window(block)
            mask = _window_mask(job, block, None if cells is None else cells[i])
            probs = window_probabilities(
                model, raw, job.stats, (wy0, wx0), job.modality, job.scale,
                batch=job.batch, grid=job.predict_grid, mask=mask, context=job.context,
                cell=job.cell,
            )  # fmt: skip
            finishing.append(pool.submit(_finish, job, block, raw, probs, model.card))
            del probs
            reads[i] = None  # type: ignore[call-overload]  # free the window
            while finishing and (finishing[0].done() or len(finishing) > ahead):  # bounded memory
                out.append(finishing.pop(0).result())
                if tick is not None:
                    tick()
        for f in finishing:
            out.append(f.result())
            if tick is not None:
                tick()
    return [r for r, _ in out], [p for _, p in out]


def _pass2(
    job: _Job, block: tuple[int, int], offset: int, remap: dict[int, int], part: Partial
) -> Partial:
    """Write final ids of one block; return its partial under final ids."""
    y0, x0, y1, x1 = job.grid.core(block)
    provisional = _open_array(job.tmp_url, job.storage_options)[y0:y1, x0:x1]
    final = apply_relabel(provisional, offset, remap)
    _write_block(job.labels_url, job.storage_options, y0, x0, final)
    return part.relabel(apply_relabel(part.label, offset, remap))


def _nth_partial(result: tuple[list[BlockRecord], list[Partial]], i: int) -> Partial:
    return result[1][i]


def _merge_list(*parts: Partial) -> Partial:
    return merge_partials(list(parts))
