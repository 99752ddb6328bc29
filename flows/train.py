"""Training and evaluation flows around :mod:`segpipe.train` (the train owner's functions)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import _env  # noqa: F401  (Prefect settings before prefect is imported)

__all__ = ["train_flow", "evaluate_flow"]


def _table(metrics: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    return "| metric | value |\n|---|---|\n" + rows


@flow(name="train")
def train_flow(recipe: str | None = None, out: str = "model.safetensors",
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a model: a built-in recipe (``nuclei``, ``defects``) or a custom configuration.

    Parameters
    ----------
    recipe : str, optional
        Built-in recipe name; None builds a ``TrainConfig`` from ``overrides`` alone
        (``data`` is then required).
    out : str
        Weights path; the card is written beside it.
    overrides : dict, optional
        ``TrainConfig`` fields, e.g. ``{"steps": 200, "data": "synthetic:nuclei"}``.

    Returns
    -------
    dict
        ``weights``, ``card``, ``steps`` and ``best_metrics``.
    """
    from segpipe.train import TrainConfig, preset_config, train

    logger = get_run_logger()
    values = {**(overrides or {}), "out": out}
    cfg = preset_config(recipe, **values) if recipe else TrainConfig(**values)
    logger.info("training %s for %d steps on %s", cfg.name, cfg.steps, cfg.data)
    result = train(cfg)
    summary = {"weights": str(result.weights), "card": str(result.card), "steps": result.steps,
               "best_metrics": dict(result.best_metrics), "stopped_early": result.stopped_early}
    create_markdown_artifact(f"## trained {cfg.name}\n\n{_table(summary['best_metrics'])}\n\nweights: "
                             f"`{summary['weights']}`\n", key="segpipe-train")
    return summary


@flow(name="evaluate")
def evaluate_flow(results: str, truth: str, label_name: str | None = None) -> dict[str, Any]:
    """Compare a results folder's labels with ground-truth masks (``segpipe.train.evaluate_run``).

    Returns
    -------
    dict
        What ``segpipe.train.evaluate_run`` reports: ``images``, ``summary``, ``unmatched``
        and the paths of the metrics files it wrote.
    """
    from segpipe.train import evaluate_run

    metrics = evaluate_run(results, truth, model=label_name)
    flat = {k: v for k, v in (metrics.get("summary") or {}).items() if isinstance(v, (int, float, str))}
    create_markdown_artifact(f"## evaluation of {results}\n\n{_table(flat)}\n", key="segpipe-evaluate")
    return metrics
