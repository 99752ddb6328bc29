"""Boot Prefect's temporary API server early, while the CLI does other work.

Without ``PREFECT_API_URL`` the first flow call starts a temporary API server (a uvicorn
subprocess: ~6 s on an idle machine, far more on a busy one) and waits for it. ``segpipe
run`` starts it right after planning (:func:`spawn_api_server`), so that it boots while the
Dask cluster starts and Prefect is imported, waits for it (:func:`await_api_server`) only
when the flow is about to run, and runs its flow against it (:func:`api_settings`).

The server is the one Prefect's ephemeral mode starts — the same uvicorn command and
environment as ``prefect.server.api.server.SubprocessASGIServer`` — but started here
without importing ``prefect.server`` into the CLI's process: that import alone costs
~2.7 s of CPU, which on a small machine the starting Dask workers would otherwise get.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from flows import _env  # noqa: F401  (Prefect settings before prefect is imported)

__all__ = ["TemporaryServer", "api_settings", "await_api_server", "spawn_api_server"]

#: The environment Prefect gives its ephemeral server (no UI, ephemeral services).
_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
_PORT_IN_USE = 3  # uvicorn's exit status when its port was taken meanwhile


class TemporaryServer:
    """A Prefect API server in a subprocess, stopped by :meth:`stop` or at exit."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self._port = 0
        self._lock = threading.Lock()
        atexit.register(self.stop)  # a no-op unless a process is still running then

    def spawn(self) -> None:
        """Start the server process (it boots on its own; :meth:`start` waits for it)."""
        spec = importlib.util.find_spec("prefect")
        if spec is None or spec.origin is None:
            raise RuntimeError("prefect is not installed")
        app_dir = str(Path(spec.origin).parent.parent)
        self._port = _free_port()
        with self._lock:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self._port),
                 "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, **_SERVER_ENV},
            )  # fmt: skip

    def start(self, timeout_s: float) -> str:
        """Spawn it (unless :meth:`spawn` did) and wait until ``/api/health`` answers; return
        the API URL.

        Raises
        ------
        RuntimeError
            The server exited or did not answer within ``timeout_s``.
        """
        import httpx

        deadline = time.monotonic() + timeout_s
        if self.process is None:
            self.spawn()
        for _ in range(5):
            process, url = self.process, f"http://127.0.0.1:{self._port}/api"
            assert process is not None
            with httpx.Client() as client:
                while time.monotonic() < deadline:
                    status = process.poll()
                    if status == _PORT_IN_USE:
                        break  # another port
                    if status is not None:
                        raise RuntimeError(f"the temporary Prefect server exited with status {status}")
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{url}/health", timeout=2).status_code == 200:
                            self.url = url
                            return url
                    time.sleep(0.1)
                else:
                    self.stop()
                    raise RuntimeError(f"the temporary Prefect server did not answer within {timeout_s:.0f} s")
            self.spawn()
        raise RuntimeError("the temporary Prefect server found no free port")

    def stop(self) -> None:
        """Flush Prefect's log and event workers to the server, then terminate it (idempotent)."""
        with self._lock:
            process, self.process, self.url = self.process, None, None
        if process is None or process.poll() is not None:
            return
        _drain_prefect()
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _drain_prefect() -> None:
    """Send what Prefect's background workers still hold (as Prefect does at exit)."""
    for module, name in (("prefect.logging.handlers", "APILogWorker"), ("prefect.events.worker", "EventsWorker")):
        loaded = sys.modules.get(module)  # never imported: nothing to send
        if loaded is not None:
            with contextlib.suppress(Exception):
                getattr(loaded, name).drain_all(timeout=5)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_api_server() -> TemporaryServer | None:
    """Start booting a temporary API server, unless ``PREFECT_API_URL`` is in the environment.

    Only the process is started (no Prefect import, milliseconds); :func:`await_api_server`
    decides later whether it is used and waits for it. Never raises: None when it could not
    be started (the flow call then does what Prefect always does).
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    server = TemporaryServer()
    try:
        server.spawn()
        return server
    except Exception:  # reported by the flow call, which starts Prefect's own server
        server.stop()
        return None


def await_api_server(server: TemporaryServer | None) -> TemporaryServer | None:
    """Wait until ``server`` answers, unless Prefect's settings rule it out; never raises.

    Returns
    -------
    TemporaryServer or None
        The running server, or None (stopped): a profile configures an API
        (``PREFECT_API_URL``), ephemeral mode is off, or the start failed.
    """
    if server is None:
        return None
    try:
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_SERVER_EPHEMERAL_ENABLED,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        )

        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            server.stop()
            return None
        server.start(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
        return server
    except Exception:  # reported by the flow call, which starts Prefect's own server
        server.stop()
        return None


@contextlib.contextmanager
def api_settings(server: TemporaryServer | None) -> Iterator[None]:
    """Prefect's client talks to ``server`` inside this block (nothing changes for None)."""
    if server is None or server.url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    # no UI runs there (PREFECT_UI_ENABLED=0): no "View at …" links derived from the API URL
    with temporary_settings(updates={PREFECT_API_URL: server.url, PREFECT_UI_URL: ""}):
        yield
