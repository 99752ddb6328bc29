"""glibc malloc thresholds raised while segpipe's own tasks run on a Dask worker.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes
glibc's mmap threshold at 128 KiB: every image-sized buffer (decoded tiles, blocks, model
inputs, label images, region columns — all ≥ 128 KiB) is then a fresh ``mmap`` whose pages
fault in one by one and go back to the OS on ``free``. That costs a third of an ingest
task's CPU and 2–3× the CPU of a 1024² image's segmentation.

While a task of segpipe runs, :func:`raised` (or :func:`raise_for` / :func:`restore` for
work spread over many tasks, like an ingest) raises both thresholds in the worker process,
so such buffers are reused from the heap; when the last such task of the process ends, the
environment's thresholds come back and the heap is trimmed. Memory is thus as large as the
largest running task's working set and is handed back between tasks, instead of growing
with the process's history (setting the thresholds for the whole worker made a 32k² run
take 1.5× the memory of an 8k² one). Processes whose environment does not set the trim
threshold (glibc's adaptive defaults: plain Python, Dask's threaded scheduler) are left alone.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["raise_for", "raised", "restore"]

_LOCK = threading.Lock()
_OWNERS: set[str] = set()
_RAISED = (64 << 20, 256 << 20)  # mmap threshold, trim threshold while segpipe works


def _mallopt(mmap_threshold: int, trim_threshold: int, trim: bool = False) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc <malloc.h>
        ok = bool(
            libc.mallopt(m_mmap_threshold, mmap_threshold)
            and libc.mallopt(m_trim_threshold, trim_threshold)
        )
        if trim:
            libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError, ValueError):
        return False


def raise_for(owner: str) -> None:
    """Raise the thresholds on behalf of ``owner`` (idempotent per owner)."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    with _LOCK:
        if owner in _OWNERS:
            return
        if _OWNERS or _mallopt(*_RAISED):
            _OWNERS.add(owner)


def restore(owner: str) -> None:
    """``owner`` is done: the environment's thresholds again (and a trimmed heap) once no
    other owner is running in this process."""
    with _LOCK:
        if owner not in _OWNERS:
            return
        _OWNERS.discard(owner)
        if not _OWNERS:
            mmap = int(os.environ.get("MALLOC_MMAP_THRESHOLD_", 128 << 10))
            _mallopt(mmap, int(os.environ["MALLOC_TRIM_THRESHOLD_"]), trim=True)


@contextmanager
def raised() -> Iterator[None]:
    """Raised thresholds for the duration of one task."""
    owner = uuid.uuid4().hex
    raise_for(owner)
    try:
        yield
    finally:
        restore(owner)
