"""Scheduler overhead: many small images through ``segpipe run`` vs a plain Python loop.

The loop is what a user writes without segpipe: read each PNG, ``segment_array`` it, in
one process. ``segpipe run`` does more per image (OME-Zarr ingest, label pyramid, region
table, status rows) through Prefect and a Dask cluster (one worker per core). Images per
second, whole command included for segpipe; its fixed start-up (the same command on an
empty archive, from ``bench_incremental`` when available) is shown separately.
Target: segpipe ≥ 0.5× the loop's images/s (orchestration must not dominate).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from benchmarks._data import png_archive
from benchmarks._harness import (
    Outcome,
    cli_main,
    load_json,
    mb,
    median,
    repeats,
    run_child,
    save_json,
)

TARGET = 0.5


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images", type=int, default=None, help="Number of PNGs (default 60; 12 with --quick)."
    )
    p.add_argument(
        "--side", type=int, default=None, help="PNG side (default 1024; 512 with --quick)."
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument(
        "--run-model",
        default="classical",
        help="Model (default classical: cheap, so overhead shows).",
    )


def run(args: argparse.Namespace) -> Outcome:
    n = args.images or (12 if args.quick else 60)
    side = args.side or (512 if args.quick else 1024)
    archive = png_archive(args.workdir, n, side)
    r = repeats(args)
    loop = run_child(
        "loop",
        ["--source", archive, "--model", args.run_model, "--repeats", r],
        args.workdir,
        label="overhead-loop",
    )
    cli_runs = []
    for i in range(r):
        out = args.workdir / "out" / "overhead"
        shutil.rmtree(out, ignore_errors=True)
        cli_runs.append(
            run_child(
                "cli",
                [
                    "--source",
                    archive,
                    "--out",
                    out,
                    "--model",
                    args.run_model,
                    "--workers",
                    args.workers,
                ],
                args.workdir,
                label=f"overhead-cli-{i}",
            )
        )
    t_loop = median(loop.result["runs"])
    t_cli = median(c.result["seconds"] for c in cli_runs)
    inc = load_json(args.workdir, "incremental")
    fixed = inc["empty"]["seconds"] if inc and "empty" in inc else None
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
    if fixed is not None and t_cli > fixed:
        rows.append(
            [
                "segpipe run minus its fixed start-up (empty-archive run)",
                t_cli - fixed,
                n / (t_cli - fixed),
                t_loop / (t_cli - fixed),
                "—",
            ]
        )
    save_json(
        args.workdir,
        "overhead",
        {"loop": loop.result, "cli": [c.result for c in cli_runs], "fixed": fixed},
    )
    ratio = t_loop / t_cli
    notes = [
        f"{n} grey PNGs of {side}² px, model {args.run_model}, median of {r} runs.",
        f"segpipe run summary: {cli_runs[0].result['summary']}",
    ]
    if fixed is not None:
        notes.append(
            f"Fixed start-up (segpipe run on an empty archive, bench_incremental): {fixed:.1f} s."
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


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_overhead", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
