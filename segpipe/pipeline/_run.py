"""Run-level helpers shared by the flows and the CLI: discovery, the Dask client, run rows."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from segpipe.config import SegpipeConfig, config_hash, results_settings
from segpipe.pipeline._stages import ImageOutcome, ModelRef

__all__ = ["ArchiveItem", "RunSummary", "discover_items", "open_client", "prestart_client", "run_row", "summarise"]

log = logging.getLogger("segpipe.pipeline")


@dataclass(frozen=True)
class ArchiveItem:
    """One image of an archive, as a run sees it."""

    image_id: str
    uri: str
    relpath: str
    fingerprint: str
    size: int | None = None


@dataclass
class RunSummary:
    """What a run did (returned by the ``archive_run`` flow, printed by the CLI)."""

    run_id: str
    source: str
    results: str
    model: str
    status: str = "done"  # done | partial (some images failed) | failed
    n_images: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    regions: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    report: str | None = None
    note: str | None = None

    def lines(self) -> list[str]:
        """A short human summary, one fact per line."""
        out = [f"run {self.run_id}: {self.done} done, {self.skipped} skipped, {self.failed} failed "
               f"of {self.n_images} images; {self.regions} regions in {self.seconds:.1f} s (model {self.model})"]
        out += [f"  failed {image_id}: {error}" for image_id, error in self.failures]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def discover_items(source: str, config: SegpipeConfig, storage_options: dict[str, Any] | None = None,
                   states: Mapping[str, Mapping[str, Any]] | None = None) -> list[ArchiveItem]:
    """Discover the archive's images (include / exclude globs) and fingerprint them.

    ``states`` (:func:`segpipe.tables.image_states` of the results) keeps the ids the
    results already give these files (:func:`segpipe.archive.assign_image_ids`).

    Raises
    ------
    ConfigError
        The source does not exist.
    """
    from segpipe import archive

    run = config.run
    # ids over every image of the archive, then the run's --include / --exclude: an image's
    # id names its results, so it must not depend on which other images a run looks at
    # (with `--include a_b.png`, a_b.png took the id of a/b.png and overwrote its results)
    wide = (*archive.DEFAULT_INCLUDE, *run.include) if run.include else None
    listed = archive.discover(source, include=wide, storage_options=storage_options)
    ids = archive.assign_image_ids([e.relpath for e in listed], keep=_recorded_ids(listed, states or {}))
    single = str(source).rstrip("/")  # a source that is one image is taken whatever the globs
    entries = [e for e in listed if e.uri == single or archive.selected(e.relpath, run.include, run.exclude)]
    return [
        ArchiveItem(image_id=ids[e.relpath], uri=e.uri, relpath=e.relpath, size=e.size,
                    fingerprint=archive.fingerprint(e, content_hash=run.content_hash,
                                                    storage_options=storage_options))
        for e in entries
    ]  # fmt: skip


def _recorded_ids(listed: Sequence[Any], states: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """relpath → the id whose latest row recorded that file as its source: the same URI, or
    (a relative path, an archive that moved) the longest relpath the recorded one ends in —
    the rule of :func:`segpipe.pipeline._stages._same_source`, looked up from the recorded
    side. A file recorded under several ids keeps the one of its exact URI, then the smallest."""
    by_uri = {e.uri: e.relpath for e in listed}
    relpaths = set(by_uri.values())
    found: dict[str, tuple[bool, str]] = {}
    for image_id, row in states.items():
        recorded = row.get("source_uri")
        if not recorded:
            continue
        rel, exact = by_uri.get(str(recorded)), True
        if rel is None:
            parts = str(recorded).split("/")
            rel = next(("/".join(parts[k:]) for k in range(len(parts)) if "/".join(parts[k:]) in relpaths), None)
            exact = False
        if rel is not None and (rel not in found or (not exact, image_id) < (not found[rel][0], found[rel][1])):
            found[rel] = (exact, image_id)
    return {rel: image_id for rel, (_, image_id) in found.items()}


@contextlib.contextmanager
def _start_client(config: SegpipeConfig) -> Iterator[Any]:
    import importlib.util

    from segpipe.cluster import cluster_client

    dashboard = ":0" if importlib.util.find_spec("bokeh") is not None else None
    run = config.run
    with cluster_client(run.cluster, run.n_workers, run.threads_per_worker,
                        dashboard_address=dashboard) as client:
        yield client


class _Prestarted:
    """A cluster being started on a thread (see :func:`prestart_client`)."""

    def __init__(self, config: SegpipeConfig, warm_model: str | None, device: str | None) -> None:
        self.config = config
        self._cm: Any = None
        self._warm: list[Any] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="segpipe-cluster")
        self.future = self._pool.submit(self._start, warm_model, device)

    def _start(self, warm_model: str | None, device: str | None) -> Any:
        self._cm = _start_client(self.config)
        client = self._cm.__enter__()
        if warm_model is not None:  # load the model on every worker while Prefect starts
            with contextlib.suppress(Exception):
                self._warm = [client.submit(warm_worker, warm_model, device, workers=[addr],
                                            allow_other_workers=False, pure=False,
                                            key=f"segpipe-warm-{i}-{time.time_ns()}")
                              for i, addr in enumerate(client.scheduler_info().get("workers", {}))]  # fmt: skip
        return client

    def close(self) -> None:
        try:
            self.future.result()
        except Exception:  # it never started: nothing to stop
            pass
        else:
            self._warm = []
            self._cm.__exit__(None, None, None)
        finally:
            self._pool.shutdown(wait=False)


_PRESTARTED: list[_Prestarted] = []


def warm_worker(model: str, device: str | None) -> bool:
    """Load ``model`` into a worker's cache (``load_model`` keeps one per process)."""
    from segpipe.models import load_model

    load_model(model, device=device)
    return True


