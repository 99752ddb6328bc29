"""Progress hooks: the CLI installs a reporter; the flows call it (no-op by default)."""

from __future__ import annotations

import threading
from typing import Any, Protocol

__all__ = ["RunReporter", "NullReporter", "set_reporter", "get_reporter"]


class RunReporter(Protocol):
    """What an archive run tells about its progress (called from worker threads)."""

    def run_started(self, run_id: str, n_to_run: int, n_skipped: int) -> None: ...
    def image_started(self, image_id: str) -> None: ...
    def chunks(self, image_id: str, done: int, total: int) -> None: ...
    def image_finished(self, outcome: Any) -> None: ...
    def cluster_started(self, client: Any) -> None: ...


class NullReporter:
    """Reports nothing."""

    def run_started(self, run_id: str, n_to_run: int, n_skipped: int) -> None:
        pass

    def image_started(self, image_id: str) -> None:
        pass

    def chunks(self, image_id: str, done: int, total: int) -> None:
        pass

    def image_finished(self, outcome: Any) -> None:
        pass

    def cluster_started(self, client: Any) -> None:
        pass


_lock = threading.Lock()
_reporter: RunReporter = NullReporter()


def set_reporter(reporter: RunReporter | None) -> None:
    """Install ``reporter`` for the flows of this process (None restores the no-op)."""
    global _reporter
    with _lock:
        _reporter = reporter if reporter is not None else NullReporter()


def get_reporter() -> RunReporter:
    """The installed reporter."""
    return _reporter
