"""Progress for `segpipe run`: rich bars on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["RichReporter", "LineReporter", "make_reporter", "dashboard_line"]


def dashboard_line(client: Any) -> str:
    """One line naming the Dask scheduler and, when there is one, its dashboard."""
    address = getattr(getattr(client, "scheduler", None), "address", None) or "?"
    try:
        link = client.dashboard_link if client.cluster is None or client.cluster.dashboard_link else None
    except Exception:
        link = None
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)
    except ImportError:
        link = None
    return f"Dask cluster {address}" + (f" — dashboard {link}" if link else " (no dashboard: install bokeh to get one)")


class LineReporter:
    """Plain lines on stdout (a log file, a pipe, cron)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._done = 0
        self._total = 0

    def _say(self, text: str) -> None:
        with self._lock:
            self.console.print(text, markup=False)

    def run_started(self, run_id: str, n_to_run: int, n_skipped: int) -> None:
        self._total = n_to_run
        self._say(f"run {run_id}: {n_to_run} image(s) to segment, {n_skipped} unchanged")

    def cluster_started(self, client: Any) -> None:
        self._say(dashboard_line(client))

    def image_started(self, image_id: str) -> None:
        self._say(f"{image_id}: started")

    def chunks(self, image_id: str, done: int, total: int) -> None:
        if total <= 0:
            return
        quarter = (4 * done) // total
        with self._lock:
            if quarter <= self._last.get(image_id, 0) and done != total:
                return
            self._last[image_id] = quarter
        self._say(f"{image_id}: {done}/{total} chunks")

    def image_finished(self, outcome: Any) -> None:
        self._done += 1
        n = f"[{self._done}/{self._total}]"
        if outcome.status == "done":
            self._say(f"{outcome.image_id}: done, {outcome.n_regions} regions in {outcome.seconds:.1f} s {n}")
        else:  # the time first: after the error it reads as part of it
            self._say(f"{outcome.image_id}: FAILED after {outcome.seconds:.1f} s {n}: {outcome.error}")


class RichReporter:
    """Rich bars: one for images, one per image in progress for its chunks."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=False)
        self._images: TaskID | None = None
        self._chunks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def run_started(self, run_id: str, n_to_run: int, n_skipped: int) -> None:
        self.console.print(f"run {run_id}: {n_to_run} image(s) to segment, {n_skipped} unchanged")
        self._images = self.progress.add_task("images", total=n_to_run)

    def cluster_started(self, client: Any) -> None:
        self.console.print(dashboard_line(client))

    def image_started(self, image_id: str) -> None:
        with self._lock:
            self._chunks[image_id] = self.progress.add_task(f"  {image_id}", total=None)

    def chunks(self, image_id: str, done: int, total: int) -> None:
        task = self._chunks.get(image_id)
        if task is not None:
            self.progress.update(task, completed=done, total=total)

    def image_finished(self, outcome: Any) -> None:
        with self._lock:
            task = self._chunks.pop(outcome.image_id, None)
        if task is not None:
            self.progress.remove_task(task)
        if outcome.status == "failed":
            # markup off: an image id or error may hold "[/…]" (a path), which rich would parse
            self.console.print(f"{outcome.image_id}: failed: {outcome.error}", style="red", markup=False,
                               highlight=False)  # fmt: skip
        if self._images is not None:
            self.progress.advance(self._images)


def make_reporter() -> RichReporter | LineReporter:
    """Rich bars when stdout is a terminal, plain lines otherwise."""
    return RichReporter() if sys.stdout.isatty() else LineReporter()
