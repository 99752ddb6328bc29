"""Schedules: serve the archive run on a cron (needs a Prefect server)."""

from __future__ import annotations

from typing import Any

from flows import _env  # noqa: F401
from flows.archive import archive_run
from segpipe.errors import ConfigError

__all__ = ["check_schedule", "serve_archive"]


def check_schedule(cron: str) -> None:
    """Raise :class:`ConfigError` when no Prefect server is configured or ``cron`` is not a
    cron expression (checked by Prefect's own ``CronSchedule``)."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ConfigError("segpipe serve needs a Prefect server: run `prefect server start` and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api (see deploy/README.md)")
    try:
        CronSchedule(cron=cron)
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError(f"--cron {cron!r} is not a valid cron expression (minute hour day month weekday, "
                          "UTC), e.g. '0 2 * * *'") from exc


def serve_archive(source: str, results: str, cron: str = "0 2 * * *", name: str = "nightly",
                  model: str | None = None, config: str | None = None,
                  overrides: dict[str, Any] | None = None) -> None:
    """Serve ``archive_run`` for one archive on ``cron`` until interrupted.

    Raises
    ------
    ConfigError
        No Prefect server configured (``PREFECT_API_URL``) or an invalid cron expression.
    """
    check_schedule(cron)
    archive_run.serve(name=name, cron=cron,
                      parameters={"source": source, "results": results, "model": model, "config": config,
                                  "overrides": overrides or {}},
                      description=f"segpipe: segment new images of {source} into {results}")
