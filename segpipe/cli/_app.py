"""The ``segpipe`` command: typer app and its commands.

Heavy modules (torch, dask, prefect through ``flows``) are imported inside the commands so
that ``segpipe --help`` is instant. Every :class:`~segpipe.errors.SegpipeError` becomes one
red line on stderr and exit status 1 (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from segpipe.errors import ConfigError, SegpipeError

__all__ = ["app", "main"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="segpipe",
    help="Segment whole archives of very large images into OME-Zarr label masks and Parquet tables.\n\n"
         "Start with `segpipe demo`, then `segpipe run ARCHIVE --out RESULTS` and "
         "`segpipe query RESULTS \"select count(*) from regions\"`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Fmt(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


class Kind(str, Enum):
    he = "he"
    fluorescence = "fluorescence"
    nuclei = "nuclei"
    defects = "defects"
    mixed = "mixed"


def _counts(kind: str, n: int) -> tuple[int, int, int]:
    """(H&E slides, fluorescence slides, industrial images) for ``n`` images of ``kind``."""
    if kind == "he":
        return n, 0, 0
    if kind == "fluorescence":
        return 0, n, 0
    if kind == "nuclei":
        return n - n // 2, n // 2, 0
    if kind == "defects":
        return 0, 0, n
    return n - 2 * (n // 3), n // 3, n // 3


ModelOpt = Annotated[str | None, typer.Option("--model", "-m", metavar="NAME|FILE", help="Built-in model (see `segpipe models`) or a weights file with its .json card. Default: nuclei.")]
ClusterOpt = Annotated[str | None, typer.Option("--cluster", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786 (or SEGPIPE_DASK_ADDRESS). Default: a local cluster.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", metavar="FILE", help="Settings file (.toml or .yaml) with sections ingest, tissue, infer, run; every key is in deploy/segpipe.example.toml.")]
IncludeOpt = Annotated[list[str] | None, typer.Option("--include", metavar="GLOB", help="Only images whose relative path matches this glob (repeatable).")]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", metavar="GLOB", help="Leave out images matching this glob (repeatable).")]


class _PrintedOutcomes(logging.Filter):
    """Drops the log records of a failed image: the CLI prints every image's outcome itself,
    with its one-line error, so the same error does not also come three more times (Prefect's
    failed stage task, the image task, and the pipeline's own log). Also drops Prefect's
    record (with its traceback) of a flow that stopped on a segpipe error, e.g. a results
    folder another run took meanwhile: :func:`main` prints that error as one line. Other
    errors pass."""

    #: Prefect tasks whose errors are one image's failure (flows.image: the per-image task and
    #: its stages, each named after the stage)
    IMAGE_TASKS = ("segment-image", "ingest", "segment", "publish")

    def filter(self, record: logging.LogRecord) -> bool:
        from segpipe.pipeline import IMAGE_FAILURE

        if hasattr(record, IMAGE_FAILURE):
            return False
        if record.exc_info and isinstance(record.exc_info[1], SegpipeError):
            return False
        return not (record.levelno >= logging.ERROR and getattr(record, "task_name", None) in self.IMAGE_TASKS)


def _prefect_quiet(verbose: bool, printed: bool = True) -> None:
    """Prefect and Dask at warnings; with ``printed`` (``segpipe run``: this process prints
    each image's outcome and the flow's error itself) their log records are dropped
    (:class:`_PrintedOutcomes`). ``segpipe serve`` prints neither: there the records stay,
    for its console and the Prefect server's logs."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        for name in ("distributed", "prefect", "segpipe"):
            logging.getLogger(name).setLevel(logging.WARNING)
        for name in ("prefect.flow_runs", "prefect.task_runs", "segpipe.pipeline") if printed else ():
            # a logger's filters see its own records only
            logger = logging.getLogger(name)
            if not any(isinstance(f, _PrintedOutcomes) for f in logger.filters):
                logger.addFilter(_PrintedOutcomes())


def _overrides(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in (None, [], ())}


def _check_free(results: str) -> None:
    """Fail fast (before Prefect starts) when another run holds the results lock."""
    from segpipe.errors import ResultsLockedError
    from segpipe.lock import read_lock

    info = read_lock(results)
    if info is not None and not info.dead():
        raise ResultsLockedError(info.describe(results))


def _absolute(url: str) -> str:
    """A local path made absolute (URLs as they are): the tables record the paths a run
    was given, and a relative one would mean nothing from another directory."""
    return url if "://" in url else os.path.abspath(url)


def _require_source(source: str) -> None:
    from segpipe.io import exists

    if not exists(source):
        raise ConfigError(f"archive source {source!r} does not exist; check the path or URL")


def _check_model_and_results(model: str | None, cfg: Any, results: str) -> Any:
    """The run's model (loaded once: a bad weights file is one line here, not a Prefect
    traceback), then RESULTS made a results folder (an unwritable one is one line too)."""
    from segpipe import tables
    from segpipe.pipeline import run_model

    ref = run_model(model, cfg)
    tables.init_results(results)
    return ref


def _run_archive(source: str, results: str, model: str | None, config: Path | None,
                 overrides: dict[str, Any], verbose: bool) -> Any:
    from segpipe.config import load_config

    cfg = load_config(config, overrides)  # every settings problem is reported before any work
    source, results = _absolute(source), _absolute(results)
    _require_source(source)
    _check_free(results)
    # Plan first (no torch, no Prefect, no cluster): a rerun with nothing to do ends here.
    from segpipe.pipeline import plan_archive, record_noop_run

    plan = plan_archive(source, results, model, cfg)
    if plan is not None and not plan.to_run:
        _prefect_quiet(verbose)
        summary = record_noop_run(plan)
        if summary is not None:
            return summary
    from segpipe.pipeline import prestart_client

    _prefect_quiet(verbose)
    # Prefect's API server boots (a subprocess) while the model is checked, the Dask cluster
    # (with the model on its workers) starts and Prefect is imported here; the flow waits for
    # it only when it is about to run. (flows._server imports neither Prefect nor the flows.)
    from flows._server import api_settings, await_api_server, spawn_api_server

    spawned = spawn_api_server()  # None: PREFECT_API_URL is set
    try:
        checked = False
        if plan is None:  # a weights file: check it before starting anything
            ref = _check_model_and_results(model, cfg, results)
            checked = True
        else:
            ref = plan.model
        device = None if cfg.infer.device == "auto" else cfg.infer.device
        cluster: Any = prestart_client(cfg, warm_model=ref.load_name, device=device)
        if plan is not None and not plan.to_run:  # the no-op run lost a race: no cluster needed
            cluster = contextlib.nullcontext()
        with cluster as cluster_ready:
            if not checked:  # meanwhile the cluster starts
                _check_model_and_results(model, cfg, results)
            # Prefect's flow machinery is imported while the API server boots
            from flows import archive_run, set_reporter
            from segpipe.cli._progress import RichReporter, make_reporter

            if cluster_ready is not None:  # an unreachable --cluster is one line here, not a flow traceback
                cluster_ready()
            server = await_api_server(spawned)  # None: a configured API, or Prefect's own server
            reporter = make_reporter()
            set_reporter(reporter)
            bars = reporter if isinstance(reporter, RichReporter) else contextlib.nullcontext()  # rich bars run live
            try:
                with api_settings(server), bars:
                    summary = archive_run(source, results, model=model, config=str(config) if config else None,
                                          overrides=overrides)
            finally:
                set_reporter(None)
    finally:  # the server also stops when something failed before the flow ran
        if spawned is not None:
            spawned.stop()
    return summary


def _print_summary(summary: Any) -> None:
    if summary.note:
        out.print(f"note: {summary.note}", style="yellow")
    for i, line in enumerate(summary.lines()):
        out.print(line, style="red" if i else None, markup=False)
    out.print(f"results: {summary.results}", markup=False)
    if summary.report:
        out.print(f"report:  {summary.report}", markup=False)


@app.command()
def run(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Archive folder: a local path or s3://bucket/prefix.")],
    results: Annotated[str, typer.Option("--out", "-o", metavar="RESULTS", help="Results folder (local or s3://).")],
    model: ModelOpt = None,
    cluster: ClusterOpt = None,
    config: ConfigOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-j", min=1, help="Large images processed at once (small ones run one per worker thread).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Worker processes of the local Dask cluster.")] = None,
    content_hash: Annotated[bool | None, typer.Option("--content-hash/--no-content-hash", help="Fingerprint images by content, not size + mtime.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's log lines too.")] = False,
) -> None:
    """Segment every new or changed image of an archive into RESULTS.

    Unchanged images (same file, model and settings) are skipped, so running it every
    night only does new work. Exit status 1 when an image failed (the others are done).

    Example: segpipe run /data/slides --out /data/results --model nuclei --concurrency 2
    """
    overrides = _overrides(**{"run.cluster": cluster, "run.include": include, "run.exclude": exclude,
                              "run.concurrency": concurrency, "run.n_workers": workers,
                              "run.content_hash": content_hash})
    summary = _run_archive(source, results, model, config, overrides, verbose)
    _print_summary(summary)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo archive and results go.")] = Path("segpipe-demo"),
    n: Annotated[int, typer.Option("--n", min=1, help="Number of synthetic images.")] = 3,
    size: Annotated[int, typer.Option("--size", min=256, help="Side of the synthetic images (pixels).")] = 1536,
    model: ModelOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Make a small synthetic archive and run the whole pipeline on it (a couple of minutes).

    Uses a local Dask cluster and Prefect's ephemeral mode: nothing to start first.

    Example: segpipe demo --dir /tmp/segpipe-demo
    """
    from segpipe import models as _models

    archive, results = folder / "archive", folder / "results"
    if not archive.exists() or not any(archive.iterdir()):
        out.print(f"making a synthetic archive of {n} images in {archive} …", markup=False)
        _make_archive(folder, "nuclei", n, size, 0)
    chosen = model
    if chosen is None:
        chosen = "nuclei"
        if not _models.is_installed("nuclei"):
            chosen = "classical"
            out.print("note: the nuclei model's weights are not installed yet; the demo uses the "
                      "'classical' model instead", style="yellow")
    summary = _run_archive(str(archive), str(results), chosen, None, {"run.concurrency": 2}, verbose)
    if (folder / "truth").exists():
        out.print(f"ground truth for `segpipe evaluate {results} --truth {folder / 'truth'}`", markup=False)
    _print_summary(summary)
    out.print("try:", style="bold")
    out.print(f'  segpipe query {results} "select image_id, class, count(*) as n, avg(area_px) as mean_area '
              'from regions group by all order by all"', markup=False)
    from segpipe.tables import image_states

    done = sorted(i for i, row in image_states(str(results)).items() if row["status"] == "done")
    if done:
        out.print(f"  segpipe show {results} {done[0]} --out {done[0]}.png", markup=False)


def _make_archive(folder: Path, kind: str, n: int, size: int, seed: int) -> Any:
    """``folder/archive`` (images) and ``folder/truth`` (ground truth), synthetic."""
    from segpipe.synthetic import make_archive

    n_he, n_fluo, n_ind = _counts(kind, n)
    return make_archive(folder, n_he=n_he, n_fluorescence=n_fluo, n_industrial=n_ind,
                        slide_shape=(size, size), industrial_shape=(max(64, size * 3 // 4), size), seed=seed)


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Archive folder or one image (local or s3://).")],
    results: Annotated[str, typer.Option("--out", "-o", metavar="RESULTS", help="Results folder.")],
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
) -> None:
    """Convert images to OME-Zarr pyramids under RESULTS/images/ without segmenting them.

    Images that already have segmentation results there are left alone (`segpipe run`
    redoes them when they change).

    Example: segpipe ingest /data/slides --out /data/results
    """
    from segpipe import tables
    from segpipe.config import load_config
    from segpipe.lock import ResultsLock
    from segpipe.pipeline import discover_items, ingest_stage, new_run_id, open_client

    cfg = load_config(config, _overrides(**{"run.cluster": cluster, "run.include": include, "run.exclude": exclude}))
    items = discover_items(source, cfg, states=tables.image_states(results))  # ids the results already give
    if not items:
        raise ConfigError(f"{source}: no images found (check --include / --exclude)")
    # the lock keeps a run of the same results folder out while the stores are replaced
    with ResultsLock(results, owner=f"ingest-{new_run_id()}", lease_s=cfg.run.lease_s):
        done, todo = tables.latest_done(results), []
        for item in items:
            if item.image_id in done:
                out.print(f"{item.image_id}: kept (it has the results of run {done[item.image_id]['run_id']})",
                          markup=False)
            else:
                todo.append(item)
        with open_client(cfg) if todo else contextlib.nullcontext() as client:
            for item in todo:
                meta = ingest_stage(item.uri, item.image_id, results, cfg, client)
                levels = getattr(meta, "levels", [])
                out.print(f"{item.image_id}: {getattr(meta, 'zarr_url', '')} ({len(levels)} levels)", markup=False)


@app.command()
def synth(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder to write into: OUT/archive (images) and OUT/truth (ground truth).")],
    kind: Annotated[Kind, typer.Option("--kind", help="he or fluorescence slides, nuclei (both), defects (industrial images) or mixed.")] = Kind.mixed,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 4,
    size: Annotated[int, typer.Option("--size", min=64, help="Image side in pixels.")] = 2048,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same images).")] = 0,
) -> None:
    """Write a synthetic archive (images + ground truth) for trying segpipe out.

    Example: segpipe synth /tmp/synth --kind nuclei --n 4 --size 4096
    """
    info = _make_archive(folder, kind.value, n, size, seed)
    out.print(f"wrote {len(info.items)} {kind.value} image(s) to {info.archive}", markup=False)
    out.print(f"ground truth: {info.truth}", markup=False)
    out.print(f"next: segpipe run {info.archive} --out {folder / 'results'}", markup=False)


@app.command()
def query(
    results: Annotated[str, typer.Argument(metavar="RESULTS", help="Results folder (local or s3://).")],
    sql: Annotated[str, typer.Argument(metavar="SQL", help="DuckDB SQL over the views regions, images, images_latest, runs.")],
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="Output format.")] = Fmt.table,
    output: Annotated[str | None, typer.Option("--output", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Query the results tables with SQL (DuckDB).

    Example: segpipe query results "select image_id, count(*) from regions group by 1"
    """
    from segpipe.tables import run_query

    run_query(results, sql, fmt=fmt.value, output=output)


@app.command()
def serve(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Archive folder (local or s3://).")],
    results: Annotated[str, typer.Option("--out", "-o", metavar="RESULTS", help="Results folder.")],
    cron: Annotated[str, typer.Option("--cron", help="When to run, as a cron expression (UTC).")] = "0 2 * * *",
    name: Annotated[str, typer.Option("--name", help="Deployment name.")] = "nightly",
    model: ModelOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the archive on a schedule (Prefect `serve`; needs a Prefect server).

    Start a server first (`prefect server start`) and set PREFECT_API_URL.

    Example: segpipe serve /data/slides --out /data/results --cron "0 2 * * *"
    """
    from segpipe.config import load_config

    # everything a nightly run would stop at is checked now, once, before "serving"
    cfg = load_config(config, {})
    source, results = _absolute(source), _absolute(results)  # the served runs need not share our cwd
    _prefect_quiet(False, printed=False)
    from flows.schedule import check_schedule, serve_archive

    check_schedule(cron)
    _require_source(source)
    _check_model_and_results(model, cfg, results)
    out.print(f"serving archive-run/{name} on cron {cron!r}; stop with Ctrl-C", markup=False)
    serve_archive(source, results, cron=cron, name=name, model=model,
                  config=str(Path(config).resolve()) if config else None)  # fmt: skip


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    out_path: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="Weights file to write (.safetensors); its card goes beside it.")],
    recipe: Annotated[str | None, typer.Option("--recipe", help="Built-in recipe: nuclei or defects.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Training data: image/mask folder, .ome.zarr, or synthetic:nuclei.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Optimizer steps.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda …")] = None,
) -> None:
    """Train a model (delegates to segpipe.train).

    Every option of `python -m segpipe.train --help` works here too, e.g. --init to fine-tune
    existing weights, --task semantic --classes background,crack for class maps.

    Example: segpipe train --recipe nuclei --data my_annotated/ --init segpipe/models/weights/nuclei.safetensors --steps 600 --lr 0.0005 --out my-nuclei.safetensors
    """
    try:
        import segpipe.train as _train
        from segpipe.train.__main__ import parse_args
    except ImportError as exc:
        raise ConfigError(f"training is not available in this install ({exc})") from None
    argv = ["--out", str(out_path)]
    for flag, value in (("--recipe", recipe), ("--data", data), ("--steps", steps), ("--device", device)):
        if value is not None:
            argv += [flag, str(value)]
    cfg = parse_args(argv + list(ctx.args), prog="segpipe train")
    result = _train.train(cfg)
    out.print(f"weights: {result.weights}\ncard:    {result.card}\nsteps:   {result.steps}", markup=False)
    for k, v in result.best_metrics.items():
        out.print(f"  {k}: {v:.4g}", markup=False)


@app.command()
def evaluate(
    results: Annotated[str, typer.Argument(metavar="RESULTS", help="Results folder of a run.")],
    truth: Annotated[str, typer.Option("--truth", help="Folder of ground-truth masks: <relpath of the image>.labels.tif.")],
) -> None:
    """Compare a run's labels with ground-truth masks (delegates to segpipe.train).

    Writes RESULTS/evaluation/metrics.{parquet,csv,png} for local results.

    Example: segpipe evaluate segpipe-demo/results --truth segpipe-demo/truth
    """
    try:
        from segpipe.train import evaluate_run
    except ImportError as exc:
        raise ConfigError(f"evaluation is not available in this install ({exc})") from None
    try:
        metrics = evaluate_run(results, truth)
    except NotImplementedError:
        raise ConfigError("segpipe evaluate is not implemented yet in segpipe.train.evaluate_run") from None
    import pyarrow as pa

    from segpipe.tables import render_table

    images = metrics.get("images", [])
    # the columns the rows have: instance metrics, or the IoU of each semantic class
    wanted = ["image_id", "ap_0.5", "f1", "precision", "recall", "n_split", "n_merged"]
    wanted += list(dict.fromkeys(k for row in images for k in row if k.startswith("iou_")))  # class order
    wanted += ["mean_iou"]
    shown = [k for k in wanted if any(row.get(k) is not None for row in images)]
    rows = [{k: row.get(k) for k in shown} for row in images]
    if rows:
        out.print(render_table(pa.Table.from_pylist(rows), title="per image"))
    for key, value in (metrics.get("summary") or {}).items():
        out.print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}", markup=False)
    for path in metrics.get("unmatched") or []:
        out.print(f"no image for truth file {path}", style="yellow", markup=False)
    for key in ("table", "csv", "plot"):
        if metrics.get(key):
            out.print(f"{key}: {metrics[key]}", markup=False)


def _region(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        y0, x0, y1, x1 = (int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter("expected four integers y0,x0,y1,x1", param_hint="--region") from None
    return y0, x0, y1, x1


@app.command()
def show(
    results: Annotated[str, typer.Argument(metavar="RESULTS", help="Results folder.")],
    image_id: Annotated[str, typer.Argument(metavar="IMAGE_ID", help="Image id (see `segpipe query RESULTS \"select image_id from images_latest\"`).")],
    region: Annotated[str | None, typer.Option("--region", help="Level-0 crop y0,x0,y1,x1 drawn at full resolution.")] = None,
    png: Annotated[Path | None, typer.Option("--out", "-o", metavar="FILE", help="Picture to write; its extension picks the format (default <image_id>.png).")] = None,
) -> None:
    """Draw an image with its label contours coloured by class into a picture (PNG by default).

    Example: segpipe show results slide-01 --region 0,0,1024,1024 --out crop.png
    """
    from segpipe.show import render_overlay

    path = render_overlay(results, image_id, png or Path(f"{image_id}.png"), region=_region(region))
    out.print(f"wrote {path}", markup=False)


@app.command("models")
def models_cmd() -> None:
    """List the built-in models, their task, classes and whether they are installed.

    Example: segpipe models
    """
    from rich.table import Table

    from segpipe import models as _models

    table = Table("name", "task", "classes", "µm/px", "halo", "installed", title="built-in models")
    notes = []
    for card in _models.list_models():  # an installed model's own card (its halo, its description)
        name, installed = card.name, _models.is_installed(card.name)
        table.add_row(name, card.task, ", ".join(card.classes[1:]), "any" if card.mpp is None else f"{card.mpp:g}",
                      str(card.halo), "yes" if installed else "no")
        notes.append(f"{name}: {getattr(card, 'description', '')}")
    out.print(table)
    for line in notes:
        out.print(line, markup=False)
    out.print("A model that is not installed can be trained: segpipe train --recipe NAME --out FILE", markup=False)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 1 on a SegpipeError (one red line), 2 on a usage error."""
    try:
        app(args=argv, prog_name="segpipe")  # click's standalone mode: usage errors exit 2
    except SegpipeError as exc:
        err.print(f"error: {' '.join(str(exc).split())}", style="red", markup=False)
        sys.exit(1)
    except Exception as exc:  # a bug or the environment (e.g. Prefect could not start)
        from segpipe.config import debug_enabled

        if debug_enabled():
            raise
        text = " ".join(str(exc).split())[:400]
        err.print(f"error: {type(exc).__name__}: {text} (set SEGPIPE_DEBUG=1 for the traceback)",
                  style="red", markup=False)
        sys.exit(1)
