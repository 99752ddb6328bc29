"""Fixtures for the flow tests: one Prefect test server for the session, tiny archives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

#: Settings that keep flow tests fast: the classical model, small chunks, 2 images at once.
FAST = {"infer.model": "classical", "ingest.chunk": 256, "ingest.min_size": 128, "run.concurrency": 2,
        "run.retries": 1, "run.retry_delay_s": 0}


def blobs(path: Path | str, side: int = 320, seed: int = 0, n: int = 10) -> Path:
    """A grey TIFF with ``n`` bright discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    img = np.full((side, side), 20, np.float32)
    for cy, cx in rng.integers(15, side - 15, (n, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(25, 80)] = 170
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    tifffile.imwrite(path, img)
    return Path(path)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A temporary Prefect API for the whole session (slow to start); yields its URL."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    import flows  # noqa: F401  (Prefect defaults before prefect is imported)

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def fast(dask_client) -> dict:
    """Overrides for archive_run: the fast settings on the session's Dask cluster."""
    return {**FAST, "run.cluster": dask_client.scheduler.address}


@pytest.fixture
def archive(tmp_path) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    blobs(folder / "a.tif", seed=1)
    blobs(folder / "b.tif", seed=2)
    return folder


@pytest.fixture
def make_image():
    """``make_image(path, seed=..)`` writes a small blob image."""
    return blobs
