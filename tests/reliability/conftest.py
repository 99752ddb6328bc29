"""Fixtures for the reliability suite (issue 9): real processes, real faults.

``prefect_api``
    A temporary Prefect API server for the session, so each ``segpipe run`` subprocess
    connects to it instead of starting its own ephemeral server (~10 s each).
``run_segpipe(archive, results, env=None, timeout=240, args=(), settings=None)``
    Runs ``segpipe run ARCHIVE --out RESULTS`` in a subprocess (classical model, small
    chunks) and returns the :class:`subprocess.CompletedProcess` (text stdout / stderr).
``popen_env(settings=None, **extra)``
    The environment of such a subprocess, for tests that start it themselves.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import SEGPIPE, SETTINGS, settings_env


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A temporary Prefect API for the whole session; yields its URL."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    import flows  # noqa: F401  (Prefect defaults before prefect is imported)

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def run_segpipe(prefect_api: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_segpipe(archive, results, env=None, timeout=240, args=())`` → CompletedProcess."""

    def run(archive: Path | str, results: Path | str, env: dict[str, str] | None = None,
            timeout: float = 240, args: tuple[str, ...] = (),
            settings: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        full = dict(os.environ)
        full.update(settings_env({**SETTINGS, **(settings or {})}))
        full.update(PREFECT_API_URL=prefect_api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    SEGPIPE_RUN__N_WORKERS="1", SEGPIPE_RUN__THREADS_PER_WORKER="1")
        full.update(env or {})
        return subprocess.run([SEGPIPE, "run", str(archive), "--out", str(results), *args],
                              env=full, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)

    return run


@pytest.fixture
def popen_env(prefect_api: str) -> Callable[..., dict[str, str]]:
    """``popen_env(**extra)``: the environment of a ``segpipe run`` subprocess."""

    def make(settings: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
        full = dict(os.environ)
        full.update(settings_env({**SETTINGS, **(settings or {})}))
        full.update(PREFECT_API_URL=prefect_api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    SEGPIPE_RUN__N_WORKERS="1", SEGPIPE_RUN__THREADS_PER_WORKER="1")
        full.update(extra)
        return full

    return make
