"""Results tables: Arrow schemas, atomic Parquet writes, the read-only DuckDB views.

Layout of a results folder (local path or ``s3://`` URL)::

    RESULTS/tables/regions/<image_id>/<run_id>.parquet   one file per image and run
    RESULTS/tables/images/<image_id>/<run_id>.parquet    one row: the image's status in that run
    RESULTS/tables/images/_skipped/<run_id>.parquet      a run's skipped rows, one file per run
    RESULTS/tables/images/_packed/<run_id>.parquet       a finished run's image rows, packed
    RESULTS/tables/regions/_packed/<run_id>.parquet      its regions of small images, packed
    RESULTS/tables/runs/<run_id>.parquet                 one row per run

This package alone owns the schemas (:data:`REGIONS_SCHEMA`, :data:`IMAGES_SCHEMA`,
:data:`RUNS_SCHEMA`, units in field metadata) and the writes. Visibility rule: the
``regions`` view shows only the rows of each image's latest ``done`` run, so a crash
(regions written, image row still ``running``) never exposes partial or duplicated rows.
"""

from segpipe.tables._pack import PackSummary, pack_run
from segpipe.tables._query import FORMATS, render_table, run_query
from segpipe.tables._read import (
    has_older_regions,
    image_states,
    latest_done,
    open_results,
    prune_regions,
    read_errors,
)
from segpipe.tables._schemas import (
    IMAGE_STATUSES,
    IMAGES_SCHEMA,
    REGIONS_SCHEMA,
    RUN_STATUSES,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    SCHEMAS,
)
from segpipe.tables._write import (
    init_results,
    regions_table,
    write_image_row,
    write_regions,
    write_run_row,
    write_skipped_rows,
)

__all__ = [
    "FORMATS",
    "IMAGE_STATUSES",
    "IMAGES_SCHEMA",
    "REGIONS_SCHEMA",
    "RUN_STATUSES",
    "RUNS_SCHEMA",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "has_older_regions",
    "image_states",
    "init_results",
    "latest_done",
    "open_results",
    "PackSummary",
    "pack_run",
    "prune_regions",
    "read_errors",
    "regions_table",
    "render_table",
    "run_query",
    "write_image_row",
    "write_regions",
    "write_run_row",
    "write_skipped_rows",
]
