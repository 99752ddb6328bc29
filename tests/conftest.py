"""Shared fixtures: a moto S3 server, a tiny Dask cluster, single-threaded torch.

``s3``
    Session-scoped moto ``ThreadedMotoServer`` on a free port of 127.0.0.1. Yields an
    :class:`S3Env` with ``endpoint_url``, ``storage_options`` (for fsspec / s3fs / zarr),
    ``fs`` (an ``s3fs.S3FileSystem``) and ``bucket(name)`` that creates a fresh, uniquely
    named bucket and returns its name (use ``f"s3://{name}/..."``).
``dask_client``
    Session-scoped ``distributed.Client`` on a ``LocalCluster`` with two single-threaded
    worker processes and no dashboard.
``io_helpers``
    The module ``tests/io/helpers.py`` (writers of small test images in every format
    segpipe reads), loaded by path so its name never clashes with other test helpers.
``torch_threads`` (autouse)
    ``torch.set_num_threads(1)`` when torch has already been imported.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Env:
    """A running moto S3 server and the options to reach it."""

    endpoint_url: str
    storage_options: dict[str, Any]
    fs: Any
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def bucket(self, name: str = "bucket") -> str:
        """Create a fresh bucket whose name starts with ``name``; return its name."""
        full = f"{name.lower()}-{next(self._counter)}"
        if len(full) < 3:  # moto needs at least 3 characters
            full = f"{full}-bk"
        self.fs.mkdir(full)
        self.fs.invalidate_cache()
        return full


_FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Env]:
    """A moto S3 server for the whole session (see module docstring)."""
    pytest.importorskip("moto")
    import s3fs
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in _FAKE_ENV}
    os.environ.update(_FAKE_ENV)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # Worker processes started later inherit these, so they reach the same server.
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    storage_options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint},
    }
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(**storage_options)
    try:
        yield S3Env(endpoint_url=endpoint, storage_options=storage_options, fs=fs)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A session-wide ``distributed.Client`` on 2 single-threaded worker processes."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(autouse=True)
def torch_threads() -> None:
    """Keep torch single-threaded in tests (only when a test already imported torch)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def io_helpers() -> ModuleType:
    """``tests/io/helpers.py``: writers of SVS / OME-TIFF / pyramid / PNG / JPEG / zarr files."""
    name = "segpipe_tests_io_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).parent / "io" / "helpers.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
