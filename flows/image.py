"""One image as Prefect tasks: ingest → segment → publish, each retried on transient errors.

The chunk work inside a stage goes to Dask through the engine; Prefect only sees the
stages of an image (never a task per tile), and only in the flow process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from flows import _env  # noqa: F401  (Prefect settings before prefect is imported)
from segpipe.config import SegpipeConfig
from segpipe.pipeline import (
    IMAGE_FAILURE,
    ImageOutcome,
    ModelRef,
    is_transient,
    one_line,
    process_image,
)

__all__ = ["run_stage", "segment_image", "segment_small_images"]


def _transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry a stage only when its error is transient (S3 / OSError / lost worker)."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


@task(name="stage", cache_policy=NONE, retry_condition_fn=_transient)
def run_stage(stage: str, image_id: str, thunk: Callable[[], Any]) -> Any:
    """Run one stage of one image (the thunk calls the plain pipeline function)."""
    get_run_logger().info("%s: %s", image_id, stage)
    return thunk()


def _artifact(outcome: ImageOutcome, results: str, run_id: str) -> None:
    logger = get_run_logger()
    overlay = None
    if outcome.status == "done" and "://" not in results:
        try:
            from segpipe.show import render_overlay

            overlay = render_overlay(results, outcome.image_id, f"{results}/reports/{run_id}/{outcome.image_id}.png",
                                     max_size=512)
        except Exception as exc:  # an overlay is a nicety: never fail the image for it
            logger.warning("%s: no overlay PNG: %s", outcome.image_id, one_line(exc))
    rows = [("status", outcome.status), ("regions", outcome.n_regions), ("seconds", f"{outcome.seconds:.1f}"),
            ("labels", outcome.labels_uri or ""), ("overlay PNG", str(overlay or "")), ("error", outcome.error or "")]
    rows += [(f"{k} (s)", f"{v:.1f}") for k, v in outcome.timings.items()]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows)
    key = "image-" + "".join(c if c.isalnum() else "-" for c in outcome.image_id.lower())[:60]
    create_markdown_artifact(f"### {outcome.image_id}\n\n{table}\n", key=key.strip("-") or "image",
                             description=f"segpipe image {outcome.image_id}")


@task(name="segment-image", cache_policy=NONE, task_run_name="segment {image_id}")
def segment_image(item: Any, image_id: str, results: str, model: ModelRef, config: SegpipeConfig,
                  client: Any, run_id: str, storage_options: dict[str, Any] | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> ImageOutcome:
    """Ingest, segment and publish one image (it fails alone: the outcome says how)."""
    logger = get_run_logger()
    retries, delay = config.run.retries, config.run.retry_delay_s

    def stage_runner(stage: str, thunk: Callable[[], Any]) -> Any:
        runner = run_stage.with_options(name=stage, retries=retries, retry_delay_seconds=delay,
                                        task_run_name=f"{stage} {image_id}")
        return runner(stage, image_id, thunk)

    logger.info("%s: starting (%s)", image_id, getattr(item, "uri", item))
    outcome = process_image(item, image_id, results, model, config, client, run_id,
                            storage_options=storage_options, progress=progress, stage_runner=stage_runner)
    if outcome.status == "failed":  # marked: the CLI prints the outcome itself (reporter)
        logger.error("%s: failed: %s", image_id, outcome.error, extra={IMAGE_FAILURE: image_id})
    else:
        logger.info("%s: %d regions in %.1f s", image_id, outcome.n_regions, outcome.seconds)
    try:
        _artifact(outcome, results, run_id)
    except Exception as exc:
        logger.warning("%s: no artifact: %s", image_id, one_line(exc))
    return outcome


@task(name="segment-small-images", cache_policy=NONE)
def segment_small_images(items: list[Any], results: str, model: ModelRef, config: SegpipeConfig, client: Any,
                         run_id: str, lock: Any = None, storage_options: dict[str, Any] | None = None,
                         max_blocks: int | None = None) -> tuple[list[ImageOutcome], list[Any]]:
    """Each image as ONE Dask task (:func:`segpipe.pipeline.small_image_task`), gathered here.

    One Prefect task for the whole batch instead of four per image; retries of transient
    errors happen per stage inside the Dask task, as in :func:`segment_image`.

    Returns
    -------
    (list of ImageOutcome, list of items)
        The outcomes of the images done here, and the items left to the normal path
        (larger than the fast path takes, or whose task was lost with its worker).
    """
    from distributed import as_completed

    from flows.progress import get_reporter
    from segpipe.pipeline import small_image_task

    logger = get_run_logger()
    reporter = get_reporter()
    token = os.urandom(3).hex()
    extra = {} if max_blocks is None else {"max_blocks": max_blocks}
    futures = {client.submit(small_image_task, item, item.image_id, results, model, config, run_id,
                             storage_options, **extra, key=f"segpipe-image-{item.image_id}-{token}", pure=False): item
               for item in items}  # fmt: skip
    outcomes: list[ImageOutcome] = []
    left: list[Any] = []
    for fut in as_completed(list(futures)):
        item = futures.pop(fut)
        if lock is not None and lock.lost.is_set():
            logger.error("the results lock was taken over; not waiting for %d more images", len(futures) + 1)
            client.cancel(list(futures) + [fut])
            break
        try:
            outcome = fut.result()
        except Exception as exc:  # the task was lost (worker died too often…): the normal path retries it
            logger.warning("%s: whole-image task lost (%s); running it stage by stage", item.image_id, one_line(exc))
            left.append(item)
            continue
        if outcome is None:
            left.append(item)
            continue
        outcomes.append(outcome)
        if outcome.status == "failed":  # marked: the CLI prints the outcome itself (reporter)
            logger.error("%s: failed: %s", item.image_id, outcome.error, extra={IMAGE_FAILURE: item.image_id})
        reporter.image_finished(outcome)
    if outcomes:
        try:
            _batch_artifact(outcomes)
        except Exception as exc:
            logger.warning("no artifact for the small images: %s", one_line(exc))
    logger.info("%d small image(s) done as whole-image tasks, %d left to the stage-by-stage path",
                len(outcomes), len(left))  # fmt: skip
    return outcomes, left


def _batch_artifact(outcomes: list[ImageOutcome]) -> None:
    head = "| image | status | regions | seconds | error |\n|---|---|---|---|---|\n"
    rows = [f"| {o.image_id} | {o.status} | {o.n_regions} | {o.seconds:.1f} | {(o.error or '').replace('|', '/')} |"
            for o in outcomes[:1000]]  # fmt: skip
    more = f"\n\n{len(outcomes) - 1000} more not shown" if len(outcomes) > 1000 else ""
    create_markdown_artifact(f"### small images ({len(outcomes)})\n\n{head}" + "\n".join(rows) + more + "\n",
                             key="segpipe-small-images", description="segpipe images done as whole-image tasks")