@contextlib.contextmanager
def prestart_client(config: SegpipeConfig, warm_model: str | None = None,
                    device: str | None = None) -> Iterator[Callable[[], Any]]:
    """Start the run's Dask cluster on a thread now; :func:`open_client` in this process uses it.

    ``segpipe run`` wraps the flow in this so that the cluster (and, with ``warm_model``,
    the model on every worker) starts while Prefect's API server does. The cluster stops
    on exit. Yields ``ready()``, which waits for the start and returns the client, or
    raises what the start raised (e.g. the one-line ``ConfigError`` of an unreachable
    scheduler), so that the caller can report it before the flow runs; otherwise a start-up
    failure surfaces in :func:`open_client`, as it would have there.
    """
    pre = _Prestarted(config, warm_model, device)
    _PRESTARTED.append(pre)
    try:
        yield pre.future.result
    finally:
        _PRESTARTED.remove(pre)
        pre.close()


@contextlib.contextmanager
def open_client(config: SegpipeConfig) -> Iterator[Any]:
    """A Dask client: to ``run.cluster`` when set, else on a LocalCluster started here.

    The local cluster is sized by :func:`segpipe.cluster.connect` (GPU-aware) unless
    ``run.n_workers`` / ``run.threads_per_worker`` say otherwise; it stops on exit. Inside
    :func:`prestart_client` with the same cluster settings, that client is used (and left
    running: ``prestart_client`` stops it).
    """
    for pre in _PRESTARTED:
        if (pre.config.run.cluster, pre.config.run.n_workers, pre.config.run.threads_per_worker) == (
                config.run.cluster, config.run.n_workers, config.run.threads_per_worker):
            yield pre.future.result()
            return
    with _start_client(config) as client:
        yield client


def run_row(run_id: str, source: str, results: str, model: ModelRef, config: SegpipeConfig,
            status: str, started: datetime, client: Any = None,
            outcomes: Sequence[ImageOutcome] = (), n_images: int = 0, n_skipped: int = 0,
            error: str | None = None) -> dict[str, Any]:
    """The ``runs`` table row of a run (``running`` at the start, final at the end)."""
    n_workers = None
    with contextlib.suppress(Exception):
        n_workers = len(client.scheduler_info().get("workers", {})) if client is not None else None
    timings: dict[str, float] = {}
    for o in outcomes:
        for k, v in o.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    now = datetime.now(timezone.utc)
    return {
        "run_id": run_id, "status": status, "error": error, "source_uri": source, "results_uri": results,
        "model": model.name, "model_sha256": model.sha256, "config_hash": config_hash(config),
        "config": json.dumps({"results": results_settings(config), "run": config.run.model_dump()},
                             sort_keys=True, default=str),
        "n_images": n_images, "n_done": sum(o.status == "done" for o in outcomes),
        "n_failed": sum(o.status == "failed" for o in outcomes), "n_skipped": n_skipped,
        "n_regions": sum(o.n_regions for o in outcomes), "cluster": config.run.cluster or "local",
        "n_workers": n_workers, "host": socket.gethostname(), "started_at": started,
        "finished_at": None if status == "running" else now,
        "duration_s": None if status == "running" else (now - started).total_seconds(),
        "timings": timings or None,
    }


def summarise(run_id: str, source: str, results: str, model: ModelRef, outcomes: Sequence[ImageOutcome],
              n_images: int, n_skipped: int, t0: float) -> RunSummary:
    """The :class:`RunSummary` of finished outcomes."""
    failed = [o for o in outcomes if o.status == "failed"]
    done = [o for o in outcomes if o.status == "done"]
    status = "done" if not failed else ("partial" if done or n_skipped else "failed")
    notes = [model.fallback_note] if model.fallback_note else []
    if not n_images:  # not an error (an archive may be empty yet), but a mistyped glob looks the same
        notes.append(f"no images found in {source} (check the path and --include / --exclude)")
    return RunSummary(run_id=run_id, source=source, results=results, model=model.name, status=status,
                      n_images=n_images, done=len(done), skipped=n_skipped, failed=len(failed),
                      regions=sum(o.n_regions for o in done), seconds=time.perf_counter() - t0,
                      failures=[(o.image_id, o.error or "") for o in failed], note="; ".join(notes) or None)

