"""Prefect flows around the segpipe core (the only place Prefect is imported).

``archive_run``
    The nightly run of an archive into a results folder (see ``deploy/prefect.yaml``).
``segment_image``
    One image as tasks (ingest → segment → publish) with retries on transient errors.
``train_flow`` / ``evaluate_flow``
    Wrap :mod:`segpipe.train` and :mod:`segpipe.metrics`.

Prefect runs in the flow process only; chunk work goes to Dask as plain Dask tasks.
"""

from flows import _env  # noqa: F401  (sets Prefect defaults before prefect is imported)
from flows.archive import archive_run, run_images
from flows.image import run_stage, segment_image
from flows.progress import NullReporter, RunReporter, get_reporter, set_reporter
from flows.train import evaluate_flow, train_flow

__all__ = [
    "NullReporter",
    "RunReporter",
    "archive_run",
    "evaluate_flow",
    "get_reporter",
    "run_images",
    "run_stage",
    "segment_image",
    "set_reporter",
    "train_flow",
]
