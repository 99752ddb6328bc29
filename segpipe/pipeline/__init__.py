"""The per-image pipeline as plain functions (no Prefect): the flows and the CLI call these.

One image goes :func:`ingest_stage` → :func:`segment_stage` → :func:`publish_stage`;
:func:`process_image` chains them (``running`` row first, ``done`` row last, ``failed``
with a one-line error on any exception). :func:`plan_run` decides what a run skips.
"""

from segpipe.pipeline._run import (
    ArchiveItem,
    RunSummary,
    discover_items,
    open_client,
    run_row,
    summarise,
)
from segpipe.pipeline._stages import (
    FALLBACK_MODEL,
    LABELS_NAME,
    ImageOutcome,
    ModelRef,
    Progress,
    image_url,
    ingest_stage,
    is_transient,
    new_run_id,
    one_line,
    plan_run,
    process_image,
    publish_stage,
    resolve_model,
    segment_stage,
    skipped_rows,
)

__all__ = [
    "ArchiveItem",
    "ImageOutcome",
    "FALLBACK_MODEL",
    "LABELS_NAME",
    "ModelRef",
    "Progress",
    "RunSummary",
    "discover_items",
    "image_url",
    "ingest_stage",
    "is_transient",
    "new_run_id",
    "one_line",
    "open_client",
    "plan_run",
    "process_image",
    "publish_stage",
    "resolve_model",
    "run_row",
    "segment_stage",
    "skipped_rows",
    "summarise",
]
