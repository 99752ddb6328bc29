"""Boot Prefect's ephemeral API server early, while the CLI does other work.

Without ``PREFECT_API_URL`` the first flow call starts a temporary API server (a uvicorn
subprocess: ~6 s on an idle machine, far more on a busy one) and waits for it. ``segpipe
run`` calls :func:`boot_api_server` on a thread right after planning, so the server boots
while torch is imported and the Dask cluster starts; it joins that thread before calling
the flow, which then finds the server up (``SubprocessASGIServer`` is one per process).
"""

from __future__ import annotations

from flows import _env  # noqa: F401  (Prefect settings before prefect is imported)

__all__ = ["boot_api_server"]


def boot_api_server() -> None:
    """Start the ephemeral API server unless a real one is configured; never raises.

    A failure here is left for the flow call, which starts the server (and reports its
    error) the usual way.
    """
    try:
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()
    except Exception:  # noqa: S110  (reported by the flow call)
        pass
