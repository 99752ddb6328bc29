"""The nightly archive run: discover, skip unchanged, segment the rest, report.

Small images (at most :data:`segpipe.pipeline.FAST_MAX_BLOCKS` level-0 blocks) go to the
cluster as one Dask task each (:func:`flows.image.segment_small_images`): for them the
orchestration would otherwise cost more than the work. Larger ones run stage by stage as
``segment-image`` Prefect tasks. Skipped rows are written as one batch per run.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import time
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows import _env  # noqa: F401  (Prefect settings before prefect is imported)
from flows.image import segment_image, segment_small_images
from flows.progress import get_reporter
from segpipe import tables
from segpipe.cluster import worker_threads
from segpipe.config import SegpipeConfig, load_config
from segpipe.lock import ResultsLock
from segpipe.pipeline import (
    ImageOutcome,
    RunSummary,
    clear_staging,
    discover_items,
    fast_path_limit,
    new_run_id,
    one_line,
    open_client,
    plan_run,
    run_model,
    run_row,
    skipped_rows,
    summarise,
)

__all__ = ["archive_run", "run_images"]

#: Model used when the default ``nuclei`` has no installed weights and no model was asked for.


def run_images(items: list[Any], results: str, model: Any, config: SegpipeConfig, client: Any,
               run_id: str, lock: ResultsLock | None = None,
               storage_options: dict[str, Any] | None = None, fast: bool = True) -> list[ImageOutcome]:
    """Segment ``items``: small images as one Dask task each, the others as Prefect tasks.

    With a client and ``fast``, every image first goes to the cluster as one whole-image
    task (:func:`segpipe.pipeline.small_image_task`, gathered by one Prefect task); those
    larger than :data:`segpipe.pipeline.FAST_MAX_BLOCKS` blocks come back untouched and,
    like every image without the fast path, run as a ``segment-image`` Prefect task with
    per-stage retries, at most ``config.run.concurrency`` at once. With fewer images than
    twice the cluster's worker threads, only single-block images take the fast path: a
    whole-image task uses one thread, while the stage-by-stage path spreads an image's
    blocks over every worker.
    """
    outcomes: list[ImageOutcome] = []
    rest = list(items)
    if fast and client is not None and rest:
        max_blocks = fast_path_limit(len(rest), worker_threads(client))
        small, rest = segment_small_images(rest, results, model, config, client, run_id, lock, storage_options,
                                           max_blocks)
        outcomes += small
    return outcomes + _run_image_tasks(rest, results, model, config, client, run_id, lock, storage_options)


def _run_image_tasks(items: list[Any], results: str, model: Any, config: SegpipeConfig, client: Any,
                     run_id: str, lock: ResultsLock | None = None,
                     storage_options: dict[str, Any] | None = None) -> list[ImageOutcome]:
    """Submit images as Prefect tasks, at most ``config.run.concurrency`` at once."""
    reporter = get_reporter()
    logger = get_run_logger()
    pending, active, outcomes = list(items), {}, []
    limit = config.run.concurrency
    while pending or active:
        while pending and len(active) < limit:
            if lock is not None and lock.lost.is_set():
                logger.error("the results lock was taken over; not starting %d more images", len(pending))
                pending.clear()
                break
            item = pending.pop(0)
            reporter.image_started(item.image_id)
            fut = segment_image.submit(item, item.image_id, results, model, config, client, run_id,
                                       storage_options, reporter.chunks)
            active[fut.wrapped_future] = (fut, item)
        if not active:
            break
        finished, _ = cf.wait(list(active), return_when=cf.FIRST_COMPLETED)
        for wrapped in finished:
            fut, item = active.pop(wrapped)
            try:
                outcome = fut.result()
            except Exception as exc:  # the task itself broke (should not happen): image fails alone
                outcome = ImageOutcome(item.image_id, item.uri, "failed", one_line(exc))
            outcomes.append(outcome)
            reporter.image_finished(outcome)
    return outcomes


def _summary_markdown(summary: RunSummary) -> str:
    rows = [("run", summary.run_id), ("status", summary.status), ("images", summary.n_images),
            ("done", summary.done), ("skipped", summary.skipped), ("failed", summary.failed),
            ("regions", summary.regions), ("seconds", f"{summary.seconds:.1f}"),
            ("results", summary.results), ("report", summary.report or "")]
    md = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    if summary.failures:
        md += "\n\n| failed image | error |\n|---|---|\n" + "\n".join(
            f"| {i} | {e.replace('|', '/')} |" for i, e in summary.failures)
    return f"## segpipe run {summary.run_id}\n\n{md}\n"


@flow(name="archive-run", task_runner=ThreadPoolTaskRunner(max_workers=64), log_prints=False)
def archive_run(source: str, results: str, model: str | None = None, config: str | None = None,
                overrides: dict[str, Any] | None = None) -> RunSummary:
    """Segment every new or changed image of an archive into a results folder.

    Parameters
    ----------
    source : str
        Archive folder, local or ``s3://bucket/prefix``.
    results : str
        Results folder, local or ``s3://``.
    model : str, optional
        Built-in model name or weights path; default: the config's ``infer.model``
        (``nuclei``, or ``classical`` with a note when nuclei's weights are not installed).
    config : str, optional
        A TOML / YAML settings file.
    overrides : dict, optional
        Settings that win over file and environment, e.g. ``{"run.concurrency": 4}``.

    Returns
    -------
    RunSummary
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    cfg = load_config(config, overrides)
    ref = run_model(model, cfg)
    if ref.fallback_note:
        logger.warning(ref.fallback_note)
    run_id = new_run_id()
    results = str(results).rstrip("/")
    with ResultsLock(results, owner=run_id, lease_s=cfg.run.lease_s) as lock:
        tables.init_results(results)
        states = tables.image_states(results)
        items = discover_items(source, cfg, states=states)
        to_run, to_skip = plan_run(items, states, ref, cfg)
        logger.info("run %s: %d images, %d to segment, %d unchanged", run_id, len(items), len(to_run), len(to_skip))
        tables.write_run_row(results, run_row(run_id, source, results, ref, cfg, "running", started,
                                              n_images=len(items), n_skipped=len(to_skip)))
        tables.write_skipped_rows(results, run_id, skipped_rows(to_skip, states, run_id))
        if to_run:  # staging copies of crashed runs (this run holds the lock: none is in use)
            clear_staging(results)
        get_reporter().run_started(run_id, len(to_run), len(to_skip))
        outcomes: list[ImageOutcome] = []
        with open_client(cfg) if to_run else contextlib.nullcontext() as client:
            if to_run:
                get_reporter().cluster_started(client)
                outcomes = run_images(to_run, results, ref, cfg, client, run_id, lock)
                if not lock.lost.is_set():  # else the staging folder is another run's now
                    _clear_staging(results, logger)
            summary = summarise(run_id, source, results, ref, outcomes, len(items), len(to_skip), t0)
            tables.write_run_row(results, run_row(run_id, source, results, ref, cfg, summary.status, started,
                                                  client=None, outcomes=outcomes, n_images=len(items),
                                                  n_skipped=len(to_skip)))
            summary.report = _write_report(results, run_id, logger, client)  # pictures on the idle workers
        if outcomes and not lock.lost.is_set():  # a file per run, not per image, for queries
            _pack(results, run_id, outcomes, logger)
    summary.seconds = time.perf_counter() - t0
    create_markdown_artifact(_summary_markdown(summary), key="segpipe-run", description=f"segpipe run {run_id}")
    for line in summary.lines():
        logger.info(line)
    return summary


def _clear_staging(results: str, logger: Any) -> None:
    try:
        clear_staging(results)
    except Exception as exc:  # housekeeping: the next run clears it again
        logger.warning("could not clear %s/images/.staging: %s", results, one_line(exc))


def _pack(results: str, run_id: str, outcomes: list[ImageOutcome], logger: Any) -> None:
    try:
        tables.pack_run(results, run_id, [o.image_id for o in outcomes if o.status in ("done", "failed")])
    except Exception as exc:  # housekeeping: the run's files stay as they are, all readable
        logger.warning("could not pack the run's table files: %s", one_line(exc))


def _write_report(results: str, run_id: str, logger: Any, client: Any = None) -> str | None:
    try:
        from segpipe.report import write_report
    except ImportError:
        logger.warning("no HTML report: segpipe.report is not available")
        return None
    try:
        return str(write_report(results, run_id, client=client))
    except Exception as exc:  # the run is committed already: a report problem is a warning
        logger.warning("no HTML report: %s", one_line(exc))
        return None
