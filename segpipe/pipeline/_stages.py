"""The per-image pipeline as plain functions: no Prefect here, the flows wrap these.

One image goes ``ingest_stage`` → ``segment_stage`` → ``publish_stage``;
:func:`process_image` chains them, writes the image's ``running`` row first and turns
any exception into a ``failed`` row with a one-line error, so an image fails alone.
Outputs become visible only when complete: labels and region files are written before
the image row with status ``done``, which the ``regions`` view keys on. An image that
already has outputs (an earlier run's, or a crash's leftovers) is redone in a staging copy
(:func:`staging_url`) that replaces them just before that row: until then, a failing or
crashing rerun leaves the last done row's image and labels exactly as they were.

:func:`plan_run` decides what a run has to do: an image whose latest state is ``done``
with the same fingerprint, model (+ weights sha256) and config hash is skipped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from segpipe.config import SegpipeConfig, config_hash
from segpipe.errors import SegpipeError

if TYPE_CHECKING:
    from segpipe.infer import SegmentResult
    from segpipe.ingest import ImageMeta

__all__ = [
    "skipped_rows",
    "ModelRef",
    "ImageOutcome",
    "Progress",
    "resolve_model",
    "image_url",
    "staging_url",
    "clear_staging",
    "plan_run",
    "ingest_stage",
    "segment_stage",
    "publish_stage",
    "process_image",
    "one_line",
    "is_transient",
    "new_run_id",
    "FALLBACK_MODEL",
    "LABELS_NAME",
]

log = logging.getLogger("segpipe.pipeline")

#: Attribute of the log record of an image that failed (its id): the CLI, which prints every
#: image's outcome itself, filters these records out of its console.
IMAGE_FAILURE = "segpipe_failed_image"

#: Name of the label image inside ``RESULTS/images/<image_id>.ome.zarr/labels/``.
LABELS_NAME = "segmentation"

#: ``progress(image_id, done, total)``: chunks of the current image done so far.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ModelRef:
    """Which model a run uses: what the images table records and plan_run compares."""

    name: str
    sha256: str | None = None
    fallback_note: str | None = None
    source: str | None = None  # what load_model gets (a weights path); None = name

    @property
    def load_name(self) -> str:
        """The argument for ``load_model``: the weights path for a custom model, else the name."""
        return self.source or self.name


@dataclass
class ImageOutcome:
    """What happened to one image in one run."""

    image_id: str
    source_uri: str
    status: str  # done | failed | skipped
    error: str | None = None
    n_regions: int = 0
    seconds: float = 0.0
    labels_uri: str | None = None
    image_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (SegpipeError messages are shown as they are)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, SegpipeError) and text:
        return text[:500]
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: storage / network hiccups and lost Dask workers.

    Bad input (a corrupt or unsupported image, a bad model or setting) is not transient:
    segpipe's own errors are never retried, even those that are ``OSError`` subclasses.
    """
    if isinstance(exc, SegpipeError):
        return False
    name = type(exc).__name__
    if name in ("KilledWorker", "CommClosedError", "StreamClosedError", "CancelledError", "FutureCancelledError"):
        return True
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def new_run_id() -> str:
    """A sortable, file-name-safe run id: ``YYYYmmddTHHMMSSZ-<6 hex>``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


def image_url(results: str, image_id: str) -> str:
    """URL of an image's OME-Zarr in a results folder."""
    return f"{str(results).rstrip('/')}/images/{image_id}.ome.zarr"


#: Folder under ``RESULTS/images/`` where reruns build an image's new outputs.
STAGING = ".staging"


def staging_url(results: str, run_id: str, image_id: str, part: str = "new") -> str:
    """Where run ``run_id`` builds image ``image_id``'s new OME-Zarr (``part="new"``) or
    parks the one it replaces until its ``done`` row is written (``part="old"``).

    The store keeps its name, ``<image_id>.ome.zarr``, so everything derived from the name
    (the regions' ``image_id``) is the same as in place.
    """
    return f"{str(results).rstrip('/')}/images/{STAGING}/{run_id}/{part}/{image_id}.ome.zarr"


