"""The temporary Prefect API server `segpipe run` boots itself (flows._server)."""

from __future__ import annotations

import subprocess
import sys

import httpx
from prefect import flow
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

from flows._server import (
    TemporaryServer,
    api_settings,
    await_api_server,
    spawn_api_server,
)


@flow
def _answer() -> int:
    return 42


def test_temporary_server_runs_a_flow_and_stops() -> None:
    server = TemporaryServer()
    try:
        url = server.start(timeout_s=180)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        with api_settings(server):
            assert PREFECT_API_URL.value() == url
            assert not PREFECT_UI_URL.value()  # its UI is off: no links to it
            assert _answer() == 42
        process = server.process
        assert process is not None
    finally:
        server.stop()
    assert process.poll() is not None  # terminated
    assert server.process is None and server.url is None
    server.stop()  # idempotent


def test_no_temporary_server_when_an_api_is_configured() -> None:
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert await_api_server(spawn_api_server()) is None
    with api_settings(None):  # nothing booted: the settings stay as they are
        assert PREFECT_API_URL.value() == PREFECT_API_URL.value()


def test_spawning_imports_no_prefect() -> None:
    """The server is started before Prefect (~2 s of CPU) is imported: `flows` loads its
    flows on first use only."""
    code = ("import sys, flows._server as s; server = s.spawn_api_server(); "
            "assert 'prefect' not in sys.modules, 'prefect imported'; server and server.stop(); "
            "from flows import archive_run; assert 'prefect' in sys.modules")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_spawned_server_is_stopped_when_an_api_is_configured() -> None:
    server = spawn_api_server()
    assert server is not None and server.process is not None
    process = server.process
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert await_api_server(server) is None
    assert process.poll() is not None and server.process is None
    assert await_api_server(None) is None
