"""The Arrow schemas of the three results tables, with units in field metadata.

These schemas are the single source of truth for the Parquet files under
``RESULTS/tables/``. Every field carries ``{"unit": ..., "description": ...}`` metadata
(read it back with ``pq.read_schema(path).field(name).metadata``).
"""

from __future__ import annotations

import pyarrow as pa

#: Version of the table layout; bumped when a column changes meaning or type.
SCHEMA_VERSION = "1"

IMAGE_STATUSES = ("running", "done", "failed", "skipped")
RUN_STATUSES = ("running", "done", "failed", "partial", "cancelled")

_FLOAT_LIST = pa.list_(pa.float64())
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_TIMINGS = pa.map_(pa.string(), pa.float64())


def _field(name: str, type_: pa.DataType, unit: str, description: str) -> pa.Field:
    return pa.field(name, type_, metadata={"unit": unit, "description": description})


def _schema(table: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(
        fields, metadata={"segpipe_table": table, "segpipe_schema_version": SCHEMA_VERSION}
    )


REGIONS_SCHEMA = _schema(
    "regions",
    [
        _field("image_id", pa.string(), "", "image id (RESULTS/images/<image_id>.ome.zarr)"),
        _field("run_id", pa.string(), "", "run that measured the region"),
        _field("label", pa.uint32(), "", "pixel value of the region in the label image"),
        _field("class", pa.string(), "", "class name from the model card"),
        _field("area_px", pa.int64(), "px", "area in level-0 pixels"),
        _field("area_um2", pa.float64(), "um2", "area in square micrometres (null without a pixel size)"),
        _field("centroid_y", pa.float64(), "px", "centroid row, level-0 pixels"),
        _field("centroid_x", pa.float64(), "px", "centroid column, level-0 pixels"),
        _field("bbox_y0", pa.int64(), "px", "bounding box first row (inclusive), level 0"),
        _field("bbox_x0", pa.int64(), "px", "bounding box first column (inclusive), level 0"),
        _field("bbox_y1", pa.int64(), "px", "bounding box end row (exclusive), level 0"),
        _field("bbox_x1", pa.int64(), "px", "bounding box end column (exclusive), level 0"),
        _field("mean_intensity", _FLOAT_LIST, "source", "mean intensity per channel"),
        _field("std_intensity", _FLOAT_LIST, "source", "standard deviation per channel"),
        _field("min_intensity", _FLOAT_LIST, "source", "minimum intensity per channel"),
        _field("max_intensity", _FLOAT_LIST, "source", "maximum intensity per channel"),
        _field("orientation", pa.float64(), "rad", "angle of the major axis to the row axis"),
        _field("eccentricity", pa.float64(), "1", "eccentricity of the fitted ellipse"),
        _field("major_axis_px", pa.float64(), "px", "major axis length of the fitted ellipse"),
        _field("minor_axis_px", pa.float64(), "px", "minor axis length of the fitted ellipse"),
        _field("perimeter_px", pa.float64(), "px", "perimeter length"),
    ],
)

#: Region columns a ``write_regions`` call must provide (DESIGN.md); others may be absent.
REQUIRED_REGION_COLUMNS = (
    "label", "class", "area_px", "area_um2", "centroid_y", "centroid_x",
    "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
)  # fmt: skip

IMAGES_SCHEMA = _schema(
    "images",
    [
        _field("image_id", pa.string(), "", "image id"),
        _field("run_id", pa.string(), "", "run this row belongs to"),
        _field("status", pa.string(), "", "running | done | failed | skipped"),
        _field("error", pa.string(), "", "one-line error when status is failed"),
        _field("source_uri", pa.string(), "", "URL of the source image"),
        _field("fingerprint", pa.string(), "", "source fingerprint (size, mtime/etag, ...)"),
        _field("image_uri", pa.string(), "", "URL of RESULTS/images/<image_id>.ome.zarr"),
        _field("labels_uri", pa.string(), "", "URL of the label image inside the OME-Zarr"),
        _field("n_regions", pa.int64(), "1", "number of regions found"),
        _field("model", pa.string(), "", "model name"),
        _field("model_sha256", pa.string(), "", "sha256 of the model weights file"),
        _field("config_hash", pa.string(), "", "hash of the settings that change results"),
        _field("segpipe_version", pa.string(), "", "segpipe version that wrote the row"),
        _field("mpp", pa.float64(), "um/px", "pixel size at level 0"),
        _field("height", pa.int64(), "px", "level-0 height"),
        _field("width", pa.int64(), "px", "level-0 width"),
        _field("n_channels", pa.int64(), "1", "number of channels"),
        _field("dtype", pa.string(), "", "source pixel dtype"),
        _field("modality", pa.string(), "", "brightfield | fluorescence | grey"),
        _field("tissue_area_px", pa.int64(), "px", "foreground (tissue) area, level-0 pixels"),
        _field("tissue_area_um2", pa.float64(), "um2", "foreground (tissue) area"),
        _field("n_blocks", pa.int64(), "1", "blocks segmented"),
        _field("n_blocks_total", pa.int64(), "1", "blocks in the image grid"),
        _field("started_at", _TIMESTAMP, "UTC", "when work on the image started"),
        _field("finished_at", _TIMESTAMP, "UTC", "when work on the image ended"),
        _field("updated_at", _TIMESTAMP, "UTC", "when this row was written"),
        _field("duration_s", pa.float64(), "s", "wall time spent on the image"),
        _field("timings", _TIMINGS, "s", "wall time per stage, e.g. timings['segment']"),
    ],
)

RUNS_SCHEMA = _schema(
    "runs",
    [
        _field("run_id", pa.string(), "", "run id"),
        _field("status", pa.string(), "", "running | done | failed | partial | cancelled"),
        _field("error", pa.string(), "", "one-line error when the run failed"),
        _field("source_uri", pa.string(), "", "archive URL the run processed"),
        _field("results_uri", pa.string(), "", "results folder URL"),
        _field("model", pa.string(), "", "model name"),
        _field("model_sha256", pa.string(), "", "sha256 of the model weights file"),
        _field("config_hash", pa.string(), "", "hash of the settings that change results"),
        _field("config", pa.string(), "", "the run's settings as JSON"),
        _field("segpipe_version", pa.string(), "", "segpipe version"),
        _field("n_images", pa.int64(), "1", "images discovered"),
        _field("n_done", pa.int64(), "1", "images segmented"),
        _field("n_failed", pa.int64(), "1", "images that failed"),
        _field("n_skipped", pa.int64(), "1", "images skipped as unchanged"),
        _field("n_regions", pa.int64(), "1", "regions found in this run"),
        _field("cluster", pa.string(), "", "Dask scheduler address or 'local'"),
        _field("n_workers", pa.int64(), "1", "Dask workers"),
        _field("host", pa.string(), "", "host that ran the flow"),
        _field("started_at", _TIMESTAMP, "UTC", "run start"),
        _field("finished_at", _TIMESTAMP, "UTC", "run end"),
        _field("updated_at", _TIMESTAMP, "UTC", "when this row was written"),
        _field("duration_s", pa.float64(), "s", "run wall time"),
        _field("timings", _TIMINGS, "s", "wall time per stage summed over images"),
    ],
)

SCHEMAS: dict[str, pa.Schema] = {
    "regions": REGIONS_SCHEMA,
    "images": IMAGES_SCHEMA,
    "runs": RUNS_SCHEMA,
}
