"""Segment an ingested OME-Zarr image block by block on Dask — the thin adapter.

:func:`segment_image` runs the two passes of :mod:`segpipe.stitch` as plain Dask tasks
(``client.submit``), or as the same functions in a loop in this process without a client:

1. **Once per image** (driver): metadata; normalisation statistics from the pyramid level
   closest to 2k px (:func:`segpipe.normalize.image_stats` — never per block); tissue
   mask from the same level (:func:`segpipe.tissue.tissue_mask`) → blocks worth
   processing, and inside them the :data:`~segpipe.predict.MASK_CELL`-px cells worth
   predicting (:func:`segpipe.tissue.tissue_cells`); both grow the mask by the halo, so an
   object at the tissue edge (up to the halo in size) is predicted whole. Background
   blocks are never read at full resolution nor predicted: their labels stay 0, which
   zarr stores as nothing. Inside a block, background cells get background probabilities
   (labels 0) and the tissue cells are predicted as few rectangles with context around
   them (:func:`segpipe.tiling.cover_cells`): at 40 % tissue this skips part of each block.
2. **Pass 1** (one task per block = shard, else chunk): read core + halo from the store,
   :func:`segpipe.predict.window_probabilities` (masked by the block's cells),
   post-process (:func:`segpipe.postprocess.to_labels`), write provisional core ids to a temporary
   array, measure the core (:func:`segpipe.regions.partial_stats`, with the window's
   level-0 pixels already in memory, so the image is read only once), return the border
   record (small); the partial stays on the worker.
3. **Plan** (driver): :func:`segpipe.stitch.plan` — offsets + small remaps.
4. **Pass 2** (one task per block with objects): provisional → final ids written to
   ``labels/<name>/0``; the block's partial is relabelled the same way; partials are
   merged by label in a tree of tasks and finalised into region columns.

Tasks take the store URL, the block index, the grid, the model name and the statistics —
never arrays — and load the model once per worker process (``load_model`` caches it; a
loaded :class:`~segpipe.models.Model` is scattered to the workers once). Inside pass 1,
windows are read ahead and finished (post-processing, stitch records, statistics, writes)
on two threads while the model runs the next block. When the cluster has GPU workers
(:func:`segpipe.cluster.count_gpu_workers`) a pass-1 task takes up to :data:`GPU_GROUP`
consecutive blocks (fewer when there are fewer blocks than GPU workers × group), so that
pipeline keeps the GPU busy, and asks for ``resources={"GPU": 1}`` at ``client.submit``
(annotations around array graphs are dropped, dask/dask#7036). The CPU work of a block
(post-processing, statistics) costs ~10× its prediction on a GPU, so
:func:`segpipe.cluster.connect` runs several single-threaded GPU workers per card.

Resolution: when the image's µm/px and the card's differ by more than 10 %, pass 1 runs
``segment_window(..., scale=image_mpp / card.mpp)`` on level-0 pixels (resampled on a grid
shared by all windows); choosing a closer pyramid level instead is not done yet.
"""

from __future__ import annotations

from typing import Any

from segpipe.infer._driver import GPU_GROUP, STATS_SIDE, SegmentResult, default_halo, segment_image

__all__ = ["GPU_GROUP", "STATS_SIDE", "SegmentResult", "default_halo", "segment_array", "segment_image"]


def __getattr__(name: str) -> Any:
    if name == "segment_array":  # the in-memory path lives with the models (segpipe.predict)
        from segpipe.predict import segment_array

        return segment_array
    raise AttributeError(f"module 'segpipe.infer' has no attribute {name!r}")
