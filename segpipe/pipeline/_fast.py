"""The small-image fast path: one whole image in ONE Dask task.

For an image of at most a few blocks the per-image orchestration (Prefect stage tasks,
one Dask task per chunk and per pyramid level, two stitching passes that each wait for
the scheduler) costs far more than the work. :func:`small_image_task` runs on a Dask
worker and does the whole of :func:`~segpipe.pipeline.process_image` there with
``client=None``: the same ingest, tissue mask, block segmentation, stitching, label
pyramid, region statistics and table rows as the cluster path, executed in the worker
process, so the outputs are the same files and rows (``tests/test_pipeline.py`` checks
it). The flow submits every image of a run this way and gathers the outcomes; an image
too large for the fast path comes back as ``None`` before anything is written, and the
flow runs it through the normal path.

Retries keep the normal path's semantics: each stage is retried after a transient error
(:func:`~segpipe.pipeline.is_transient`) up to ``run.retries`` times, ``run.retry_delay_s``
apart, and Dask reruns the task when its worker dies (the rerun overwrites what the dead
one left, as any rerun does).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from segpipe.config import SegpipeConfig
from segpipe.pipeline._stages import ImageOutcome, ModelRef, is_transient, one_line, process_image

__all__ = ["FAST_MAX_BLOCKS", "fast_path_limit", "fits_fast_path", "retrying_runner", "small_image_task"]

log = logging.getLogger("segpipe.pipeline")

#: Largest image (in level-0 blocks = shards, else chunks) the fast path takes.
FAST_MAX_BLOCKS = 4


def fast_path_limit(n_images: int, threads: int) -> int:
    """Largest image (in level-0 blocks) the fast path takes in a run of ``n_images``.

    A whole-image task keeps one worker thread busy. With at least twice as many images
    as the cluster has threads, images of up to :data:`FAST_MAX_BLOCKS` blocks run whole;
    with fewer, only single-block images do, and a multi-block image goes stage by stage
    so that its blocks spread over every worker (one 2048² slide: 4 blocks on 2 workers).

    Examples
    --------
    >>> fast_path_limit(60, threads=2), fast_path_limit(1, threads=2)
    (4, 1)
    """
    return FAST_MAX_BLOCKS if n_images >= 2 * max(threads, 1) else 1


def fits_fast_path(shape: tuple[int, int], config: SegpipeConfig, max_blocks: int = FAST_MAX_BLOCKS) -> bool:
    """Whether an image of level-0 ``shape`` (Y, X) has at most ``max_blocks`` blocks.

    The block is the ingest's shard when set, else its chunk (what the engine uses).

    Examples
    --------
    >>> from segpipe.config import load_config
    >>> fits_fast_path((1024, 1024), load_config(None, {}))
    True
    """
    block = config.ingest_spec().block
    n = math.ceil(shape[0] / block) * math.ceil(shape[1] / block)
    return 0 < n <= max_blocks


def retrying_runner(retries: int, delay_s: float) -> Callable[[str, Callable[[], Any]], Any]:
    """A ``stage_runner`` for :func:`process_image` that retries transient errors.

    The same rule as the flows' Prefect stage tasks: a stage is tried again after an error
    :func:`is_transient` accepts, at most ``retries`` times, ``delay_s`` seconds apart.
    """

    def run(stage: str, thunk: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return thunk()
            except Exception as exc:
                if attempt >= retries or not is_transient(exc):
                    raise
                attempt += 1
                log.warning("%s failed (%s); retry %d of %d in %.0f s", stage, one_line(exc),
                            attempt, retries, delay_s)  # fmt: skip
                time.sleep(delay_s)

    return run


def _source_shape(uri: str, storage_options: dict[str, Any] | None) -> tuple[int, int] | None:
    """Level-0 (Y, X) from the source's header; None when it cannot be read (the normal
    path then reports the error as it always does)."""
    from segpipe.io import open_image

    try:
        with open_image(uri, storage_options) as src:
            y, x = src.level_shapes[0]
            return int(y), int(x)
    except Exception:
        return None


def _lock_owner(results: str, storage_options: dict[str, Any] | None) -> str | None:
    """The run holding the results lock (None: no lock, e.g. a direct call without a flow)."""
    from segpipe.lock import read_lock

    try:
        info = read_lock(results, storage_options)
    except Exception:
        return None
    return None if info is None else str(info.owner)


def small_image_task(item: Any, image_id: str, results: str, model: ModelRef, config: SegpipeConfig,
                     run_id: str, storage_options: dict[str, Any] | None = None,
                     max_blocks: int = FAST_MAX_BLOCKS) -> ImageOutcome | None:
    """Process one small image entirely in this process (a Dask task); never raises for a bad image.

    Parameters
    ----------
    item : archive entry or str
        The source image (``uri``, ``fingerprint``) or its URL, as for :func:`process_image`.
    image_id, results, run_id : str
        Where the outputs go and under which run.
    model : ModelRef
    config : SegpipeConfig
    storage_options : dict, optional
        fsspec options for the source and results.
    max_blocks : int
        Images with more level-0 blocks are left to the normal path.

    Returns
    -------
    ImageOutcome or None
        The outcome (``done`` or ``failed``, rows written as by :func:`process_image`), or
        None when the image is too large (or its header unreadable) — nothing is written then.
        When another run holds the results lock (the run that queued this task is gone),
        nothing is written either and the outcome is ``failed``.
    """
    import dask

    uri = item if isinstance(item, str) else item.uri
    holder = _lock_owner(results, storage_options)
    if holder not in (None, run_id):  # the run that queued this task lost the results to another
        return ImageOutcome(image_id, uri, "failed",
                            f"not processed: run {holder} holds the results lock now, not run {run_id}")
    shape = _source_shape(uri, storage_options)
    if shape is None or not fits_fast_path(shape, config, max_blocks):
        return None
    from segpipe import _malloc

    runner = retrying_runner(config.run.retries, config.run.retry_delay_s)
    # the graphs of ingest / pyramid run right here; image-sized buffers reused, not mmapped
    with dask.config.set(scheduler="sync"), _malloc.raised():
        return process_image(item, image_id, results, model, config, None, run_id,
                             storage_options=storage_options, stage_runner=runner)  # fmt: skip
