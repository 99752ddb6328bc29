"""Plan a run before anything heavy starts, and finish a run that has nothing to do.

``segpipe run`` calls :func:`plan_archive` first: discover + fingerprint the archive,
read the images table and compare (:func:`~segpipe.pipeline.plan_run`) — without
importing torch (built-in models are identified from their card files), starting
Prefect's API server or a Dask cluster. When every image is unchanged,
:func:`record_noop_run` writes the run's rows (one batch of ``skipped`` rows, the ``runs``
row) and its report under the results lock, and the command is done in about a second.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segpipe.config import SegpipeConfig
from segpipe.io import sha256_file
from segpipe.pipeline._run import ArchiveItem, RunSummary, discover_items, run_row, summarise
from segpipe.pipeline._stages import (
    FALLBACK_MODEL,
    ModelRef,
    clear_staging,
    new_run_id,
    one_line,
    plan_run,
    skipped_rows,
)

__all__ = ["BUILTIN_MODELS", "RunPlan", "peek_model", "plan_archive", "record_noop_run"]

log = logging.getLogger("segpipe.pipeline")

#: Built-in model names → whether they need a weights file (``segpipe.models.BUILTIN_CARDS``;
#: a test keeps the two in step). Known here so that planning does not import torch.
BUILTIN_MODELS: dict[str, bool] = {
    "classical": False,
    "classical-watershed": False,
    "defects": True,
    "nuclei": True,
}


def _weights_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "models" / "weights"


def peek_model(name: str, *, fallback: str | None = None) -> ModelRef | None:
    """:func:`~segpipe.pipeline.resolve_model` for a built-in name, without loading it.

    The weights' sha256 is the one in the installed card (``weights/<name>.json``), which
    is what ``resolve_model`` records too, checked against the weights file (hashlib, no
    torch: the driver of a run never imports it). Returns None for anything else (a weights
    path) and for weights that do not match their card, which the caller then resolves the
    normal way (loading them, with the full error).
    """
    if name not in BUILTIN_MODELS:
        return None
    if not BUILTIN_MODELS[name]:
        return ModelRef(name=name)
    weights, card = _weights_dir() / f"{name}.safetensors", _weights_dir() / f"{name}.json"
    if not (weights.exists() and card.exists()):
        if fallback is None:
            return None  # resolve_model raises the helpful error
        ref = peek_model(fallback)
        note = f"the {name!r} model's weights are not installed; using the {fallback!r} model instead"
        return None if ref is None else ModelRef(ref.name, ref.sha256, note, ref.source)
    try:
        sha256 = json.loads(card.read_text(encoding="utf-8")).get("sha256")
        actual = sha256_file(weights)
    except (OSError, ValueError):
        return None
    if not sha256 or actual != sha256:
        return None  # damaged weights: loading them gives the full error
    return ModelRef(name=name, sha256=sha256)


@dataclass
class RunPlan:
    """What a run would do, decided before Prefect, Dask or torch start."""

    source: str
    results: str
    model: ModelRef
    config: SegpipeConfig
    items: list[ArchiveItem]
    to_run: list[ArchiveItem]
    to_skip: list[ArchiveItem]


def plan_archive(source: str, results: str, model: str | None, config: SegpipeConfig,
                 storage_options: dict[str, Any] | None = None) -> RunPlan | None:
    """Discover, fingerprint and compare with the images table, as the archive flow would.

    Parameters
    ----------
    source, results : str
        Archive and results folders (local or ``s3://``).
    model : str or None
        The model asked for; None = the config's ``infer.model`` with the classical fallback.
    config : SegpipeConfig

    Returns
    -------
    RunPlan or None
        None when the model is not a built-in (planning then happens in the flow).
    """
    from segpipe import tables

    ref = peek_model(model or config.infer.model, fallback=None if model else FALLBACK_MODEL)
    if ref is None:
        return None
    states = tables.image_states(results, storage_options) if _has_tables(results, storage_options) else {}
    items = discover_items(source, config, storage_options, states)
    to_run, to_skip = plan_run(items, states, ref, config)
    return RunPlan(str(source), str(results).rstrip("/"), ref, config, items, to_run, to_skip)


def _has_tables(results: str, storage_options: dict[str, Any] | None) -> bool:
    from segpipe.io import exists, join_url

    try:
        return bool(exists(join_url(str(results), "tables"), storage_options))
    except Exception:
        return False


def record_noop_run(plan: RunPlan, storage_options: dict[str, Any] | None = None) -> RunSummary | None:
    """Finish a run whose plan has nothing to segment: rows and report, no Prefect, no cluster.

    Takes the results lock, re-reads the images table under it (another run may have
    written meanwhile) and gives up, returning None, when the plan no longer holds; else
    writes one batch of ``skipped`` rows, the ``runs`` row (status ``done``) and the HTML
    report, and returns the summary.
    """
    from segpipe import tables
    from segpipe.lock import ResultsLock

    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    run_id = new_run_id()
    results, cfg, ref = plan.results, plan.config, plan.model
    with ResultsLock(results, owner=run_id, lease_s=cfg.run.lease_s):
        tables.init_results(results, storage_options)
        states = tables.image_states(results, storage_options)
        to_run, to_skip = plan_run(plan.items, states, ref, cfg)
        if to_run:
            return None
        try:  # parked stores of a crashed run whose images have left the archive
            clear_staging(results, storage_options)
        except Exception as exc:  # housekeeping: the next run tries again
            log.warning("could not clear %s/images/.staging: %s", results, one_line(exc))
        tables.write_skipped_rows(results, run_id, skipped_rows(to_skip, states, run_id), storage_options)
        summary = summarise(run_id, plan.source, results, ref, [], len(plan.items), len(to_skip), t0)
        tables.write_run_row(results, run_row(run_id, plan.source, results, ref, cfg, summary.status, started,
                                              n_images=len(plan.items), n_skipped=len(to_skip)),
                             storage_options)  # fmt: skip
        try:
            from segpipe.report import write_report

            summary.report = str(write_report(results, run_id, storage_options))
        except Exception as exc:  # the run is committed already: a report problem is a warning
            log.warning("no HTML report: %s", one_line(exc))
    summary.seconds = time.perf_counter() - t0
    return summary
