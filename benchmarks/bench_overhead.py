"""Scheduler overhead: many small images through ``segpipe run`` vs a plain Python loop.

The issue's case: 500 PNGs of 1024². The loop is what a user writes without segpipe: read
each PNG, ``segment_array`` it, in one process. ``segpipe run`` does more per image
(OME-Zarr ingest, tissue mask, label pyramid, region statistics, status rows, report)
through Prefect and a Dask cluster (one worker per core). Images per second, whole command
included for segpipe; the time its run summary reports (the images only: no Prefect
server, cluster or model start) is shown separately. A third row runs segpipe's own
per-image work (``process_image``) in a plain loop without Prefect or Dask, on the first
``--work-images`` files: what the orchestration itself costs or gains. Another row times the
loop as the whole script a user runs (interpreter start, imports, model load, loop), so that
both sides can also be compared command against command. With ``--server``
(default) the command is timed once more against a Prefect API server that is already
running (``PREFECT_API_URL``), as it is for scheduled nightly runs: the temporary server
each bare command starts is part of its start-up.
Target: segpipe ≥ 0.5× the ``segment_array`` loop's images/s (orchestration must not dominate).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from benchmarks._data import png_archive
from benchmarks._harness import (
    ChildRun,
    Outcome,
    cli_main,
    mb,
    median,
    repeats,
    run_child,
    save_json,
)

TARGET = 0.5


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images", type=int, default=None, help="Number of PNGs (default 500; 12 with --quick)."
    )
    p.add_argument(
        "--work-images", type=int, default=100,
        help="Files for the same-work loop row (segpipe's per-image work without orchestration).",
    )  # fmt: skip
    p.add_argument(
        "--side", type=int, default=None, help="PNG side (default 1024; 512 with --quick)."
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument(
        "--server", action=argparse.BooleanOptionalAction, default=True,
        help="Also time segpipe run against a running Prefect API server (PREFECT_API_URL), "
        "as scheduled nightly runs have one.",
    )  # fmt: skip
    p.add_argument(
        "--run-model",
        default="classical",
        help="Model (default classical: cheap, so overhead shows).",
    )


def _flow_seconds(summary: str) -> float | None:
    """The seconds a run summary line reports (``run …: … in 20.2 s (model …)``)."""
    match = re.search(r" in ([0-9.]+) s \(model", summary)
    return float(match.group(1)) if match else None


def run(args: argparse.Namespace) -> Outcome:
    n = args.images or (12 if args.quick else 500)
    side = args.side or (512 if args.quick else 1024)
    archive = png_archive(args.workdir, n, side)
    r = repeats(args)
    loop = run_child(
        "loop",
        ["--source", archive, "--model", args.run_model, "--repeats", r],
        args.workdir,
        label="overhead-loop",
    )
    script = run_child(
        "loop_script", ["--source", archive, "--model", args.run_model, "--repeats", r],
        args.workdir, label="overhead-loop-script",
    )  # fmt: skip
    n_work = min(n, args.work_images)
    work = run_child(
        "work",
        ["--source", archive, "--out", args.workdir / "out" / "overhead-work", "--model",
         args.run_model, "--repeats", r, "--images", n_work],
        args.workdir,
        label="overhead-work",
    )  # fmt: skip
    cli_runs = _cli_runs(args, archive, r, None)
    served = None
    if args.server:
        with _prefect_server() as api_url:
            served = _cli_runs(args, archive, r, {"PREFECT_API_URL": api_url}, "-server")
    t_loop = median(loop.result["runs"])
    t_cli = median(c.result["seconds"] for c in cli_runs)
    flow_s = [_flow_seconds(c.result["summary"]) for c in cli_runs]
    t_flow = median(flow_s) if all(f is not None for f in flow_s) else None
    header = ["how", "median s", "images/s", "× loop", "peak RSS MiB"]
    rows = [
        [
            "plain loop: PIL read + segment_array (1 process)",
            t_loop,
            n / t_loop,
            1.0,
            mb(loop.peak_rss),
        ],
        [
            f"segpipe run ({args.workers} workers), whole command",
            t_cli,
            n / t_cli,
            t_loop / t_cli,
            mb(max(c.peak_rss for c in cli_runs)),
        ],
    ]
    t_script = median(script.result["runs"])
    rows.insert(1, [
        "plain loop as a whole script: python start, imports, model load, loop (1 process)",
        t_script, n / t_script, t_loop / t_script, mb(script.peak_rss),
    ])  # fmt: skip
    t_work = median(work.result["runs"]) * n / n_work  # per-image rate, scaled to n images
    rows.insert(2, [
        f"plain loop: segpipe's per-image work (process_image, 1 process; {n_work} images timed, scaled to {n})",
        t_work, n / t_work, t_loop / t_work, mb(work.peak_rss),
    ])  # fmt: skip
    if served:
        t_served = median(c.result["seconds"] for c in served)
        rows.append([
            f"segpipe run ({args.workers} workers), whole command, Prefect server already running",
            t_served, n / t_served, t_loop / t_served, mb(max(c.peak_rss for c in served)),
        ])  # fmt: skip
    if t_flow:
        rows.append(
            [
                "segpipe run, images only (the run summary's seconds)",
                t_flow,
                n / t_flow,
                t_loop / t_flow,
                "—",
            ]
        )
    save_json(
        args.workdir,
        "overhead",
        {"loop": loop.result, "loop_script": script.result, "work": work.result, "cli": [c.result for c in cli_runs],
         "cli_server": [c.result for c in served or []], "flow_s": t_flow},  # fmt: skip
    )
    ratio = t_loop / t_cli
    notes = [
        f"{n} grey PNGs of {side}² px, model {args.run_model}, median of {r} runs.",
        f"segpipe run summary: {cli_runs[0].result['summary']}",
    ]
    notes.append(
        f"Orchestration: segpipe run does the same per-image work {t_work / t_cli:.2f}× as fast as "
        f"the plain loop of process_image ({args.workers} workers against 1 process; start-up included)."
    )
    notes.append(
        f"Both sides as whole commands (process start to exit): segpipe run {t_script / t_cli:.2f}× "
        f"the plain loop's script ({t_script - t_loop:.1f} s of the script is start-up: imports, model load)."
    )
    if t_flow:
        notes.append(
            f"Start-up inside the command (Prefect's temporary server, Dask cluster, model load "
            f"on the workers, report): {t_cli - t_flow:.1f} s of {t_cli:.1f} s."
        )
    return Outcome(
        "overhead",
        "Scheduler overhead: many small images",
        header,
        rows,
        ratio,
        "segpipe run images/s ÷ plain loop images/s",
        f"≥ {TARGET}",
        ratio >= TARGET,
        args.command,
        notes,
        args.quick,
    )


def _cli_runs(
    args: argparse.Namespace, archive: Path, r: int, env: dict[str, str] | None, tag: str = ""
) -> list[ChildRun]:
    """``r`` runs of the ``segpipe run`` command, each into an empty results folder."""
    runs = []
    for i in range(r):
        out = args.workdir / "out" / "overhead"
        shutil.rmtree(out, ignore_errors=True)
        runs.append(run_child(
            "cli",
            ["--source", archive, "--out", out, "--model", args.run_model, "--workers", args.workers],
            args.workdir, env=env, label=f"overhead-cli{tag}-{i}",
        ))  # fmt: skip
    return runs


@contextlib.contextmanager
def _prefect_server() -> Iterator[str]:
    """A Prefect API server for the duration (the one Prefect starts on demand, started
    here once, as ``prefect server start`` runs beside scheduled deployments); its URL."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline, as segpipe sets it
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    try:
        yield str(server.api_url)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_overhead", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