def clear_staging(results: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Finish what crashed runs left in the staging folder, then remove it.

    Call it holding the results lock (no other run may be using the folder). A store parked
    in ``.staging/<run>/old/`` holds the outputs of its image's last done row unless run
    ``<run>`` committed that image (wrote the image's latest done row): then it is the
    replaced store and goes; otherwise it goes back to ``images/``, in place of whatever a
    crash left there (an uncommitted new store, or nothing). Returns the ids of the images
    put back.
    """
    from segpipe import tables
    from segpipe.io import move, remove, url_to_fs

    base = f"{str(results).rstrip('/')}/images/{STAGING}"
    fs, root = url_to_fs(base, storage_options)
    root = root.rstrip("/")
    parked = sorted(fs.glob(f"{root}/*/old/*.ome.zarr")) if fs.exists(root) else []
    restored = []
    if parked:
        done = tables.latest_done(results, storage_options)
        for path in parked:
            run_id, _, name = path[len(root) + 1:].split("/")
            image_id = name.removesuffix(".ome.zarr")
            if (done.get(image_id) or {}).get("run_id") == run_id:
                continue  # committed: this is the store the run replaced
            live = image_url(results, image_id)
            remove(live, storage_options)
            move(f"{base}/{run_id}/old/{name}", live, storage_options)
            log.warning("%s: put back the outputs of its last done run (run %s stopped before its commit)",
                        image_id, run_id)
            restored.append(image_id)
    remove(base, storage_options)
    return restored


FALLBACK_MODEL = "classical"
"""Used by a run that names no model when the default's weights are not installed."""


def run_model(model: str | None, config: SegpipeConfig) -> ModelRef:
    """The model a run uses (:func:`resolve_model`): ``model`` when named, else the config's
    ``infer.model``, which falls back to :data:`FALLBACK_MODEL` when its built-in weights
    are not installed (a model the user named never does)."""
    return resolve_model(model or config.infer.model, fallback=None if model else FALLBACK_MODEL)


def resolve_model(name: str, *, fallback: str | None = None) -> ModelRef:
    """Identify a model (name + weights sha256) without loading it on the workers.

    Parameters
    ----------
    name : str
        Built-in name or weights path.
    fallback : str or None
        Used instead when ``name`` is a built-in whose weights are not installed (the note
        says so); None raises :class:`ModelError` then.
    """
    from segpipe.pipeline._plan import peek_model

    ref = peek_model(name, fallback=fallback)  # a built-in with intact weights: no torch needed
    if ref is not None:
        return ref
    from segpipe import models

    is_installed = getattr(models, "is_installed", None)
    builtin = getattr(models, "BUILTIN_CARDS", {})
    if fallback is not None and name in builtin and is_installed is not None and not is_installed(name):
        note = f"the {name!r} model's weights are not installed; using the {fallback!r} model instead"
        ref = resolve_model(fallback)
        return ModelRef(ref.name, ref.sha256, note, ref.source)
    model = models.load_model(name)
    card = model.card
    shown = name if name in builtin else card.name
    return ModelRef(name=shown, sha256=getattr(card, "sha256", None), source=None if name in builtin else str(name))


def plan_run(entries: Sequence[Any], states: dict[str, dict[str, Any]], model: ModelRef,
             config: SegpipeConfig) -> tuple[list[Any], list[Any]]:
    """Split discovered entries into (to_run, to_skip).

    An entry (with ``image_id``, ``uri``, ``relpath`` and ``fingerprint``) is skipped when
    its image's latest state is ``done`` for the same source file (:func:`_same_source`),
    with the same fingerprint, model name, model sha256 and config hash. A ``running`` state
    (a run crashed on it) or ``failed`` one is always redone.
    """
    chash = config_hash(config)
    to_run, to_skip = [], []
    for entry in entries:
        state = states.get(entry.image_id)
        same = (state is not None and state.get("status") == "done"
                and _same_source(state.get("source_uri"), entry)
                and state.get("fingerprint") == entry.fingerprint
                and state.get("model") == model.name
                and (state.get("model_sha256") or None) == (model.sha256 or None)
                and state.get("config_hash") == chash)
        (to_skip if same else to_run).append(entry)
    return to_run, to_skip


def _same_source(recorded: Any, entry: Any) -> bool:
    """Whether the source a done row recorded is ``entry``'s file: the same URI, or (a row
    written with a relative path, or before the archive moved) one ending in the entry's
    path inside the archive. An id can pass to another file (``x.tif`` added beside
    ``x.tiff``): a file of the same size and time must not then inherit the other's results."""
    if recorded is None:
        return True  # a row that recorded no source: nothing to compare
    recorded = str(recorded)
    return recorded in (entry.uri, entry.relpath) or recorded.endswith("/" + entry.relpath)


# -- stages -----------------------------------------------------------------------------------
def ingest_stage(source_uri: str, image_id: str, results: str, config: SegpipeConfig,
                 client: Any = None, storage_options: dict[str, Any] | None = None,
                 target: str | None = None) -> Any:
    """Source image → ``RESULTS/images/<image_id>.ome.zarr`` (replacing any leftover), or
    → ``target`` when given (a staging copy, see :func:`staging_url`).

    Returns the ingest's ``ImageMeta``.
    """
    from segpipe.ingest import ingest_image

    return ingest_image(source_uri, target or image_url(results, image_id), spec=config.ingest_spec(),
                        client=client, storage_options=storage_options)


def segment_stage(zarr_url: str, model: str, config: SegpipeConfig, client: Any = None,
                  storage_options: dict[str, Any] | None = None,
                  progress: Callable[[int, int], None] | None = None, meta: ImageMeta | None = None) -> Any:
    """Segment an ingested image chunk by chunk on the cluster (engine's ``segment_image``).

    Writes ``labels/<model name>`` (pyramid included) into the OME-Zarr and returns the
    engine's ``SegmentResult`` (region columns, counts). Chunks outside the foreground
    mask are skipped unless ``tissue.enabled`` is false.
    """
    from segpipe import infer

    return infer.segment_image(
        zarr_url, model, client=client, halo=config.infer.halo,
        blocks=None if config.tissue.enabled else "all", storage_options=storage_options,
        progress=progress, batch=config.infer.batch,
        device=None if config.infer.device == "auto" else config.infer.device, meta=meta,
    )  # fmt: skip


def publish_stage(results: str, image_id: str, run_id: str, segmented: SegmentResult, row: dict[str, Any],
                  storage_options: dict[str, Any] | None = None, staged: str | None = None) -> dict[str, Any]:
    """Make the outputs visible: region file, then the ``done`` row LAST.

    The label pyramid is registered already (``segment_image`` does it before it returns).
    With ``staged`` (the OME-Zarr the image was built in, see :func:`staging_url`), that
    store first replaces ``row["image_uri"]``; the replaced one is parked until the row is
    written, put back if writing it fails, and removed after. Returns the row written.
    Region files of older runs are pruned after the commit.
    """
    from segpipe import tables

    columns = {k: v for k, v in segmented.columns.items() if k not in ("image_id", "run_id")}
    tables.write_regions(results, image_id, run_id, columns, storage_options=storage_options)
    labels_uri = segmented.labels_url
    parked, replace_s = None, None
    if staged is not None:
        t0 = time.perf_counter()
        labels_uri = row["image_uri"] + labels_uri[len(staged):]
        parked = _swap_in(staged, row["image_uri"], staging_url(results, run_id, image_id, "old"), storage_options)
        replace_s = time.perf_counter() - t0
    done = {**row, "status": "done", "error": None, "labels_uri": labels_uri,
            "n_regions": int(len(columns["label"])), "n_blocks": segmented.blocks_processed,
            "n_blocks_total": segmented.blocks_total}
    if segmented.tissue_area_px is not None:
        mpp = row.get("mpp")
        done["tissue_area_px"] = int(segmented.tissue_area_px)
        done["tissue_area_um2"] = float(segmented.tissue_area_px) * mpp * mpp if mpp else None
    timings = dict(row.get("timings") or {})
    timings.update({f"segment.{k}": float(v) for k, v in segmented.timings.items() if k != "total"})
    if replace_s is not None:
        timings["publish.replace"] = replace_s
    done["timings"] = timings
    try:
        tables.write_image_row(results, done, storage_options=storage_options)
    except BaseException:
        if staged is not None:  # not committed: the last done row's outputs go back in place
            _swap_back(staged, row["image_uri"], parked, storage_options)
        raise
    if parked is not None:
        _discard(parked, image_id, storage_options)
    try:
        if tables.has_older_regions(results, image_id, run_id, storage_options=storage_options):
            tables.prune_regions(results, image_id, run_id, storage_options=storage_options)
    except Exception as exc:  # pruning is housekeeping: never fail a committed image
        log.warning("%s: could not remove older region files: %s", image_id, one_line(exc))
    return done


def _swap_in(staged: str, live: str, park: str, storage_options: dict[str, Any] | None) -> str | None:
    """Move ``live`` (if any) to ``park`` and ``staged`` to ``live``; return ``park`` when used.

    If the second move fails (on an object store it may have copied part of the store),
    the parked store is put back. A retry finding ``park`` still there (that failed too)
    keeps it: it holds the outputs of the last done row.
    """
    from segpipe.io import exists, move, remove

    parked = None
    if exists(park, storage_options):
        remove(live, storage_options)
        parked = park
    elif exists(live, storage_options):
        move(live, park, storage_options)
        parked = park
    try:
        move(staged, live, storage_options)
    except BaseException:
        if parked is not None:
            try:
                remove(live, storage_options)
                move(parked, live, storage_options)
            except Exception as exc:  # the parked store stays; a retry or the rerun uses it
                log.error("%s: could not put the earlier outputs back: %s", live, one_line(exc))
        raise
    return parked


def _swap_back(staged: str, live: str, parked: str | None, storage_options: dict[str, Any] | None) -> None:
    from segpipe.io import move

    try:
        move(live, staged, storage_options)
        if parked is not None:
            move(parked, live, storage_options)
    except Exception as exc:  # the rerun redoes the image (its latest row is not done)
        log.error("%s: could not put the earlier outputs back: %s", live, one_line(exc))


def _discard(parked: str, image_id: str, storage_options: dict[str, Any] | None) -> None:
    from segpipe.io import remove

    try:
        remove(parked, storage_options)
    except Exception as exc:  # housekeeping (the next run's clear_staging retries it)
        log.warning("%s: could not remove the replaced outputs: %s", image_id, one_line(exc))


def process_image(entry: Any, image_id: str, results: str, model: ModelRef | str, config: SegpipeConfig,
                  client: Any, run_id: str, *, storage_options: dict[str, Any] | None = None,
                  progress: Progress | None = None,
                  stage_runner: Callable[[str, Callable[[], Any]], Any] | None = None) -> ImageOutcome:
    """Run one image through every stage; never raises for a bad image.

    Parameters
    ----------
    entry : archive entry or str
        The source image (``uri``, ``fingerprint``) or simply its URL.
    image_id, results, run_id : str
        Where the outputs go and under which run.
    model : ModelRef or str
        The model (a name is resolved with :func:`resolve_model`).
    config : SegpipeConfig
    client : distributed.Client or None
        The Dask client chunk work goes to.
    progress : callable, optional
        ``progress(image_id, chunks_done, chunks_total)``.
    stage_runner : callable, optional
        ``stage_runner(stage_name, thunk)`` runs each stage (the flows pass one that wraps
        stages in Prefect tasks with retries); the default calls ``thunk()``.

    Returns
    -------
    ImageOutcome
        ``done`` or ``failed`` (with the one-line error also in the images table).
    """
    from segpipe import tables
    from segpipe.io import exists, join_url

    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    source_uri = entry if isinstance(entry, str) else entry.uri
    fingerprint = None if isinstance(entry, str) else entry.fingerprint
    run = stage_runner or (lambda _name, thunk: thunk())
    zarr_url = image_url(results, image_id)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "image_id": image_id, "run_id": run_id, "status": "running", "source_uri": source_uri,
        "fingerprint": fingerprint, "image_uri": zarr_url, "model": ref.name, "model_sha256": ref.sha256,
        "config_hash": config_hash(config), "started_at": started,
    }
    timings: dict[str, float] = {}
    staged: str | None = None  # where the image is rebuilt when it already has outputs
    try:
        tables.write_image_row(results, row, storage_options=storage_options)
        if exists(join_url(zarr_url, "zarr.json"), storage_options):  # outputs a done row may show
            staged = staging_url(results, run_id, image_id)
        work_url = staged or zarr_url
        log.info("%s: ingesting %s", image_id, source_uri)
        t = time.perf_counter()
        meta = run("ingest", lambda: ingest_stage(source_uri, image_id, results, config, client, storage_options,
                                                  target=staged))
        timings["ingest"] = time.perf_counter() - t
        row.update(_meta_columns(meta))
        log.info("%s: segmenting with %s", image_id, ref.name)

        def chunk_progress(done: int, total: int) -> None:
            if progress is not None:
                progress(image_id, done, total)

        t = time.perf_counter()
        segmented = run("segment", lambda: segment_stage(work_url, ref.load_name, config, client, storage_options,
                                                         chunk_progress, meta))
        timings["segment"] = time.perf_counter() - t
        t = time.perf_counter()
        row.update(finished_at=datetime.now(timezone.utc), duration_s=time.perf_counter() - t0, timings=timings)
        done = run("publish", lambda: publish_stage(results, image_id, run_id, segmented, row, storage_options,
                                                    staged))
        timings["publish"] = time.perf_counter() - t
        seconds = time.perf_counter() - t0
        log.info("%s: done, %d regions in %.1f s", image_id, done["n_regions"], seconds)
        return ImageOutcome(image_id, source_uri, "done", None, int(done["n_regions"]), seconds,
                            done.get("labels_uri"), zarr_url, timings)
    except Exception as exc:  # the image fails alone
        error = one_line(exc)
        seconds = time.perf_counter() - t0
        # the outcome carries the error to the caller, who reports it (the flows log it as an
        # error, the CLI prints it); logged here at info, so that a Dask worker's stderr does
        # not repeat it
        log.info("%s: failed: %s", image_id, error, extra={IMAGE_FAILURE: image_id})
        failed = {**row, "status": "failed", "error": error, "finished_at": datetime.now(timezone.utc),
                  "duration_s": seconds, "timings": timings}
        try:
            tables.write_image_row(results, failed, storage_options=storage_options)
        except Exception as exc2:  # results unwritable: the run summary still says it
            log.error("%s: could not record the failure: %s", image_id, one_line(exc2))
        if staged is not None:
            _discard(staged, image_id, storage_options)
        return ImageOutcome(image_id, source_uri, "failed", error, 0, seconds, None, zarr_url, timings)


def _meta_columns(meta: ImageMeta) -> dict[str, Any]:
    out = {"mpp": meta.mpp, "n_channels": meta.n_channels, "modality": meta.modality,
           "dtype": str(meta.dtype), "height": int(meta.shape[0]), "width": int(meta.shape[1])}
    return {k: v for k, v in out.items() if v is not None}


def skipped_rows(entries: Iterable[Any], states: dict[str, dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """The ``skipped`` rows recording that a run left unchanged images alone."""
    rows = []
    for entry in entries:
        image_id = entry.image_id
        prev = states.get(image_id, {})
        rows.append({"image_id": image_id, "run_id": run_id, "status": "skipped",
                     "source_uri": entry.uri,
                     "fingerprint": entry.fingerprint,
                     "image_uri": prev.get("image_uri"), "labels_uri": prev.get("labels_uri"),
                     "n_regions": prev.get("n_regions"), "model": prev.get("model"),
                     "model_sha256": prev.get("model_sha256"), "config_hash": prev.get("config_hash")})
    return rows

