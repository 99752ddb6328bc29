"""The temporary Prefect API server `segpipe run` boots itself (flows._server)."""

from __future__ import annotations

import httpx
from prefect import flow
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

from flows._server import TemporaryServer, api_settings, boot_api_server


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
        assert boot_api_server() is None
    with api_settings(None):  # nothing booted: the settings stay as they are
        assert PREFECT_API_URL.value() == PREFECT_API_URL.value()
