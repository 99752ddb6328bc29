"""The per-image pipeline as plain functions (no Prefect): the flows and the CLI call these.

One image goes :func:`ingest_stage` → :func:`segment_stage` → :func:`publish_stage`;
:func:`process_image` chains them (``running`` row first, ``done`` row last, ``failed``
with a one-line error on any exception). :func:`plan_run` decides what a run skips. :func:`small_image_task` is the fast path:
a small image's whole pipeline in one Dask task. :func:`plan_archive` /
:func:`record_noop_run` let ``segpipe run`` finish a run with nothing to do before
Prefect, Dask or torch start; :func:`prestart_client` starts the cluster while Prefect does.
"""

from segpipe.pipeline._fast import (
    FAST_MAX_BLOCKS,
    fast_path_limit,
    fits_fast_path,
    retrying_runner,
    small_image_task,
)
from segpipe.pipeline._plan import (
    BUILTIN_MODELS,
    RunPlan,
    peek_model,
    plan_archive,
    record_noop_run,
)
from segpipe.pipeline._run import (
    ArchiveItem,
    RunSummary,
    discover_items,
    open_client,
    prestart_client,
    run_row,
    summarise,
)
from segpipe.pipeline._stages import (
    FALLBACK_MODEL,
    IMAGE_FAILURE,
    LABELS_NAME,
    ImageOutcome,
    ModelRef,
    Progress,
    clear_staging,
    image_url,
    ingest_stage,
    is_transient,
    new_run_id,
    one_line,
    plan_run,
    process_image,
    publish_stage,
    resolve_model,
    run_model,
    segment_stage,
    skipped_rows,
    staging_url,
)

__all__ = [
    "ArchiveItem",
    "BUILTIN_MODELS",
    "RunPlan",
    "ImageOutcome",
    "FALLBACK_MODEL",
    "FAST_MAX_BLOCKS",
    "IMAGE_FAILURE",
    "LABELS_NAME",
    "ModelRef",
    "Progress",
    "RunSummary",
    "clear_staging",
    "discover_items",
    "fast_path_limit",
    "fits_fast_path",
    "image_url",
    "ingest_stage",
    "is_transient",
    "new_run_id",
    "one_line",
    "open_client",
    "peek_model",
    "plan_archive",
    "prestart_client",
    "record_noop_run",
    "plan_run",
    "process_image",
    "publish_stage",
    "resolve_model",
    "run_model",
    "retrying_runner",
    "run_row",
    "segment_stage",
    "skipped_rows",
    "small_image_task",
    "staging_url",
    "summarise",
]
