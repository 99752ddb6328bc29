"""Prefect settings segpipe's flows need before ``prefect`` is imported."""

from __future__ import annotations

import os

# Offline by default (no telemetry calls), and the core's log lines (segpipe.*) are shown in
# the Prefect UI next to the flow's own. Users can still override either.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "segpipe")
# The ephemeral API server takes ~10 s to start on an idle machine; on a busy one the default
# 20 s limit is too tight ("Timed out while attempting to connect to ephemeral Prefect API").
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
