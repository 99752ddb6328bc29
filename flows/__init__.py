"""Prefect flows around the segpipe core (the only place Prefect is imported).

``archive_run``
    The nightly run of an archive into a results folder (see ``deploy/prefect.yaml``).
``segment_image``
    One image as tasks (ingest → segment → publish) with retries on transient errors.
``train_flow`` / ``evaluate_flow``
    Wrap :mod:`segpipe.train` and :mod:`segpipe.metrics`.

Prefect runs in the flow process only; chunk work goes to Dask as plain Dask tasks.

The names are imported on first use (PEP 562), so that ``flows._server`` can start
Prefect's API server before Prefect itself is imported (~2 s of CPU).
"""

from __future__ import annotations

import importlib
from typing import Any

from flows import _env  # noqa: F401  (sets Prefect defaults before prefect is imported)

_WHERE = {
    "archive_run": "flows.archive",
    "run_images": "flows.archive",
    "run_stage": "flows.image",
    "segment_image": "flows.image",
    "NullReporter": "flows.progress",
    "RunReporter": "flows.progress",
    "get_reporter": "flows.progress",
    "set_reporter": "flows.progress",
    "evaluate_flow": "flows.train",
    "train_flow": "flows.train",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'flows' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
